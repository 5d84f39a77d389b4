"""A fault-injecting HTTP reverse proxy for S3 tests, on 127.0.0.1 in front of moto's server.

Everything not matched by a fault rule is passed through faithfully: method, request
target (path and query, byte for byte), headers in order including Host and
Authorization (SigV4 signs the Host header, so it is kept as the client sent it; moto
routes path-style requests whatever the Host port), and bodies (Content-Length or
chunked; responses are streamed). Client connections are kept alive (HTTP/1.1) until a
fault closes them; each forwarded request uses a fresh upstream connection.

Faults are programmed with `add(action, method=..., path=..., times=..., skip=...)`:

- "slowdown":      503 with an S3 `SlowDown` XML error body (botocore: throttling)
- "internal":      500 with an S3 `InternalError` XML error body
- "status":        any status / code / message (e.g. 400 InvalidArgument)
- "drop":          read the request, then close the connection without a response (FIN)
- "reset":         read the request, then reset the connection (SO_LINGER 0 + close: RST)
- "cut":           forward; send the headers with the full Content-Length but only
                   `cut_at` bytes (int) or that fraction (float) of the body, then close
- "lose_response": forward (the upstream really executes the request, e.g. stores the
                   object), then close the connection without passing the reply on

A rule matches on method, a regex searched in the request target (path?query) and
optionally on whether the request has a Range header. Rules are tried in order; each
matching rule counts the request, and the first one that still has faults to give
(`skip` matches let through first, then `times` faults, None = forever) fires.

`reject_checksums = True` makes the proxy answer like S3-compatible servers that do not
support flexible checksums: 400 for any request carrying `x-amz-sdk-checksum-algorithm`,
`x-amz-checksum-<algorithm>`, `x-amz-trailer` or `Content-Encoding: aws-chunked`
(with `reject_checksum_mode = True`, also the response-side `x-amz-checksum-mode`);
`checksum_error` sets the answer's status, code and message.

Every request is recorded (`seen`, `requests()`, `count()`, `ranges()`)."""
from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable
from xml.sax.saxutils import escape

ACTIONS = ("slowdown", "internal", "status", "drop", "reset", "cut", "lose_response")
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "expect",
}
_PIECE = 64 * 1024


@dataclass
class Rule:
    action: str
    method: str | None = None
    path: str | None = None  # regex, searched in the request target (path?query)
    times: int | None = 1  # faults to inject; None = every matching request
    skip: int = 0  # matching requests let through before the first fault
    ranged: bool | None = None  # True: only requests with a Range header; False: only without
    cut_at: int | float = 0.5  # "cut": bytes of the body sent (int) or a fraction of it (float)
    status: int = 500  # "status"
    code: str = "InternalError"  # "status"
    message: str = "We encountered an internal error. Please try again."  # "status"
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r} (one of {', '.join(ACTIONS)})")
        self._pattern = re.compile(self.path) if self.path is not None else None

    def matches(self, method: str, target: str, ranged: bool) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if self._pattern is not None and not self._pattern.search(target):
            return False
        return self.ranged is None or self.ranged == ranged

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


