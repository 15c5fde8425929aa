"""Known keys go in; they must come out nowhere: not in output, logs, dlt's folders or DuckDB."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from conftest import make_env

from practice_sync.simulator import Fault, Simulator

BIZSTIM_KEY = "bizstim-SECRET-7f3a9c1e5b2d8f4a6c0e9b1d"
TIMETAP_KEY = "timetap-SECRET-api-4e8b2c6a"
TIMETAP_PRIVATE = "timetap-SECRET-private-9d1f3b7e"
PRIVACY_SALT = "salt-SECRET-2c7e9a4f1b8d3e6a"


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_keys_never_leave_the_process(tmp_path: Path) -> None:
    signature = hashlib.md5((TIMETAP_KEY + TIMETAP_PRIVATE).encode()).hexdigest()
    needles = [BIZSTIM_KEY, TIMETAP_KEY, TIMETAP_PRIVATE, signature, PRIVACY_SALT]
    with Simulator(
        sessions=300,
        clients=60,
        bizstim_api_key=BIZSTIM_KEY,
        timetap_api_key=TIMETAP_KEY,
        timetap_private_key=TIMETAP_PRIVATE,
    ) as sim:
        env = make_env(sim, tmp_path)
        # the privacy salt is a secret too: hash something with it
        env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = PRIVACY_SALT
        env.vars["SOURCES__BIZSTIM__PRIVACY"] = '{"hash": ["session_note"]}'
        env.vars["SOURCES__TIMETAP__PRIVACY"] = '{"hash": ["client.emailAddress"]}'
        # make the run retry and refresh tokens too, so error paths are covered
        sim.add_fault(Fault(path=r"/sessions/", kind="500", times=1))
        sim.add_fault(Fault(path=r"/sessionToken", kind="503", times=1))
        sim.add_fault(Fault(path=r"/packageSold/client/", kind="401", times=1, after=5))
        outputs = [env.run("--debug", "run"), env.run("run"), env.run("transform")]
        # and a failing run, whose error paths print the most
        env.vars["SOURCES__TIMETAP__PRIVATE_KEY"] = TIMETAP_PRIVATE + "x"
        outputs.append(env.run("--debug", "run"))
    assert [o.code for o in outputs] == [0, 0, 0, 5]
    streams = "".join(o.stdout + o.stderr for o in outputs)
    assert "retry" in streams  # the faults really happened and were logged
    state = env.database.parent / ".practice_sync"
    scanned = files_under(state, Path(os.environ["DLT_DATA_DIR"]), env.database.parent)
    assert env.database in scanned
    assert any(p.suffix == ".json" for p in scanned)  # dlt's state and schemas were looked at
    for needle in needles:
        assert needle not in streams, f"{needle[:12]}… printed"
        for path in scanned:
            assert needle.encode() not in path.read_bytes(), f"{needle[:12]}… in {path}"
