"""Real HTTP servers on 127.0.0.1 for tests: a well-behaved feed server and a hostile one.

Both run in a background thread, so sync tests, async tests (any event loop in the main thread)
and subprocesses (`aggregator poll --once`) can all reach them. Use them as context managers
(or through the `feed_server` / `hostile_server` fixtures); leaving the block stops every thread
and closes every socket.

FeedServer: serves a mutable path → resource table with strong ETags, Last-Modified, 304s and
optional gzip; arbitrary status/headers/body answers (redirects, 410, 429…); records requests
and the peak number of requests served at once. Optionally on another local address (`host`),
over TLS (`tls`), with paths that want HTTP Basic credentials (`require_auth`).

HostileServer: a raw-socket server for bytes no polite server sends, one behaviour per path
(see HostileServer.PATHS).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

RSS_TYPE = "application/rss+xml; charset=utf-8"


def _not_modified(etag: str, modified: datetime, request_headers: Mapping[str, str]) -> bool:
    """RFC 9110 §13.1: If-None-Match (strong or weak tags, or *) decides when sent, else
    If-Modified-Since. Written here, not taken from aggregator.publish: the server the
    tests poll must not share the code it is testing."""
    if_none_match = request_headers.get("if-none-match")
    if if_none_match is not None:
        tags = [tag.strip() for tag in if_none_match.split(",")]
        return "*" in tags or any(tag in (etag, "W/" + etag) for tag in tags)
    since = request_headers.get("if-modified-since")
    if since:
        try:
            return modified.replace(microsecond=0) <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
    return False


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    #: path with query string, as sent
    path: str
    #: header names lower-cased (repeated headers joined with ", ")
    headers: Mapping[str, str]
    #: time.monotonic() when the request's head was read
    at: float = 0.0
    #: the client's end of the connection, "host:port": one per connection it opened
    client: str = ""


@dataclass
class _Resource:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: seconds to wait before answering (to make requests overlap)
    delay: float = 0.0
    #: a static file: ETag, Last-Modified, conditional GET
    etag: str | None = None
    last_modified: datetime | None = None
    #: gzip the body when the client accepts it
    gzip: bool = False


class _ServerBase:
    """Start/stop plumbing shared by both servers."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    port: int = 0
    #: the address the server listens on
    host: str = "127.0.0.1"
    scheme: str = "http"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of `path` ("/a.xml") on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)


def _shutdown_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its handler


# --- the well-behaved server -------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection counts mean something
    timeout = 10  # an idle keep-alive connection does not hold a thread forever
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output

    def do_GET(self) -> None:
        self.server.owner._handle(self, head_only=False)

    def do_HEAD(self) -> None:
        self.server.owner._handle(self, head_only=True)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads
    request_queue_size = 128  # the default 5 would make bursts of clients time out connecting

    def __init__(self, owner: FeedServer) -> None:
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        if ":" in owner.host:
            self.address_family = socket.AF_INET6
        super().__init__((owner.host, 0), _Handler)
        if owner.tls is not None:
            # the handshake happens in the handler thread, on the first read
            self.socket = owner.tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)


def _http_date(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC), usegmt=True)


