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
  connection instead of being buffered or read and thrown away without end;
- a request timeout: a request must arrive whole within `request_timeout` seconds (plus
  up to SWEEP_SECONDS) of the server waiting for it (connection opened, or previous
  answer sent), else the connection is closed without an answer; idle keep-alive
  connections also go after uvicorn's `timeout_keep_alive`;
- a connection cap: at `max_connections`, a new connection closes the one that has been
  waiting longest for a request; only when every connection is being answered is the new
  one refused. The cap is kept to half the process's file descriptor limit, so the rest
  (database, fetches, logs) never runs out; the systemd unit raises that limit.

The subclass uses uvicorn's protocol internals (parser, cycle, pipeline); tested with
uvicorn 0.55 and httptools 0.9.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("aggregator")

#: how often request timeouts are checked: a request times out 0 to this many seconds late
SWEEP_SECONDS = 0.5


@dataclass(frozen=True)
class Limits:
    #: request line and headers, bytes (nginx and Node allow 8–16 KB)
    max_head: int = 16 * 1024
    #: the request target (path and query), bytes
    max_target: int = 8 * 1024
    #: a request body, bytes: we serve GET and HEAD only
    max_body: int = 16 * 1024
    #: seconds for a whole request to arrive once the server waits for one (checked every
    #: SWEEP_SECONDS)
    request_timeout: float = 10.0
    #: seconds an idle keep-alive connection is kept after an answer (uvicorn's default)
    keep_alive: int = 5
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
        if self.waiting:
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

    # --- connections -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.shared.max_connections
        if len(self.connections) >= cap and not self._make_room():
            self.shared.warnings.warn(f"{cap} connections open, none idle: closed a new one")
            self.transport = transport  # for connection_lost
            transport.close()
            return
        super().connection_made(transport)
        self._wait_for_request()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request; False if none waits."""
        waiting = self.shared.waiting
        for victim in waiting:
            del waiting[victim]
            # out of the count now: its connection_lost comes on a later loop iteration
            self.connections.discard(victim)
            victim.transport.close()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.waiting.pop(self, None)
        super().connection_lost(exc)

    # --- the request timeout ---------------------------------------------------------------

    def _wait_for_request(self) -> None:
        """(Re)start the clock for the next request, unless a request is being answered."""
        answering = self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
        if answering or self.transport.is_closing():
            self.shared.waiting.pop(self, None)
        else:
            self.shared.wait(self, self.loop)

    def timed_out(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    # --- reading: the head limit -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
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
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # no WebSockets here: answered as a plain request, as uvicorn does (its warning,
            # two lines a request, is left out)
            self.shared.warnings.warn("an Upgrade request, answered as a plain request")
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, cause.reason)
            else:
                self._refuse(400, "invalid HTTP request")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` and close; only close if an answer is already on its way."""
        self.shared.warnings.warn(f"refused a request with {status}: {reason}")
        self.shared.waiting.pop(self, None)  # not one to close to make room: it is closing
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or self.pipeline:
                self.transport.close()
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
        self.transport.close()

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
        for name, value in self.headers:
            if name == b"content-length" and int(value) > self.limits.max_body:
                raise _Refused(413, f"request body over {self.limits.max_body} bytes")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_body:
            raise _Refused(413, f"request body over {self.limits.max_body} bytes")
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head = True
        self.head_bytes = 0
        self._wait_for_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._wait_for_request()