@dataclass(frozen=True)
class Seen:
    """One request the proxy received, and what it did with it."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    fault: str | None  # the action applied, "reject-checksum", or None (passed through)
    status: int | None  # the status sent to the client (for lose_response: moto's, never sent)
    at: float  # time.monotonic() when the request had been read

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query, keep_blank_values=True)

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


def error_xml(code: str, message: str, resource: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


def checksum_headers(headers: dict[str, str], include_mode: bool = False) -> list[str]:
    """The flexible-checksum headers in a request (names lower-case) that servers without
    checksum support reject."""
    bad = []
    for name, value in headers.items():
        if name == "x-amz-checksum-mode":
            if include_mode:
                bad.append(name)
        elif name.startswith("x-amz-checksum-") or name in ("x-amz-sdk-checksum-algorithm", "x-amz-trailer"):
            bad.append(name)
        elif name == "content-encoding" and "aws-chunked" in value.lower():
            bad.append(f"{name}: {value}")
    return bad


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: "FaultProxy"

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        if self.proxy._take_reset(request):
            # No shutdown(SHUT_WR) first: that would send a FIN. With SO_LINGER 0, close()
            # of the last reference sends a RST (the handler has closed its files by now).
            try:
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            request.close()
            return
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away mid-answer is normal here: no traceback on stderr."""
        import sys

        self.proxy._note_error(sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; also answers Expect: 100-continue
    timeout = 60  # an idle client connection is dropped after this
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.proxy._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    # -- request -------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        return self.rfile.read(int(length))

    def _handle(self) -> None:
        proxy = self.server.proxy
        method = self.command
        target = self.path
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        if "close" in (self.headers.get("Connection") or "").lower():
            self.close_connection = True
        rule = None
        bad = checksum_headers(headers, proxy.reject_checksum_mode) if proxy.reject_checksums else []
        if not bad:
            rule = proxy._pick(method, target, "range" in headers)
        at = time.monotonic()

        def record(fault: str | None) -> Callable[[int | None], None]:
            # Called before the first byte of the answer is sent, so a client that has
            # its answer always finds its request in the log.
            return lambda status: proxy._record(Seen(method, target, headers, fault, status, at))

        if bad:
            status, code, message = proxy.checksum_error
            if message is None:
                names = ", ".join(f"'{b}'" for b in bad)
                message = f"Unsupported header {names} received for this API call."
            self._error(status, code, message, target, record("reject-checksum"))
            return
        if rule is None:
            self._forward(method, target, body, record(None))
            return
        action = rule.action
        if action == "slowdown":
            self._error(503, "SlowDown", "Please reduce your request rate.", target, record(action))
        elif action == "internal":
            self._error(500, "InternalError", "We encountered an internal error. Please try again.", target,
                        record(action))
        elif action == "status":
            self._error(rule.status, rule.code, rule.message, target, record(action))
        elif action == "drop":
            self.close_connection = True  # closed (FIN) once this returns
            record(action)(None)
        elif action == "reset":
            self._reset()  # closed (RST) once this returns
            record(action)(None)
        elif action == "lose_response":
            self.close_connection = True
            self._forward(method, target, body, record(action), deliver=False)
        elif action == "cut":
            self._forward(method, target, body, record(action), cut_at=rule.cut_at)
        else:  # pragma: no cover - rejected by Rule
            raise AssertionError(action)

    # -- responses -----------------------------------------------------------------

    def _error(self, status: int, code: str, message: str, resource: str,
               on_status: Callable[[int | None], None] | None = None) -> None:
        payload = error_xml(code, message, urllib.parse.urlsplit(resource).path)
        if on_status is not None:
            on_status(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amz-request-id", uuid.uuid4().hex[:16].upper())
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST instead of a FIN: the server closes it with
        SO_LINGER 0 once the handler is done (see _Server.shutdown_request)."""
        self.close_connection = True
        self.server.proxy._mark_reset(self.connection)

    def _forward(self, method: str, target: str, body: bytes | None, on_status: Callable[[int | None], None],
                 *, deliver: bool = True, cut_at: int | float | None = None) -> None:
        """Send the request upstream and (unless deliver=False) relay the answer; calls
        on_status with the upstream status (None if unreachable) before answering."""
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                        continue
                    conn.putheader(name, value)
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
            except OSError as exc:
                if deliver:
                    self._error(502, "BadGateway", f"fault proxy: upstream unreachable: {exc}", target, on_status)
                else:
                    on_status(None)
                return
            status = resp.status
            if not deliver:
                resp.read()
                on_status(status)
                return
            resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            length_header = resp.getheader("Content-Length")
            no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
            if length_header is None and not no_body:
                data = resp.read()  # upstream streamed without a length: buffer it
                resp_headers.append(("Content-Length", str(len(data))))
                chunks: Iterable[bytes] = [data]
                length = len(data)
            else:
                length = int(length_header) if length_header is not None and not no_body else 0
                chunks = iter(lambda: resp.read(_PIECE), b"")
            send = length
            if cut_at is not None and not no_body and 200 <= status < 300 and length >= 2:
                send = cut_at if isinstance(cut_at, int) else int(length * cut_at)
                send = max(1, min(send, length - 1))
                self.close_connection = True
            on_status(status)
            self.send_response_only(status, resp.reason)
            for name, value in resp_headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            for piece in chunks:
                if sent >= send:
                    break
                piece = piece[: send - sent]
                self.wfile.write(piece)
                sent += len(piece)
            if sent < length:
                self.close_connection = True  # the client is left waiting for the rest: EOF
        finally:
            conn.close()


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 (OS-chosen port) in front of `upstream`
    (e.g. "http://127.0.0.1:5000"). Use as a context manager, or start()/stop()."""

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = upstream
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.reject_checksums = False
        self.reject_checksum_mode = False
        # (status, code, message) of the rejection; message None names the headers, like
        # Backblaze B2 ("Unsupported header 'x-amz-checksum-crc32' received for this API call.")
        self.checksum_error: tuple[int, str, str | None] = (400, "InvalidArgument", None)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._conns: set[socket.socket] = set()
        self._resets: set[socket.socket] = set()
        self.errors: list[BaseException | None] = []  # exceptions in handler threads
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # stops accepting; returns once serve_forever has returned
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:  # idle keep-alive connections: wake their handler threads
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._lock:
                if not self._conns:
                    break
            time.sleep(0.01)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- fault plan ------------------------------------------------------------------

    def add(self, action: str, *, method: str | None = None, path: str | None = None,
            times: int | None = 1, skip: int = 0, ranged: bool | None = None,
            cut_at: int | float = 0.5, status: int = 500, code: str = "InternalError",
            message: str = "We encountered an internal error. Please try again.") -> Rule:
        rule = Rule(action, method, path, times, skip, ranged, cut_at, status, code, message)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (the log of requests is kept)."""
        with self._lock:
            self._rules.clear()

    def reset_log(self) -> None:
        with self._lock:
            self._seen.clear()

    def _pick(self, method: str, target: str, ranged: bool) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.exhausted or not rule.matches(method, target, ranged):
                    continue
                rule.matched += 1
                if rule.matched > rule.skip:
                    rule.fired += 1
                    return rule
        return None

    # -- what was seen -----------------------------------------------------------------

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def _note_error(self, exc: BaseException | None) -> None:
        with self._lock:
            self.errors.append(exc)

    def _mark_reset(self, sock: socket.socket) -> None:
        with self._lock:
            self._resets.add(sock)

    def _take_reset(self, sock: socket.socket) -> bool:
        with self._lock:
            if sock in self._resets:
                self._resets.discard(sock)
                return True
            return False

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def requests(self, method: str | None = None, path: str | None = None,
                 fault: str | None | bool = False) -> list[Seen]:
        """Requests in arrival order, filtered by method, a regex searched in the target,
        and the fault applied (False: any; None: passed through; or an action name)."""
        pattern = re.compile(path) if path is not None else None
        return [
            s for s in self.seen
            if (method is None or s.method == method.upper())
            and (pattern is None or pattern.search(s.target))
            and (fault is False or s.fault == fault)
        ]

    def count(self, method: str | None = None, path: str | None = None,
              fault: str | None | bool = False) -> int:
        return len(self.requests(method, path, fault))

    def by_method(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.seen:
            out[s.method] = out.get(s.method, 0) + 1
        return out

    def ranges(self, path: str | None = None) -> list[str]:
        """The Range headers of the GETs seen, in order."""
        return [s.range for s in self.requests("GET", path) if s.range is not None]

    def faults(self) -> list[Seen]:
        return [s for s in self.seen if s.fault is not None]
