"""Red-team findings on the daemon's HTTP server as clients meet it (httpserver.py, the
published files' conditional answers in publish.py).

Conditional requests go through the ASGI app (make_app over an OutputCache); the
protocol findings through our uvicorn protocol in this process, over raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator, MutableMapping
from email.utils import formatdate
from typing import Any

import pytest

from aggregator.httpserver import Limits
from aggregator.publish import OutputCache, make_app
from tests.test_server_limits import serving

# --- conditional requests -----------------------------------------------------------------

MODIFIED = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


def get_output(headers: dict[str, str]) -> tuple[int, dict[bytes, bytes], bytes]:
    """GET /all.atom from the app serving one published file: status, headers, body."""
    cache = OutputCache()
    cache.update({"all.atom": b"<feed/>"}, now=MODIFIED)
    app = make_app(cache, lambda: (200, {}), lambda: b"")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/all.atom",
        "raw_path": b"/all.atom",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        await app(scope, receive, send)

    asyncio.run(call())
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize(
    "since",
    [
        # zone offsets email.utils turns into an OverflowError: a 500 and a traceback
        # logged per request, before
        "Sun, 06 Dec 2026 00:00:00 +99999999999999",
        "Sun, 06 Dec 2026 00:00:00 -99999999999999999999999",
    ],
)
def test_an_if_modified_since_with_an_absurd_zone_is_ignored_not_an_error(since: str) -> None:
    status, _, body = get_output({"If-Modified-Since": since})
    assert (status, body) == (200, b"<feed/>")


def test_an_if_modified_since_in_the_future_is_ignored() -> None:
    """A client whose clock runs ahead, or that sends its own fetch time, must not be kept
    on its copy until the file changes after a date no Last-Modified of ours has reached."""
    future = formatdate(time.time() + 3600, usegmt=True)
    status, _, body = get_output({"If-Modified-Since": future})
    assert (status, body) == (200, b"<feed/>")
    # the dates a client got from us still make a 304
    status, headers, _ = get_output({})
    since = headers[b"last-modified"].decode()
    assert get_output({"If-Modified-Since": since})[0] == 304
    later = formatdate(MODIFIED + 60, usegmt=True)
    assert get_output({"If-Modified-Since": later})[0] == 304


# --- the protocol -------------------------------------------------------------------------


@pytest.fixture
def echo_server() -> Iterator[int]:
    """Our server in this process, answering every request with its path; its port."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/read":  # the request's body, first
            while (await receive()).get("more_body"):
                pass
        body = scope["path"].encode()
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    with serving(app, Limits()) as port:
        yield port


def read_all(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(ConnectionResetError):  # closed with bytes of ours unread
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize(
    "upgrade",
    [
        b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        # curl --http2 on an http:// URL
        b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ],
)
def test_requests_pipelined_after_an_upgrade_request_are_answered(
    echo_server: int, upgrade: bytes
) -> None:
    """The upgrade is not made, so what follows on the connection is HTTP: httptools
    stopped at the end of the upgrade request, and the requests sent with it in one piece
    went unanswered until the request timeout closed the connection."""
    with socket.create_connection(("127.0.0.1", echo_server)) as sock:
        sock.sendall(
            upgrade
            + b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = read_all(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 3, answer
    assert answer.endswith(b"/third")
    assert b"/second" in answer


@pytest.mark.parametrize("apart", [False, True])
def test_an_upgrade_request_with_a_body_is_refused_not_its_body_taken_for_requests(
    echo_server: int, apart: bool
) -> None:
    """httptools leaves the body of an upgrade request unparsed, as the other protocol's,
    and parses what comes next as HTTP: a body sent apart from the head was answered as a
    request of its own (one smuggled past a proxy that forwards the body as a body), and
    one sent with it was dropped with the requests after it."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    head = (
        b"POST /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
        b"Content-Length: %d\r\n\r\n" % len(smuggled)
    )
    rest = smuggled + b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", echo_server)) as sock:
        if apart:
            sock.sendall(head)
            sock.settimeout(5)
            answer = sock.recv(65536)  # the answer to the head, before the body is sent
            with contextlib.suppress(OSError):  # closed already
                sock.sendall(rest)
        else:
            answer = b""
            sock.sendall(head + rest)
        answer += read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1") == 1
    assert b"/smuggled" not in answer


def test_an_answer_before_a_body_held_back_for_100_continue_closes_the_connection(
    echo_server: int,
) -> None:
    """A client that sent `Expect: 100-continue` and got a final answer instead may never
    send the body: the connection stayed open, and its next request was read as that body
    and left unanswered until the request timeout."""
    with socket.create_connection(("127.0.0.1", echo_server)) as sock:
        sock.sendall(
            b"POST /first HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 50\r\n\r\n"
        )
        sock.settimeout(5)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"/first")
        with contextlib.suppress(OSError):  # closed already
            sock.sendall(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        assert read_all(sock) == b""  # closed, at once
        assert time.monotonic() - started < 1
    # a body asked for with the 100 keeps the connection
    with socket.create_connection(("127.0.0.1", echo_server)) as sock:
        sock.sendall(
            b"POST /read HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        sock.settimeout(5)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello" + b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_all(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and answer.endswith(b"/second"), answer