class FeedServer(_ServerBase):
    """A static feed server whose content tests change between requests.

    with FeedServer() as server:
        server.set("/a.xml", b"<rss>…</rss>")
        fetch(server.url("/a.xml"))
        assert server.requests_to("/a.xml")[0].headers["user-agent"]
    """

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        """Listen on `host` (any local address), over TLS with `tls` (a server context)."""
        self.host = host
        self.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self._protected: dict[str, str] = {}
        self._resources: dict[str, _Resource] = {}
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self._max_in_flight = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> None:
        self._httpd = _HTTPServer(self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None or self._thread is None:
            return
        self._httpd.shutdown()
        self._thread.join()
        with self._httpd.sockets_lock:
            open_sockets = list(self._httpd.open_sockets)
        for sock in open_sockets:  # wake handlers blocked on idle keep-alive connections
            _shutdown_socket(sock)
        self._httpd.server_close()
        self._httpd = None
        self._thread = None

    # -- content

    def set(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str = RSS_TYPE,
        headers: Mapping[str, str] | None = None,
        gzip: bool = False,
        last_modified: datetime | None = None,
        delay: float = 0.0,
    ) -> None:
        """Serve `body` at `path` as a static file (strong ETag, Last-Modified, 304s).

        Setting the same body again keeps its Last-Modified, as a file server would.
        """
        etag = '"' + hashlib.sha256(body).hexdigest()[:24] + '"'
        with self._lock:
            previous = self._resources.get(path)
        if last_modified is None:
            if previous is not None and previous.etag == etag and previous.last_modified:
                last_modified = previous.last_modified
            else:
                last_modified = datetime.now(UTC).replace(microsecond=0)
        all_headers = {"Content-Type": content_type, **(headers or {})}
        resource = _Resource(
            body=body,
            headers=all_headers,
            delay=delay,
            etag=etag,
            last_modified=last_modified,
            gzip=gzip,
        )
        with self._lock:
            self._resources[path] = resource

    def respond(
        self,
        path: str,
        status: int,
        body: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer `path` with exactly this status, headers and body (no validators)."""
        with self._lock:
            self._resources[path] = _Resource(
                status=status, body=body, headers=dict(headers or {}), delay=delay
            )

    def redirect(self, path: str, to: str, status: int = 301) -> None:
        """Redirect `path` to `to` (a path on this server or an absolute URL)."""
        self.respond(path, status, headers={"Location": to})

    def remove(self, path: str) -> None:
        with self._lock:
            self._resources.pop(path, None)

    def require_auth(self, path: str, username: str, password: str) -> None:
        """Answer `path` with 401 (and a Basic challenge) unless the request carries these
        credentials as HTTP Basic auth (UTF-8)."""
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        with self._lock:
            self._protected[path] = f"Basic {token}"

    # -- what happened

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if urlsplit(r.path).path == path]

    @property
    def max_concurrent(self) -> int:
        """The most requests this server was answering at the same moment."""
        with self._lock:
            return self._max_in_flight

    @property
    def open_connections(self) -> int:
        """Client connections this server has open now (kept alive, or in use)."""
        if self._httpd is None:
            return 0
        with self._httpd.sockets_lock:
            return len(self._httpd.open_sockets)

    def clear(self) -> None:
        """Forget recorded requests and the concurrency peak (content stays)."""
        with self._lock:
            self._requests.clear()
            self._max_in_flight = 0

    # -- serving (in handler threads)

    def _handle(self, handler: _Handler, head_only: bool) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        client = ":".join(str(part) for part in handler.client_address[:2])
        recorded = RecordedRequest(handler.command, handler.path, headers, time.monotonic(), client)
        with self._lock:
            self._requests.append(recorded)
            resource = self._resources.get(urlsplit(handler.path).path)
            expected = self._protected.get(urlsplit(handler.path).path)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            if resource is None:
                resource = _Resource(404, b"not found\n", {"Content-Type": "text/plain"})
            if expected is not None and headers.get("authorization") != expected:
                challenge = {
                    "Content-Type": "text/plain",
                    "WWW-Authenticate": 'Basic realm="feeds"',
                }
                resource = _Resource(401, b"unauthorized\n", challenge)
            if resource.delay:
                time.sleep(resource.delay)
            status, body, out_headers = self._answer(resource, headers)
            handler.send_response(status)
            for name, value in out_headers.items():
                handler.send_header(name, value)
            if status != 304:
                handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if not head_only and status != 304:
                handler.wfile.write(body)
        finally:
            with self._lock:
                self._in_flight -= 1

    @staticmethod
    def _answer(
        resource: _Resource, request_headers: Mapping[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        headers = dict(resource.headers)
        if resource.etag is None or resource.last_modified is None:
            return resource.status, resource.body, headers
        headers["ETag"] = resource.etag
        headers["Last-Modified"] = _http_date(resource.last_modified)
        if resource.gzip:
            headers["Vary"] = "Accept-Encoding"
        if _not_modified(resource.etag, resource.last_modified, request_headers):
            return 304, b"", headers
        body = resource.body
        accepts = request_headers.get("accept-encoding", "").lower()
        if resource.gzip and "gzip" in accepts:
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return resource.status, body, headers


# --- the hostile server ------------------------------------------------------------


@functools.cache
def gzip_bomb(expanded_size: int = 200 * 1024 * 1024) -> bytes:
    """One gzip member of `expanded_size` zero bytes (200 MB → about 200 KB). Built once."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(expanded_size // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


class _ClientGone(Exception):
    """The client closed the connection, or the server is stopping."""


class HostileServer(_ServerBase):
    """Misbehaving HTTP over raw sockets; the path picks the misbehaviour.

    with HostileServer() as server:
        fetch(server.url("/drip"))  # never completes on its own
    """

    #: path → what the server does
    PATHS: dict[str, str] = {
        "/drip": "200 with Content-Length 1 MB, then one body byte per drip_interval, forever",
        "/silent": "reads the request, never answers",
        "/huge": "200 with Content-Length 1 GB, then zeros as fast as the client reads",
        "/endless": "200 without Content-Length, zeros until the client hangs up",
        "/gzip-bomb": "Content-Encoding: gzip, ~200 KB expanding to 200 MB of zeros",
        "/bad-gzip": "Content-Encoding: gzip, but the body is not gzip",
        "/unknown-encoding": "Content-Encoding: x-squash",
        "/reset": "reads the request, then resets the connection (RST)",
        "/close": "reads the request, then closes without a response",
        "/loop/a": "302 to /loop/b",
        "/loop/b": "302 to /loop/a",
        "/empty": "200 with an empty body",
        "/html": "200 with an HTML page instead of a feed",
        "/lying-length": "Content-Length 1000, sends 20 bytes, closes",
        "/garbage": "not HTTP at all",
    }

    def __init__(self, drip_interval: float = 1.0) -> None:
        self.drip_interval = drip_interval
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._requests: list[RecordedRequest] = []

    # -- lifecycle

    def start(self) -> None:
        self._stopping.clear()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # so the accept loop notices stop()
        self.port = self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()

    def stop(self) -> None:
        if self._listener is None or self._accept_thread is None:
            return
        self._stopping.set()
        self._accept_thread.join()
        self._listener.close()
        with self._lock:
            connections = dict(self._connections)
        for sock, thread in connections.items():
            _shutdown_socket(sock)
            thread.join()
        self._listener = None
        self._accept_thread = None

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    # -- serving

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.1)  # short, so every wait can notice stop()
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._connections[conn] = thread
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            path = self._read_request(conn)
            behaviour = self._behaviours().get(urlsplit(path).path, self._not_found)
            behaviour(conn)
        except (_ClientGone, OSError):
            pass
        finally:
            conn.close()
            with self._lock:
                self._connections.pop(conn, None)

    def _behaviours(self) -> dict[str, Callable[[socket.socket], None]]:
        return {
            "/drip": self._drip,
            "/silent": self._silent,
            "/huge": self._huge,
            "/endless": self._endless,
            "/gzip-bomb": self._gzip_bomb,
            "/bad-gzip": self._bad_gzip,
            "/unknown-encoding": self._unknown_encoding,
            "/reset": self._reset,
            "/close": lambda conn: None,
            "/loop/a": lambda conn: self._send(conn, _head(302, {"Location": "/loop/b"}, 0)),
            "/loop/b": lambda conn: self._send(conn, _head(302, {"Location": "/loop/a"}, 0)),
            "/empty": lambda conn: self._send(conn, _head(200, {"Content-Type": RSS_TYPE}, 0)),
            "/html": self._html,
            "/lying-length": self._lying_length,
            "/garbage": lambda conn: self._send(conn, b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        }

    def _read_request(self, conn: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self._recv(conn)
            if not chunk or len(data) > 65536:
                raise _ClientGone
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, path, _ = (request_line.split(" ") + ["", ""])[:3]
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        with self._lock:
            self._requests.append(RecordedRequest(method, path, headers))
        return path

    def _recv(self, conn: socket.socket) -> bytes:
        while not self._stopping.is_set():
            try:
                return conn.recv(65536)
            except TimeoutError:
                continue
        raise _ClientGone

    def _send(self, conn: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._stopping.is_set():
                raise _ClientGone
            try:
                sent = conn.send(view)
            except TimeoutError:
                continue  # the client is not reading yet
            view = view[sent:]

    def _wait(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _ClientGone

    # -- behaviours

    def _not_found(self, conn: socket.socket) -> None:
        self._send(conn, _head(404, {"Content-Type": "text/plain"}, 10) + b"not found\n")

    def _drip(self, conn: socket.socket) -> None:
        self._send(conn, _head(200, {"Content-Type": RSS_TYPE}, 1024 * 1024))
        while True:
            self._send(conn, b" ")
            self._wait(self.drip_interval)

    def _silent(self, conn: socket.socket) -> None:
        while self._recv(conn):  # until the client hangs up
            pass

    def _huge(self, conn: socket.socket) -> None:
        self._send(conn, _head(200, {"Content-Type": RSS_TYPE}, 1024**3))
        block = bytes(65536)
        while True:
            self._send(conn, block)

    def _endless(self, conn: socket.socket) -> None:
        self._send(conn, _head(200, {"Content-Type": RSS_TYPE}, None))
        block = b"<item>" * 10000
        while True:
            self._send(conn, block)

    def _gzip_bomb(self, conn: socket.socket) -> None:
        body = gzip_bomb()
        headers = {"Content-Type": RSS_TYPE, "Content-Encoding": "gzip"}
        self._send(conn, _head(200, headers, len(body)) + body)

    def _bad_gzip(self, conn: socket.socket) -> None:
        body = b"this is not gzip at all, just plain text pretending"
        headers = {"Content-Type": RSS_TYPE, "Content-Encoding": "gzip"}
        self._send(conn, _head(200, headers, len(body)) + body)

    def _unknown_encoding(self, conn: socket.socket) -> None:
        body = b"squashed bytes"
        headers = {"Content-Type": RSS_TYPE, "Content-Encoding": "x-squash"}
        self._send(conn, _head(200, headers, len(body)) + body)

    def _reset(self, conn: socket.socket) -> None:
        # linger on, timeout 0: close() sends RST instead of FIN
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _html(self, conn: socket.socket) -> None:
        body = b"<!DOCTYPE html><html><head><title>Home</title></head><body>Hi</body></html>"
        headers = {"Content-Type": "text/html; charset=utf-8"}
        self._send(conn, _head(200, headers, len(body)) + body)

    def _lying_length(self, conn: socket.socket) -> None:
        self._send(conn, _head(200, {"Content-Type": RSS_TYPE}, 1000) + b"<rss><channel><title>")


def _head(status: int, headers: Mapping[str, str], content_length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_REASONS = {200: "OK", 302: "Found", 404: "Not Found"}
