"""The daemon's HTTP server: uvicorn's httptools protocol with limits for hostile clients.

uvicorn bounds neither a request's head nor the time a client may take to send it. An
endless header line made httptools grow the partial value by concatenation (quadratic:
200 MB sent took the daemon from 53 to 362 MB, and /healthz went unanswered for over
10 s), and a connection that sent half a head stayed open forever.
`LimitedHttpToolsProtocol` adds, per connection:

- a head limit: the request line and headers together may take `max_head` bytes (431),
  the request target `max_target` (414); the parser is fed at most what the limit leaves,
  so an over-long head is answered without reading further;
- a body limit: we serve GET and HEAD only, so a body over `max_body` (413) ends the
  connection instead of being buffered or read and thrown away without end; the one
  exception is content a WebSub hub pushes to a callback under `push_prefix`, which may
  take `max_push_body` (the daemon's max_feed_size);
- a request timeout: a request must arrive whole within `request_timeout` seconds (plus
  up to SWEEP_SECONDS) of the server waiting for it (connection opened, or previous
  answer sent), else the connection is closed without an answer; idle keep-alive
  connections also go after uvicorn's `timeout_keep_alive`;
- back-pressure on pipelining: a client may send requests without reading the answers,
  and uvicorn parsed and queued every one it read (a cycle, about 2.5 KB, for each
  36-byte request) and resumed reading after every answer, while the answers piled up in
  the transport: 20 such connections took the daemon from 57 MB to 2.7 GB for good.
  Now at most `max_pipeline` requests wait in a connection's queue; the rest of what was
  read is kept as bytes (at most one read: 250 KB with uvloop) and nothing more is read
  until the queue drains. Nothing is read either while more than `write_buffer` bytes of
  answers are unsent (the transport's high-water mark: the answer being written waits);
- a send timeout: a connection whose client takes none of its unsent answer within
  `send_timeout` seconds (plus up to SWEEP_SECONDS), whether over `write_buffer` or left
  unsent at close, is reset, which also frees what the kernel still holds for it; the
  request timeout does not run meanwhile. A client that reads slowly but steadily keeps
  its connection, as with nginx's send_timeout;
- a connection cap: at `max_connections`, a new connection closes the one that has been
  waiting longest for a request, else resets the one that has longest left its answers
  unread; only when every connection is being answered is the new one refused. The cap
  is kept to half the process's file descriptor limit, so the rest (database, fetches,
  logs) never runs out; the systemd unit raises that limit.

The subclass uses uvicorn's protocol internals (parser, cycle, pipeline, flow); tested with
uvicorn 0.55, httptools 0.9 and uvloop 0.23.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import resource
import socket
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

log = logging.getLogger("aggregator")

#: how often request and send timeouts are checked: they strike 0 to this many seconds late
SWEEP_SECONDS = 0.5
#: the end of every request head (llhttp refuses bare LF line ends)
HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Limits:
    #: request line and headers, bytes (nginx and Node allow 8–16 KB)
    max_head: int = 16 * 1024
    #: the request target (path and query), bytes
    max_target: int = 8 * 1024
    #: a request body, bytes: we serve GET and HEAD only
    max_body: int = 16 * 1024
    #: a body POSTed to a path under `push_prefix` (WebSub content, websub.py), bytes
    max_push_body: int = 16 * 1024
    push_prefix: bytes = b"/websub/"
    #: seconds for a whole request to arrive once the server waits for one (checked every
    #: SWEEP_SECONDS)
    request_timeout: float = 10.0
    #: seconds an idle keep-alive connection is kept after an answer (uvicorn's default)
    keep_alive: int = 5
    #: requests read ahead of the one being answered (pipelined) that may wait in a
    #: connection's queue; beyond them the connection is not read from
    max_pipeline: int = 8
    #: unsent answer bytes a connection may buffer before it is not read from and its
    #: answers wait (the transport's high-water mark; writing resumes at a quarter)
    write_buffer: int = 64 * 1024
    #: seconds a client may take none of its unsent answers before the connection is
    #: reset (nginx's send_timeout; checked every SWEEP_SECONDS)
    send_timeout: float = 30.0
    #: open connections at most; also kept to half of RLIMIT_NOFILE (see `connection_cap`)
    max_connections: int = 4096
    #: pending connections the kernel queues before we accept them
    backlog: int = 2048


def connection_cap(limits: Limits) -> int:
    """`limits.max_connections`, or half the soft file descriptor limit if that is lower
    (1024 by default outside systemd: 512 connections, 512 descriptors for the rest)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    return max(16, min(limits.max_connections, soft // 2))


class ServerConfig(uvicorn.Config):
    """uvicorn's Config plus what the connections of one server share."""

    def __init__(self, app: Callable[..., Any], limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits
        self.max_connections = connection_cap(limits)
        #: connections waiting for a request → until when (loop time), the longest-waiting
        #: first: a dict keeps insertion order, and the timeout is the same for all
        self.waiting: dict[LimitedHttpToolsProtocol, float] = {}
        #: connections whose client is not taking its answers → (until when, how many bytes
        #: were unsent then), in the same order
        self.stalled: dict[LimitedHttpToolsProtocol, tuple[float, int]] = {}
        self.sweeper: asyncio.TimerHandle | None = None
        self.warnings = _Warnings()

    def wait(self, connection: LimitedHttpToolsProtocol, loop: asyncio.AbstractEventLoop) -> None:
        """Start `connection`'s request timeout, moving it to the end of `waiting`. One
        sweep every SWEEP_SECONDS, not a timer per request: cheaper by a timer's creation
        and cancellation per request, the timeout being 0–SWEEP_SECONDS later."""
        self.waiting.pop(connection, None)
        self.waiting[connection] = loop.time() + self.limits.request_timeout
        if self.sweeper is None:
            self.sweeper = loop.call_later(SWEEP_SECONDS, self.sweep, loop)

    def stall(self, connection: LimitedHttpToolsProtocol, loop: asyncio.AbstractEventLoop) -> None:
        """Start (or restart) `connection`'s send timeout from the bytes unsent now."""
        self.stalled.pop(connection, None)
        unsent = _unsent(connection.transport)
        self.stalled[connection] = (loop.time() + self.limits.send_timeout, unsent)
        if self.sweeper is None:
            self.sweeper = loop.call_later(SWEEP_SECONDS, self.sweep, loop)

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sweeper = None
        now = loop.time()
        expired = []
        for connection, deadline in self.waiting.items():
            if deadline > now:
                break
            expired.append(connection)
        for connection in expired:
            del self.waiting[connection]
            connection.timed_out()
        stalled = []
        for connection, (deadline, unsent) in self.stalled.items():
            if deadline > now:
                break
            stalled.append((connection, unsent))
        for connection, unsent in stalled:
            del self.stalled[connection]
            connection.send_timed_out(unsent)
        if self.waiting or self.stalled:
            self.sweeper = loop.call_later(SWEEP_SECONDS, self.sweep, loop)


def make_config(app: Callable[..., Any], limits: Limits | None = None) -> ServerConfig:
    """The uvicorn Config the daemon serves with: our protocol, no WebSockets, no lifespan,
    warnings only, no access log and no `Server:` header."""
    limits = limits or Limits()
    return ServerConfig(
        app,
        limits,
        http=LimitedHttpToolsProtocol,
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        # nothing reads the client's address or scheme: no X-Forwarded-* rewriting
        proxy_headers=False,
        timeout_keep_alive=limits.keep_alive,
        backlog=limits.backlog,
    )


class _Refused(Exception):
    """Raised in a parser callback to stop parsing and answer `status`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class _Warnings:
    """Refusals are logged at most once a minute, with a count: a hostile client must not
    decide how much the daemon logs."""

    PERIOD = 60.0

    def __init__(self) -> None:
        self.last = -self.PERIOD
        self.suppressed = 0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.PERIOD:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more not logged since the last)" if self.suppressed else ""
        log.warning("HTTP: %s%s", message, more)
        self.last = now
        self.suppressed = 0


def _unsent(transport: asyncio.Transport) -> int:
    """Bytes written that the client has not taken: the transport's buffer, plus the
    socket's send queue (sent and not acknowledged, or not sent) where the system says.
    The buffer alone does not show a slow reader's progress: the kernel lets the loop
    write again only once a third or so of a send queue of megabytes has gone."""
    unsent = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            unsent += struct.unpack("i", queued)[0]
    return unsent


def _reset(transport: asyncio.Transport) -> None:
    """Abort with a reset: a plain abort closes the socket, and the kernel still holds
    what it had not sent, trying to deliver it (and its FIN) to a client that does not
    read; zero linger discards it (nginx's reset_timedout_connection)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Flow(FlowControl):
    """uvicorn's FlowControl, except that reading resumes only when the connection allows:
    uvicorn resumes after every answer and in every receive()."""

    def __init__(self, transport: asyncio.Transport, connection: LimitedHttpToolsProtocol):
        super().__init__(transport)
        self.connection = connection

    def resume_reading(self) -> None:
        if self.read_paused and self.connection.may_read():
            self.read_paused = False
            self._transport.resume_reading()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `Limits` (see the module doc)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, ServerConfig)
        self.shared = config
        self.limits = config.limits
        #: the parser is between requests or inside a head (not in a body)
        self.in_head = True
        self.head_bytes = 0
        self.body_bytes = 0
        #: the body limit of the request being read (`max_body` or `max_push_body`)
        self.max_body = self.limits.max_body
        #: bytes read but not yet parsed, from `held_from` on: the requests beyond a full
        #: pipeline
        self.held = b""
        self.held_from = 0
        #: the request being answered: with requests queued behind it, uvicorn's `cycle` is
        #: the last one read, not this one
        self.running: RequestResponseCycle | None = None

    # --- connections -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.shared.max_connections
        if len(self.connections) >= cap and not self._make_room():
            self.shared.warnings.warn(f"{cap} connections open, none idle: closed a new one")
            self.transport = transport  # for connection_lost
            transport.close()
            return
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        limit = self.limits.write_buffer
        transport.set_write_buffer_limits(high=limit, low=limit // 4)
        self._wait_for_request()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request, else reset the one
        that has longest left its answers unread; False if there is neither."""
        for victims in (self.shared.waiting, self.shared.stalled):
            for victim in victims:
                del victims[victim]
                # out of the count now: its connection_lost comes on a later loop iteration
                self.connections.discard(victim)
                if victim.transport.get_write_buffer_size():
                    _reset(victim.transport)  # close() would wait for the client to read
                else:
                    victim.transport.close()
                return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.waiting.pop(self, None)
        self.shared.stalled.pop(self, None)
        running = self.running
        if running is not None and not running.response_complete:
            # uvicorn tells only `cycle`: this one would write to the closed transport
            # (uvloop raises) once its wait for the client to read ends
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)
        self.pipeline.clear()
        self.held = b""

    def _close(self) -> None:
        """Close; the send timeout then bounds how long unsent bytes keep it open (close()
        waits for them to be sent, which a client that does not read never allows)."""
        self.transport.close()
        self._linger()

    def _linger(self) -> None:
        if self.transport.get_write_buffer_size() and self not in self.shared.stalled:
            self.shared.stall(self, self.loop)

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self._close()

    # --- the request timeout ---------------------------------------------------------------

    def _wait_for_request(self) -> None:
        """(Re)start the clock for the next request, unless a request is being answered."""
        answering = (
            self.pipeline
            or (self.cycle is not None and not self.cycle.response_complete)
            # an answer over write_buffer is not sent yet: the send timeout runs instead
            or self.flow.write_paused
        )
        if answering or self.transport.is_closing():
            self.shared.waiting.pop(self, None)
        else:
            self.shared.wait(self, self.loop)

    def timed_out(self) -> None:
        if not self.transport.is_closing():
            self._close()

    # --- writing: back-pressure and the send timeout ---------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self.running = cycle
        super()._start_asgi_task(cycle, app)

    def pause_writing(self) -> None:
        """Over write_buffer bytes unsent: read nothing more until the client takes them,
        and give it send_timeout to take some."""
        super().pause_writing()
        self.flow.pause_reading()
        self.shared.waiting.pop(self, None)
        if self not in self.shared.stalled:
            self.shared.stall(self, self.loop)

    def resume_writing(self) -> None:
        super().resume_writing()
        if not self.transport.is_closing():  # else the send timeout runs until all is sent
            self.shared.stalled.pop(self, None)
            self.flow.resume_reading()
            self._wait_for_request()

    def send_timed_out(self, unsent: int) -> None:
        """`send_timeout` after `unsent` bytes were not taken: another send_timeout if
        the client took some since (nothing is written while it is stalled), else reset."""
        if self.transport.get_write_buffer_size() == 0:
            return  # the transport has resumed writing or finished closing: not stalled
        left = _unsent(self.transport)
        if left < unsent:
            self.shared.stall(self, self.loop)
            return
        self.shared.warnings.warn(f"reset a connection: {left} bytes unread for a while")
        _reset(self.transport)

    def may_read(self) -> bool:
        """Whether reading may resume: the queue has room and answers are being taken."""
        return (
            not self.held
            and len(self.pipeline) < self.limits.max_pipeline
            and not self.flow.write_paused
        )

    # --- reading: the pipeline limit -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.held:  # not while paused; but if it happens, in order
            data = self.held[self.held_from :] + data
            self.held = b""
        if data.count(HEAD_END) > self.limits.max_pipeline - len(self.pipeline):
            self._feed_while_room(data, 0)
        elif self.in_head and self.head_bytes + len(data) < self.limits.max_head:
            # the usual case: a whole request, or part of one, well within the head limit
            self.head_bytes += len(data)
            self._feed(data)
        else:
            self._take(data)

    def _feed_while_room(self, data: bytes, start: int) -> None:
        """Parse `data[start:]` a request head at a time while the queue has room (a
        piece completes at most two requests: one with a body and the next); hold the rest,
        reading nothing more until the queue drains (see on_response_complete)."""
        view = memoryview(data)
        while len(self.pipeline) < self.limits.max_pipeline:
            end = data.find(HEAD_END, start)
            end = len(data) if end < 0 else end + len(HEAD_END)
            self._take(view[start:end])
            start = end
            if start >= len(data) or self.transport.is_closing():
                return
        self.held, self.held_from = data, start
        self.flow.pause_reading()

    # --- reading: the head limit -----------------------------------------------------------

    def _take(self, data: bytes | memoryview) -> None:
        if self.in_head and self.head_bytes + len(data) < self.limits.max_head:
            # the usual case: a whole request, or part of one, well within the limit
            self.head_bytes += len(data)
            self._feed(data)
            return
        # Feed the parser no more than the head limit leaves: past it, a head is refused
        # unread. Outside a head, pieces of max_head bytes, so that a head starting inside
        # a piece has at most that many bytes uncounted.
        view = memoryview(data)
        while view and not self.transport.is_closing():
            room = self.limits.max_head - self.head_bytes if self.in_head else self.limits.max_head
            piece, view = view[:room], view[room:]
            if self.in_head:
                self.head_bytes += len(piece)
            self._feed(piece)
            if self.transport.is_closing():
                return
            if self.in_head and self.head_bytes >= self.limits.max_head:
                limit = self.limits.max_head
                self._refuse(431, f"request line and headers over {limit} bytes")
                return

    def _feed(self, data: bytes | memoryview) -> None:
        # HttpToolsProtocol.data_received, with our refusals in place of its 400
        self._unset_keepalive_if_required()
        while True:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as e:
                # no WebSockets here: answered as a plain request, as uvicorn does (its
                # warning, two lines a request, is left out). The parser stops at the end
                # of the upgrade request's head (its offset in `data`) and reads on as HTTP
                # only from the next feed: what follows here, pipelined requests, is fed on
                # (uvicorn dropped it, leaving them unanswered). A body it leaves unread,
                # to be taken for requests of its own: refused instead
                if self._declares_body():
                    self._refuse(400, "an Upgrade request with a body")
                    return
                self.shared.warnings.warn("an Upgrade request, answered as a plain request")
                offset = e.args[0]
                data = data[offset:]
                if offset > 0 and data and not self.transport.is_closing():
                    continue
            except httptools.HttpParserError as e:
                cause = e.__context__
                if isinstance(cause, _Refused):
                    self._refuse(cause.status, cause.reason)
                else:
                    self._refuse(400, "invalid HTTP request")
            return

    def _declares_body(self) -> bool:
        """Whether the request whose head was parsed last says a body follows."""
        return any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in self.headers
        )

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` and close; only close if an answer is already on its way."""
        self.shared.warnings.warn(f"refused a request with {status}: {reason}")
        self.shared.waiting.pop(self, None)  # not one to close to make room: it is closing
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or self.pipeline:
                self._close()
                return
            # the app's answer to this request, if it comes, is dropped: ours replaces it
            cycle.disconnected = True
        body = reason.encode("ascii", "replace") + b"\n"
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._close()

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_target:
            raise _Refused(414, f"request target over {self.limits.max_target} bytes")

    def on_headers_complete(self) -> None:
        self.in_head = False
        pushed = self.url.startswith(self.limits.push_prefix)
        self.max_body = self.limits.max_push_body if pushed else self.limits.max_body
        for name, value in self.headers:
            if name == b"content-length" and int(value) > self.max_body:
                raise _Refused(413, f"request body over {self.max_body} bytes")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.max_body:
            raise _Refused(413, f"request body over {self.max_body} bytes")
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head = True
        self.head_bytes = 0
        self._wait_for_request()

    def on_response_complete(self) -> None:
        latest = self.cycle
        if (
            self.expect_100_continue
            and not self.in_head
            and latest is not None
            and latest.response_complete
            and not self.transport.is_closing()
        ):
            # the last request read was answered before its body came, which its client
            # holds back until a 100 Continue: it may never send it, and its next request
            # would be read as that body (and go unanswered until the request timeout)
            self.transport.close()
        super().on_response_complete()
        if self.transport.is_closing():
            self._linger()  # Connection: close with the answer not all sent
        else:
            if self.held and len(self.pipeline) < self.limits.max_pipeline:
                held, self.held = self.held, b""
                self._feed_while_room(held, self.held_from)
            if self.flow.read_paused:
                self.flow.resume_reading()
        self._wait_for_request()
