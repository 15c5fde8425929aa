"""Compact storage for millions of simulated rows, and a bounded cache of rendered pages.

A Python tuple or dict per row costs 150 B to 2.5 kB and a rendered page cache ~660 B more per
row, so 5,000,000 sessions held that way took 4 GB. Here a generated row is five small integers
in `array`s (16 bytes), drawn in bulk from the seed's random stream, and rendered to JSON only
when a page is asked for, by pyarrow's C++ string kernels rather than per-row Python.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

_DRAW_CHUNK = 1 << 16  # rows per bulk draw: ~0.5 MB arrays, so the temporaries stay small


def draws(rnd: random.Random, count: int) -> Iterator[pa.Array]:
    """`count` values of `rnd.getrandbits(64)`, the same stream, in chunks of one big integer.

    CPython fills `getrandbits(k)` with 32-bit outputs from the least significant word up, so
    little-endian 64-bit words of `getrandbits(64 * n)` are n successive `getrandbits(64)`.
    """
    for done in range(0, count, _DRAW_CHUNK):
        n = min(_DRAW_CHUNK, count - done)
        raw = rnd.getrandbits(64 * n).to_bytes(8 * n, "little")
        yield pa.Array.from_buffers(pa.uint64(), n, [None, pa.py_buffer(raw)])


def bits(values: pa.Array, shift: int, mask: int | None = None) -> pa.Array:
    """`values >> shift & mask`, element-wise (unsigned: a logical shift)."""
    shifted = pc.shift_right(values, pa.scalar(shift, pa.uint64())) if shift else values
    return shifted if mask is None else pc.bit_wise_and(shifted, pa.scalar(mask, pa.uint64()))


def modulo(values: pa.Array, divisor: int) -> pa.Array:
    """`values % divisor` for unsigned values (integer division truncates; `pc.modulo` is newer
    than the oldest pyarrow the project allows)."""
    n = pa.scalar(divisor, pa.uint64())
    return pc.subtract(values, pc.multiply(pc.divide(values, n), n))


def _to_array(values: pa.Array, typecode: str, arrow_type: pa.DataType) -> array:
    """An Arrow integer array as a stdlib `array` (the buffer may be padded past its end)."""
    values = values.cast(arrow_type)
    out = array(typecode)
    width = out.itemsize
    data = values.buffers()[1]
    out.frombytes(memoryview(data)[values.offset * width : (values.offset + len(values)) * width])
    return out


def arrow(values: array, arrow_type: pa.DataType) -> pa.Array:
    """A stdlib `array` seen as an Arrow array without copying: pass a copy (a slice), since an
    exported `array` cannot grow or shrink while Arrow holds it."""
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


class Columns:
    """Rows in ascending id order as parallel arrays: id, client, day, time slot and kind.

    What the small integers index (and what a kind means) is the owner's business; every row
    operation here keeps the five arrays aligned.
    """

    TYPES = (("q", pa.int64()), ("H", pa.uint16()), ("H", pa.uint16()), ("H", pa.uint16()),
             ("H", pa.uint16()))  # fmt: skip

    def __init__(self, arrays: Sequence[array] | None = None) -> None:
        self.ids, self.clients, self.days, self.slots, self.kinds = arrays or tuple(
            array(code) for code, _ in self.TYPES
        )

    @classmethod
    def from_arrow(cls, columns: Sequence[pa.Array]) -> Columns:
        return cls(
            [_to_array(c, code, kind) for c, (code, kind) in zip(columns, cls.TYPES, strict=True)]
        )

    @property
    def arrays(self) -> tuple[array, array, array, array, array]:
        return self.ids, self.clients, self.days, self.slots, self.kinds

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, stop: int) -> Columns:
        """A copy: a page renders from it outside the owner's lock."""
        return Columns([a[start:stop] for a in self.arrays])

    def insert(self, index: int, session_id: int, kind: int) -> None:
        self.ids.insert(index, session_id)
        for values in (self.clients, self.days, self.slots):
            values.insert(index, 0)
        self.kinds.insert(index, kind)

    def delete(self, index: int) -> None:
        for values in self.arrays:
            del values[index]

    def drop(self, indices: Sequence[int]) -> None:
        """Delete many rows at once (ascending `indices`): a copy of the kept runs, not a
        memmove per row."""
        edges = [-1, *indices, len(self)]
        kept = [(low + 1, high) for low, high in itertools.pairwise(edges) if high > low + 1]
        rebuilt = []
        for values in self.arrays:
            out = array(values.typecode)
            for low, high in kept:
                out.extend(values[low:high])
            rebuilt.append(out)
        self.ids, self.clients, self.days, self.slots, self.kinds = rebuilt

    def extend(self, other: Columns) -> None:
        for mine, theirs in zip(self.arrays, other.arrays, strict=True):
            mine.extend(theirs)


class PageCache:
    """Rendered pages up to `budget` bytes, least recently used dropped first.

    A sweep larger than the budget gains nothing from it (each page is asked for once); it
    serves the pages clients ask for again and again, and the benchmark's pre-rendered sweep
    when the budget holds it. Not locked: the owner calls it under its own lock.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._pages: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pages)

    def get(self, key: tuple[int, int]) -> bytes | None:
        body = self._pages.get(key)
        if body is not None:
            self._pages.move_to_end(key)
        return body

    def put(self, key: tuple[int, int], body: bytes) -> None:
        if len(body) > self.budget:
            return
        old = self._pages.pop(key, None)
        self.size += len(body) - (len(old) if old is not None else 0)
        self._pages[key] = body
        while self.size > self.budget:
            _, dropped = self._pages.popitem(last=False)
            self.size -= len(dropped)

    def clear(self) -> None:
        self._pages.clear()
        self.size = 0

    def flush(self) -> None:
        """Nothing to write out: the pages are in memory."""


class PageFile:
    """Every rendered page, kept in an unlinked temporary file in `folder` rather than memory.

    For benchmarks that render a whole sweep before timing it: 5,000,000 sessions are 3.3 GB of
    pages, which the OS may cache but the simulator does not hold; a hit is one `pread` (~0.04 ms
    for a 1000-row page). Not locked: the owner calls it under its own lock.
    """

    def __init__(self, folder: str) -> None:
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (lives as long as self)
        self._where: dict[tuple[int, int], tuple[int, int]] = {}
        self.size = 0

    def __len__(self) -> int:
        return len(self._where)

    def get(self, key: tuple[int, int]) -> bytes | None:
        place = self._where.get(key)
        if place is None:
            return None
        offset, length = place
        return os.pread(self._file.fileno(), length, offset)

    def put(self, key: tuple[int, int], body: bytes) -> None:
        written = 0
        while written < len(body):
            written += os.pwrite(
                self._file.fileno(), memoryview(body)[written:], self.size + written
            )
        self._where[key] = (self.size, len(body))
        self.size += len(body)

    def clear(self) -> None:
        self._where.clear()
        self._file.truncate(0)
        self.size = 0

    def flush(self) -> None:
        """Write the pages to disk now (they stay in the OS cache), so gigabytes of write-back
        do not share the disk with whatever a benchmark times next."""
        os.fdatasync(self._file.fileno())
