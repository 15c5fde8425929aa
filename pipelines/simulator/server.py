"""One loopback HTTP server playing both vendors, so clients are tested over real sockets."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from .bizstim import PAGE_CACHE_BYTES, Bizstim
from .faults import Fault, FaultBook, HookBook, Vendor, fault_reply
from .reply import Reply, json_reply
from .timetap import Timetap

BIZSTIM_PREFIX = "/bizstim/api"
TIMETAP_PREFIX = "/timetap/live"


class _VendorApi(Vendor, Protocol):
    def handle(self, method: str, parts: list[str], query: dict, headers: Message) -> Reply: ...


@dataclass(frozen=True)
class Account:
    """One more account of each vendor on the same server, told apart by its keys as the real
    APIs do: its own data (ids overlap with every other account's), time zone and keys."""

    name: str
    bizstim: Bizstim
    timetap: Timetap
    bizstim_api_key: str
    timetap_api_key: str
    timetap_private_key: str


class Simulator:
    """Both vendor APIs on one port, with scripted faults, latency and a request log.

    The account made by the constructor answers the default keys; `add_account` adds more,
    each answering only its own keys (a request with any other key gets 401).
    """

    def __init__(
        self,
        seed: int = 7,
        sessions: int = 500,
        clients: int = 200,
        packages: int = 25,
        timezone: str = "America/Los_Angeles",
        bizstim_api_key: str = "sim-bizstim-key-0000000000000000000000000",
        timetap_api_key: str = "sim-timetap-api-key",
        timetap_private_key: str = "sim-timetap-private-key",
        latency: float = 0.0,
        edge_cases: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        page_cache_bytes: int = PAGE_CACHE_BYTES,
        page_file: str | None = None,
    ) -> None:
        """`page_cache_bytes` and `page_file` say where every account's rendered Bizstim pages
        are kept (see `Bizstim`): a benchmark pre-rendering a whole sweep passes `page_file`."""
        self._page_cache_bytes, self._page_file = page_cache_bytes, page_file
        self.bizstim_api_key = bizstim_api_key
        self.timetap_api_key = timetap_api_key
        self.timetap_private_key = timetap_private_key
        self.bizstim = Bizstim(
            seed=seed,
            sessions=sessions,
            timezone=timezone,
            api_key=bizstim_api_key,
            edge_cases=edge_cases,
            page_cache_bytes=page_cache_bytes,
            page_file=page_file,
        )
        self.timetap = Timetap(
            seed=seed,
            clients=clients,
            packages=packages,
            api_key=timetap_api_key,
            private_key=timetap_private_key,
            edge_cases=edge_cases,
        )
        self.latency = latency
        self._bind = (host, port)
        self._address: tuple[str, int] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._edge_cases = edge_cases
        self.accounts: dict[str, Account] = {}
        self._faults = FaultBook()
        self._hooks = HookBook()
        self._log_lock = threading.Lock()
        self._log: list[tuple[str, str, int]] = []
        self._in_flight = 0
        self._peak_in_flight = 0

    def add_account(
        self,
        name: str,
        *,
        seed: int,
        sessions: int = 500,
        clients: int = 200,
        packages: int = 25,
        timezone: str = "America/New_York",
        edge_cases: bool | None = None,
    ) -> Account:
        """Another Bizstim account and TimeTap business, with keys derived from `name`."""
        quirks = self._edge_cases if edge_cases is None else edge_cases
        bizstim_key = f"sim-bizstim-key-{name}"
        timetap_key, private_key = f"sim-timetap-api-key-{name}", f"sim-timetap-private-{name}"
        account = Account(
            name,
            Bizstim(
                seed=seed, sessions=sessions, timezone=timezone, api_key=bizstim_key,
                edge_cases=quirks, page_cache_bytes=self._page_cache_bytes,
                page_file=self._page_file,
            ),
            Timetap(
                seed=seed, clients=clients, packages=packages, api_key=timetap_key,
                private_key=private_key, edge_cases=quirks,
            ),
            bizstim_key,
            timetap_key,
            private_key,
        )  # fmt: skip
        self.accounts[name] = account
        return account

    def _account_api(
        self, vendor: _VendorApi, parts: list[str], query: dict, headers: Message
    ) -> _VendorApi:
        """The account a request is for, told by its key (TimeTap: its key or its token)."""
        if vendor is self.bizstim:
            key = headers.get("x-api-key")
            for account in self.accounts.values():
                if key == account.bizstim_api_key:
                    return account.bizstim
        elif vendor is self.timetap:
            key = query.get("apiKey", [""])[0] if parts == ["sessionToken"] else None
            token = headers.get("Authorization", "").partition(" ")[2]
            for account in self.accounts.values():
                if key == account.timetap_api_key or account.timetap.has_token(token):
                    return account.timetap
        return vendor

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is None:
            self._server = _Server(self._bind, self)
            host, port = self._server.server_address[:2]
            self._address = (str(host), int(port))
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"simulator:{port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Also cuts open keep-alive connections, which would otherwise go on being served."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(timeout=10)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._address is None:
            raise RuntimeError("the simulator has not been started")
        host, port = self._address
        return f"http://{host}:{port}"

    @property
    def bizstim_url(self) -> str:
        return self.url + BIZSTIM_PREFIX

    @property
    def timetap_url(self) -> str:
        return self.url + TIMETAP_PREFIX

    # -- faults and log --------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        self._faults.add(fault)

    def clear_faults(self) -> None:
        self._faults.clear()

    def on_request(
        self, path: str, callback: Callable[[], object], *, after: int = 0, times: int = 1
    ) -> None:
        """Run `callback` before answering a matching request: data that changes mid-sweep.

        Same matching as faults: a regex searched in the path, `after` matching requests pass
        first, then the next `times` ones run the callback (in the handler thread).
        """
        self._hooks.add(path, callback, after=after, times=times)

    @property
    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) per request; status 0 when the connection was reset."""
        with self._log_lock:
            return list(self._log)

    def reset_log(self) -> None:
        with self._log_lock:
            self._log.clear()
            self._peak_in_flight = self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most requests being answered at once since the start or `reset_log`: what a
        vendor sees of a client's concurrency."""
        with self._log_lock:
            return self._peak_in_flight

    def _count_in_flight(self, change: int) -> None:
        with self._log_lock:
            self._in_flight += change
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    # -- request handling (called from handler threads) ------------------------------------

    def _vendor(self, path: str) -> tuple[_VendorApi | None, list[str]]:
        for prefix, vendor in ((BIZSTIM_PREFIX, self.bizstim), (TIMETAP_PREFIX, self.timetap)):
            if path == prefix or path.startswith(prefix + "/"):
                rest = path[len(prefix) :].strip("/")
                return vendor, rest.split("/") if rest else []
        return None, []

    def _serve(self, handler: _Handler) -> None:
        self._count_in_flight(1)
        try:
            self._answer(handler)
        finally:
            self._count_in_flight(-1)

    def _answer(self, handler: _Handler) -> None:
        method = handler.command
        url = urlsplit(handler.path)
        path = url.path
        vendor, parts = self._vendor(path)
        fault = self._faults.take(path)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
            fault = None
        for hook in self._hooks.take(path):
            hook()
        if fault is None or fault.kind in ("reset", "truncate", "latin1"):
            if vendor is None:
                reply = json_reply(404, {"error": f"No API at {path}"})
            else:
                query = parse_qs(url.query)
                vendor = self._account_api(vendor, parts, query, handler.headers)
                reply = vendor.handle(method, parts, query, handler.headers)
            if fault is not None and fault.status is not None:
                reply = reply._replace(status=fault.status)
            if fault is not None and fault.kind == "latin1":
                # a legacy back end re-encoding text: non-ASCII becomes invalid UTF-8 bytes
                text = reply.body.decode("utf-8")
                reply = reply._replace(body=text.encode("latin-1", errors="replace"))
        else:
            # Paths outside both vendors answer faults in TimeTap's plain {"error": ...} style.
            reply = fault_reply(fault, vendor or self.timetap)
        if self.latency > 0:
            time.sleep(self.latency)
        kind = fault.kind if fault is not None else None
        # Logged before answering, so a client that has its answer also sees it in the log.
        with self._log_lock:
            self._log.append((method, path, 0 if kind == "reset" else reply.status))
        if kind == "reset":
            handler.reset()
        else:
            handler.respond(reply, truncate=kind == "truncate")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Skips HTTPServer's reverse DNS lookup of the host, which can stall for seconds."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive needs HTTP/1.1 and a Content-Length on every response; without TCP_NODELAY
    # the header and body writes would wait on delayed ACKs (~40 ms per small response).
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "practice-sync-simulator"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        super().finish()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except ConnectionError:
            # The client went away mid-response (e.g. it timed out a slow fault); not an error.
            self.close_connection = True

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # unread bodies would be parsed as the next request
        self.server.simulator._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def respond(self, reply: Reply, truncate: bool) -> None:
        """With `truncate`, promise the whole body, send half, and hang up."""
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body[: len(reply.body) // 2] if truncate else reply.body)
        if truncate:
            self.close_connection = True

    def reset(self) -> None:
        """Close with RST (linger 0) rather than FIN, as a crashed proxy or load balancer does."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Silenced: a line per request would flood test output and slow benchmarks."""
