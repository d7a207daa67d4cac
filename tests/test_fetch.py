"""Fetcher against real servers on 127.0.0.1: what arrives, what is refused, and how fast."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

import pytest

import aggregator.fetch
from aggregator import USER_AGENT, __version__
from aggregator.errors import (
    FeedError,
    FetchError,
    FetchTimeout,
    Gone,
    HTTPStatusError,
    RetryLater,
    TooLarge,
    TooManyRedirects,
)
from aggregator.fetch import Fetcher, cache_max_age, parse_retry_after
from aggregator.model import Credentials, FeedState, Fetched, FetchLimits, NotModified
from tests.feedserver import FeedServer, HostileServer, gzip_bomb

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MB = 1024 * 1024
# small limits so hostile cases end quickly; read_timeout > the drip interval (1 s), so a
# dripping server is cut off by the total deadline, not by the read timeout
LIMITS = FetchLimits(
    max_body_bytes=MB,
    connect_timeout=1.0,
    read_timeout=1.5,
    total_timeout=2.0,
    max_redirects=5,
    max_connections=20,
    max_per_host=4,
    # many feeds on one loopback server: the per-host spacing is tested on its own
    per_host_spacing=0,
)
#: every case must end within this, however hostile the server
BOUND = LIMITS.total_timeout + 2.0

RSS = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>T</title><link>http://example.com/</link>
<item><title>One</title><link>http://example.com/1</link></item></channel></rss>
"""


def state_for(url: str, **fields: Any) -> FeedState:
    return FeedState(url=url, fetch_url=url, **fields)


async def fetch_async(state: FeedState, limits: FetchLimits = LIMITS) -> Fetched | NotModified:
    async with Fetcher(limits) as fetcher:
        return await fetcher.fetch(state, NOW)


def fetch(url: str, limits: FetchLimits = LIMITS, **fields: Any) -> Fetched | NotModified:
    return asyncio.run(fetch_async(state_for(url, **fields), limits))


def fetched(url: str, limits: FetchLimits = LIMITS, **fields: Any) -> Fetched:
    result = fetch(url, limits, **fields)
    assert isinstance(result, Fetched), result
    return result


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """The block must finish in `seconds`: a behaviour bound, not a benchmark."""
    start = time.monotonic()
    yield
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"took {elapsed:.1f} s"


# --- a normal fetch -----------------------------------------------------------------


def test_200_with_gzip_returns_the_decompressed_body(feed_server: FeedServer) -> None:
    feed_server.set("/a.xml", RSS, gzip=True, headers={"X-Custom": "yes"})
    result = fetched(feed_server.url("/a.xml"))
    assert result.status == 200
    assert result.body == RSS
    assert result.url == feed_server.url("/a.xml")
    assert result.moved_to is None
    assert result.headers["content-encoding"] == "gzip"  # it really came compressed
    assert result.headers["content-type"].startswith("application/rss+xml")
    assert result.headers["x-custom"] == "yes"
    assert result.etag and result.etag == result.headers["etag"]
    assert result.last_modified == result.headers["last-modified"]
    (request,) = feed_server.requests_to("/a.xml")
    assert "gzip" in request.headers["accept-encoding"]


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_deflate_body_is_decoded_zlib_wrapped_or_raw(feed_server: FeedServer, wbits: int) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    body = compressor.compress(RSS) + compressor.flush()
    feed_server.respond("/d.xml", 200, body, headers={"Content-Encoding": "deflate"})
    assert fetched(feed_server.url("/d.xml")).body == RSS


def test_request_names_aggregator_and_prefers_feed_types(feed_server: FeedServer) -> None:
    feed_server.set("/a.xml", RSS)
    fetch(feed_server.url("/a.xml"))
    (request,) = feed_server.requests_to("/a.xml")
    assert request.headers["user-agent"] == USER_AGENT
    assert f"aggregator/{__version__}" in request.headers["user-agent"]
    accept = request.headers["accept"]
    assert accept.index("application/rss+xml") < accept.index("text/html")
    assert "if-none-match" not in request.headers  # nothing stored yet, nothing to validate


def test_empty_200_and_html_are_returned_for_the_parser_to_judge(
    hostile_server: HostileServer,
) -> None:
    assert fetched(hostile_server.url("/empty")).body == b""
    html = fetched(hostile_server.url("/html"))
    assert html.headers["content-type"].startswith("text/html")
    assert html.body.startswith(b"<!DOCTYPE html>")


def test_body_exactly_at_the_limit_passes_one_byte_more_does_not(feed_server: FeedServer) -> None:
    limits = replace(LIMITS, max_body_bytes=1000)
    feed_server.respond("/fits.xml", 200, b"x" * 1000)
    feed_server.respond("/over.xml", 200, b"x" * 1001)
    assert len(fetched(feed_server.url("/fits.xml"), limits).body) == 1000
    with pytest.raises(TooLarge, match=r"^body larger than 1000 bytes"):
        fetch(feed_server.url("/over.xml"), limits)


# --- conditional GET -----------------------------------------------------------------


def test_conditional_get_sends_stored_validators_and_304_is_not_modified(
    feed_server: FeedServer,
) -> None:
    feed_server.set("/a.xml", RSS)
    url = feed_server.url("/a.xml")
    first = fetched(url)

    second = fetch(url, etag=first.etag, last_modified=first.last_modified)

    assert isinstance(second, NotModified)
    assert second.etag == first.etag
    conditional = feed_server.requests_to("/a.xml")[-1]
    assert conditional.headers["if-none-match"] == first.etag
    assert conditional.headers["if-modified-since"] == first.last_modified


def test_last_modified_alone_also_gets_304(feed_server: FeedServer) -> None:
    feed_server.set("/a.xml", RSS)
    url = feed_server.url("/a.xml")
    first = fetched(url)
    assert isinstance(fetch(url, last_modified=first.last_modified), NotModified)


def test_changed_feed_comes_back_with_new_validators(feed_server: FeedServer) -> None:
    feed_server.set("/a.xml", RSS, last_modified=NOW - timedelta(days=1))
    url = feed_server.url("/a.xml")
    first = fetched(url)
    changed = RSS.replace(b"One", b"Two")
    feed_server.set("/a.xml", changed, last_modified=NOW)

    second = fetch(url, etag=first.etag, last_modified=first.last_modified)

    assert isinstance(second, Fetched)
    assert second.body == changed
    assert second.etag != first.etag


# --- hostile servers -----------------------------------------------------------------


def test_slow_drip_is_cut_off_by_the_total_deadline(hostile_server: HostileServer) -> None:
    with within(BOUND), pytest.raises(FetchTimeout) as caught:
        fetch(hostile_server.url("/drip"))
    assert str(caught.value) == "timed out after 2 s (total deadline)"
    assert caught.value.url == hostile_server.url("/drip")


def test_silent_server_hits_the_read_timeout(hostile_server: HostileServer) -> None:
    with within(BOUND), pytest.raises(FetchTimeout) as caught:
        fetch(hostile_server.url("/silent"))
    assert str(caught.value) == "no data for 1.5 s (read timeout)"


def test_content_length_over_the_limit_is_refused_before_reading(
    hostile_server: HostileServer,
) -> None:
    with within(BOUND), pytest.raises(TooLarge) as caught:
        fetch(hostile_server.url("/huge"))
    assert str(caught.value) == "body larger than 1 MB (Content-Length 1073741824)"


def test_endless_body_is_cut_off_while_streaming(hostile_server: HostileServer) -> None:
    with within(BOUND), pytest.raises(TooLarge) as caught:
        fetch(hostile_server.url("/endless"))
    assert str(caught.value) == "body larger than 1 MB"


def test_gzip_bomb_is_cut_off_after_decompression(hostile_server: HostileServer) -> None:
    gzip_bomb()  # built once, before the clock starts
    tracemalloc.start()
    try:
        with within(BOUND), pytest.raises(TooLarge) as caught:
            fetch(hostile_server.url("/gzip-bomb"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == "body larger than 1 MB after decompression"
    # the bomb expands to 200 MB; only about the 1 MB limit may ever be held
    assert peak < 16 * MB, f"peak {peak / MB:.0f} MB"


def test_gzip_bomb_is_also_cut_off_at_the_product_default_limit(
    hostile_server: HostileServer,
) -> None:
    gzip_bomb()
    limits = replace(LIMITS, max_body_bytes=FetchLimits().max_body_bytes)
    with within(BOUND), pytest.raises(TooLarge, match="^body larger than 10 MB after decomp"):
        fetch(hostile_server.url("/gzip-bomb"), limits)


def test_corrupt_gzip_and_unknown_encoding_are_fetch_errors(
    hostile_server: HostileServer,
) -> None:
    with pytest.raises(FetchError, match="^cannot decode gzip body: "):
        fetch(hostile_server.url("/bad-gzip"))
    with pytest.raises(FetchError) as caught:
        fetch(hostile_server.url("/unknown-encoding"))
    assert str(caught.value) == "unsupported Content-Encoding 'x-squash'"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/reset", "connection reset by peer"),
        ("/close", "server closed the connection without a response"),
        ("/lying-length", "connection closed before the body was complete"),
    ],
)
def test_broken_connections_are_fetch_errors(
    hostile_server: HostileServer, path: str, message: str
) -> None:
    with within(BOUND), pytest.raises(FetchError) as caught:
        fetch(hostile_server.url(path))
    assert type(caught.value) is FetchError
    assert str(caught.value) == message


def test_not_http_at_all_is_a_fetch_error(hostile_server: HostileServer) -> None:
    with within(BOUND), pytest.raises(FetchError, match="^malformed HTTP response"):
        fetch(hostile_server.url("/garbage"))


def test_connection_refused_is_a_fetch_error() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with within(BOUND), pytest.raises(FetchError) as caught:
        fetch(f"http://127.0.0.1:{port}/feed.xml")
    assert str(caught.value) == "connection refused"


# --- redirects -----------------------------------------------------------------------


def test_redirect_loop_is_detected(hostile_server: HostileServer) -> None:
    with within(BOUND), pytest.raises(TooManyRedirects, match="^redirect loop"):
        fetch(hostile_server.url("/loop/a"))


def chain(server: FeedServer, statuses: list[int]) -> str:
    """/r0 → /r1 → … → /rN (the feed), each hop with the given status; returns /r0's URL."""
    for hop, status in enumerate(statuses):
        server.redirect(f"/r{hop}", f"/r{hop + 1}", status)
    server.set(f"/r{len(statuses)}", RSS)
    return server.url("/r0")


def test_five_redirects_are_followed_six_are_too_many(feed_server: FeedServer) -> None:
    assert fetched(chain(feed_server, [302] * 5)).body == RSS
    with pytest.raises(TooManyRedirects) as caught:
        fetch(chain(feed_server, [302] * 6))
    assert str(caught.value) == "more than 5 redirects"


def test_permanent_redirects_set_moved_to(feed_server: FeedServer) -> None:
    result = fetched(chain(feed_server, [301, 308]))
    assert result.body == RSS
    assert result.url == feed_server.url("/r2")
    assert result.moved_to == feed_server.url("/r2")


@pytest.mark.parametrize("statuses", [[302], [301, 302], [307, 308]])
def test_any_temporary_hop_leaves_moved_to_unset(
    feed_server: FeedServer, statuses: list[int]
) -> None:
    result = fetched(chain(feed_server, statuses))
    assert result.body == RSS
    assert result.moved_to is None


def test_relative_location_is_resolved(feed_server: FeedServer) -> None:
    feed_server.redirect("/old/feed.xml", "../new/feed.xml", 301)
    feed_server.set("/new/feed.xml", RSS)
    result = fetched(feed_server.url("/old/feed.xml"))
    assert result.moved_to == feed_server.url("/new/feed.xml")


def test_moved_feed_answering_304_still_reports_the_move(feed_server: FeedServer) -> None:
    feed_server.set("/new.xml", RSS)
    feed_server.redirect("/old.xml", "/new.xml", 308)
    first = fetched(feed_server.url("/old.xml"))
    result = fetch(feed_server.url("/old.xml"), etag=first.etag)
    assert isinstance(result, NotModified)
    assert result.moved_to == feed_server.url("/new.xml")


def test_redirect_to_a_non_http_scheme_is_refused(feed_server: FeedServer) -> None:
    feed_server.redirect("/a.xml", "ftp://example.com/feed.xml", 301)
    with pytest.raises(FetchError, match="^redirect to unsupported URL 'ftp://"):
        fetch(feed_server.url("/a.xml"))


# --- status codes ---------------------------------------------------------------------


def test_410_is_gone(feed_server: FeedServer) -> None:
    feed_server.respond("/a.xml", 410)
    with pytest.raises(Gone) as caught:
        fetch(feed_server.url("/a.xml"))
    assert caught.value.status == 410
    assert str(caught.value) == "gone (HTTP 410)"


def test_429_with_retry_after_seconds(feed_server: FeedServer) -> None:
    feed_server.respond("/a.xml", 429, headers={"Retry-After": "120"})
    with pytest.raises(RetryLater) as caught:
        fetch(feed_server.url("/a.xml"))
    assert caught.value.status == 429
    assert caught.value.retry_after == NOW + timedelta(seconds=120)
    assert str(caught.value) == "server asks to retry after 2026-03-01T12:02:00Z (HTTP 429)"


def test_503_with_retry_after_http_date(feed_server: FeedServer) -> None:
    when = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
    feed_server.respond("/a.xml", 503, headers={"Retry-After": format_datetime(when, True)})
    with pytest.raises(RetryLater) as caught:
        fetch(feed_server.url("/a.xml"))
    assert caught.value.status == 503
    assert caught.value.retry_after == when


def test_503_without_retry_after_has_no_retry_time(feed_server: FeedServer) -> None:
    feed_server.respond("/a.xml", 503)
    with pytest.raises(RetryLater) as caught:
        fetch(feed_server.url("/a.xml"))
    assert caught.value.retry_after is None
    assert str(caught.value) == "service unavailable (HTTP 503)"


def test_404_is_a_plain_status_error(feed_server: FeedServer) -> None:
    with pytest.raises(HTTPStatusError) as caught:
        fetch(feed_server.url("/missing.xml"))
    assert type(caught.value) is HTTPStatusError
    assert caught.value.status == 404
    assert str(caught.value) == "HTTP 404 Not Found"


# --- kept-alive connections ---------------------------------------------------------------


def test_a_servers_feeds_share_one_kept_alive_connection(feed_server: FeedServer) -> None:
    """Feeds of one server polled one after another, fetched (200) and then unchanged
    (304), all go over one connection: no new TCP (or TLS) handshake per feed."""
    paths = [f"/{n}.xml" for n in range(6)]
    for path in paths:
        feed_server.set(path, RSS)

    async def two_rounds() -> tuple[list[Fetched | NotModified], list[Fetched | NotModified]]:
        async with Fetcher(LIMITS) as fetcher:
            first = [await fetcher.fetch(state_for(feed_server.url(p)), NOW) for p in paths]
            etags = [result.etag for result in first]
            second = [
                await fetcher.fetch(state_for(feed_server.url(p), etag=etag), NOW)
                for p, etag in zip(paths, etags, strict=True)
            ]
        return first, second

    first, second = asyncio.run(two_rounds())
    assert all(isinstance(result, Fetched) for result in first)
    assert all(isinstance(result, NotModified) for result in second)
    assert len(feed_server.requests) == 12
    assert len({request.client for request in feed_server.requests}) == 1


def wait_for(condition: Any, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_idle_connections_are_kept_to_a_few_servers_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With connections kept to at most two idle servers, fetching from four closes the
    first two servers' connections and keeps the last two."""
    monkeypatch.setattr(aggregator.fetch, "IDLE_SERVERS_KEPT", 2)
    servers = [FeedServer() for _ in range(4)]
    for server in servers:
        server.start()
        server.set("/feed.xml", RSS)
    try:

        async def poll_each() -> None:
            async with Fetcher(LIMITS) as fetcher:
                for server in servers:
                    await fetcher.fetch(state_for(server.url("/feed.xml")), NOW)
                # checked while the fetcher is open: closing it closes everything
                await asyncio.to_thread(check_open, [0, 0, 1, 1])

        def check_open(expected: list[int]) -> None:
            ok = wait_for(lambda: [s.open_connections for s in servers] == expected)
            assert ok, [s.open_connections for s in servers]

        asyncio.run(poll_each())
        check_open([0, 0, 0, 0])
    finally:
        for server in servers:
            server.stop()


def test_a_server_idle_past_the_keep_alive_expiry_has_its_connection_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aggregator.fetch, "KEEPALIVE_SECONDS", 0.2)
    with FeedServer() as early, FeedServer() as late:
        early.set("/feed.xml", RSS)
        late.set("/feed.xml", RSS)

        async def poll_apart() -> tuple[int, int]:
            async with Fetcher(LIMITS) as fetcher:
                await fetcher.fetch(state_for(early.url("/feed.xml")), NOW)
                await asyncio.sleep(0.4)
                await fetcher.fetch(state_for(late.url("/feed.xml")), NOW)
                await asyncio.to_thread(wait_for, lambda: early.open_connections == 0)
                return early.open_connections, late.open_connections

        assert asyncio.run(poll_apart()) == (0, 1)


class _BodyAfter304Server:
    """Raw HTTP/1.1 server: /a.xml answers 304 with a Content-Length and bytes after its
    head (a body HTTP does not give a 304), every other path 200 with RSS."""

    def __init__(self, extra: bytes) -> None:
        self.extra = extra
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, pending = pending.split(b"\r\n\r\n", 1)
                if head.split(b" ")[1] == b"/a.xml":
                    length = b"Content-Length: %d\r\n" % len(self.extra)
                    conn.sendall(b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\n' + length)
                    conn.sendall(b"\r\n" + self.extra)
                else:
                    length = b"Content-Length: %d\r\n" % len(RSS)
                    conn.sendall(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n" + RSS)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


SMUGGLED = b"<rss><channel><title>Not feed B</title></channel></rss>"


@pytest.mark.parametrize(
    "extra",
    [
        b"<html>not modified</html>",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    ],
)
def test_a_304_that_declares_a_body_does_not_leave_it_for_the_next_feed(extra: bytes) -> None:
    """Its connection is closed rather than kept: what followed the 304 is never read as
    the answer to the server's next feed."""
    server = _BodyAfter304Server(extra)

    async def a_then_b() -> Fetched | NotModified:
        async with Fetcher(LIMITS) as fetcher:
            first = await fetcher.fetch(state_for(server.url("/a.xml"), etag='"a"'), NOW)
            assert isinstance(first, NotModified)
            return await fetcher.fetch(state_for(server.url("/b.xml")), NOW)

    try:
        second = asyncio.run(a_then_b())
    finally:
        server.listener.close()
    assert isinstance(second, Fetched) and second.body == RSS


def test_a_servers_pool_keeps_two_idle_connections_and_closes_them_after_the_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four feeds of one server fetched at once leave two connections open, and no request
    is needed for them to be closed once the keep-alive expiry has passed."""
    monkeypatch.setattr(aggregator.fetch, "KEEPALIVE_SECONDS", 0.3)
    with FeedServer() as server:
        for n in range(4):
            server.set(f"/{n}.xml", RSS, delay=0.1)

        async def at_once() -> tuple[bool, bool]:
            async with Fetcher(LIMITS) as fetcher:
                urls = [server.url(f"/{n}.xml") for n in range(4)]
                await asyncio.gather(*(fetcher.fetch(state_for(url), NOW) for url in urls))
                two = await asyncio.to_thread(wait_for, lambda: server.open_connections == 2)
                await asyncio.sleep(0.5)  # the loop runs; no request is made
                none = await asyncio.to_thread(wait_for, lambda: server.open_connections == 0)
                return two, none

        assert asyncio.run(at_once()) == (True, True)
        assert server.max_concurrent == 4


def test_closing_the_fetcher_under_a_fetch_fails_that_fetch_as_a_feed_error() -> None:
    """As at shutdown, when a task still fetching is left behind: the fetch ends with the
    feed's error, not with an error of the fetcher's own bookkeeping."""
    with FeedServer() as server:
        server.set("/slow.xml", RSS, delay=1.0)

        async def close_under() -> BaseException | None:
            fetcher = await Fetcher(LIMITS).__aenter__()
            fetch = asyncio.ensure_future(fetcher.fetch(state_for(server.url("/slow.xml")), NOW))
            await asyncio.sleep(0.3)
            await fetcher.__aexit__(None, None, None)
            try:
                await fetch
            except BaseException as error:
                return error
            return None

        error = asyncio.run(close_under())
    assert isinstance(error, FeedError), repr(error)


# --- concurrency ------------------------------------------------------------------------


async def fetch_many(urls: list[str], limits: FetchLimits) -> list[Fetched | NotModified]:
    async with Fetcher(limits) as fetcher:
        return await asyncio.gather(*(fetcher.fetch(state_for(url), NOW) for url in urls))


def test_per_host_limit_is_respected(feed_server: FeedServer) -> None:
    for n in range(10):
        feed_server.set(f"/{n}.xml", RSS, delay=0.2)
    limits = replace(LIMITS, max_per_host=2)
    results = asyncio.run(fetch_many([feed_server.url(f"/{n}.xml") for n in range(10)], limits))
    assert all(isinstance(r, Fetched) and r.body == RSS for r in results)
    assert feed_server.max_concurrent == 2


def test_global_limit_is_respected(feed_server: FeedServer) -> None:
    for n in range(8):
        feed_server.set(f"/{n}.xml", RSS, delay=0.2)
    limits = replace(LIMITS, max_connections=3, max_per_host=10)
    asyncio.run(fetch_many([feed_server.url(f"/{n}.xml") for n in range(8)], limits))
    assert feed_server.max_concurrent == 3


def test_a_slow_feed_does_not_delay_a_fast_one(
    feed_server: FeedServer, hostile_server: HostileServer
) -> None:
    feed_server.set("/fast.xml", RSS)

    async def both() -> tuple[float, BaseException | Fetched | NotModified]:
        async with Fetcher(LIMITS) as fetcher:
            start = time.monotonic()
            slow = asyncio.create_task(fetcher.fetch(state_for(hostile_server.url("/drip")), NOW))
            await asyncio.sleep(0.1)  # the slow one is already dripping
            fast = await fetcher.fetch(state_for(feed_server.url("/fast.xml")), NOW)
            fast_elapsed = time.monotonic() - start
            assert isinstance(fast, Fetched)
            (slow_outcome,) = await asyncio.gather(slow, return_exceptions=True)
            return fast_elapsed, slow_outcome

    with within(BOUND):
        fast_elapsed, slow_outcome = asyncio.run(both())
    assert fast_elapsed < 1.0
    assert isinstance(slow_outcome, FetchTimeout)


def test_waiting_for_a_slot_does_not_count_against_the_deadline(feed_server: FeedServer) -> None:
    # 6 feeds, one at a time, each 0.5 s: the last waits 2.5 s, longer than the 2 s deadline
    for n in range(6):
        feed_server.set(f"/{n}.xml", RSS, delay=0.5)
    limits = replace(LIMITS, max_per_host=1)
    results = asyncio.run(fetch_many([feed_server.url(f"/{n}.xml") for n in range(6)], limits))
    assert all(isinstance(r, Fetched) for r in results)


def test_fetch_outside_the_context_manager_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        asyncio.run(Fetcher().fetch(state_for("http://127.0.0.1:1/"), NOW))


# --- helpers for the scheduler ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", NOW + timedelta(seconds=120)),
        ("  0 ", NOW),
        ("Mon, 02 Mar 2026 08:30:00 GMT", datetime(2026, 3, 2, 8, 30, tzinfo=UTC)),
        ("Mon, 02 Mar 2026 10:30:00 +0200", datetime(2026, 3, 2, 8, 30, tzinfo=UTC)),
        ("-5", None),
        ("soon", None),
        ("", None),
        ("1.5", None),
        # a zone offset email.utils turns into an OverflowError (an internal error per poll)
        ("Mon, 02 Mar 2026 08:30:00 +99999999999999", None),
    ],
)
def test_parse_retry_after(value: str, expected: datetime | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=300", 300),
        ("public, max-age=3600, must-revalidate", 3600),
        ('max-age="60"', 60),
        ("MAX-AGE=10", 10),
        ("s-maxage=600", None),
        ("no-cache", None),
        ("max-age=soon", None),
    ],
)
def test_cache_max_age(value: str, expected: int | None) -> None:
    assert cache_max_age({"cache-control": value}) == expected


def test_cache_max_age_without_the_header() -> None:
    assert cache_max_age({}) is None


# --- the test servers themselves -------------------------------------------------------


def test_servers_stop_promptly_with_clients_still_connected() -> None:
    threads_before = threading.active_count()
    feed, hostile = FeedServer(), HostileServer()
    feed.start()
    hostile.start()
    feed.set("/a.xml", RSS)
    idle = socket.create_connection(("127.0.0.1", feed.port))  # a keep-alive client
    idle.sendall(b"GET /a.xml HTTP/1.1\r\nHost: x\r\n\r\n")
    dripping = socket.create_connection(("127.0.0.1", hostile.port))
    dripping.sendall(b"GET /drip HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(1000).startswith(b"HTTP/1.1 200")
    assert dripping.recv(1000).startswith(b"HTTP/1.1 200")
    with within(2.0):
        feed.stop()
        hostile.stop()
    idle.close()
    dripping.close()
    assert threading.active_count() == threads_before


# --- proxies from the environment ----------------------------------------------------


@contextmanager
def forward_proxy() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP proxy that answers every absolute-form GET with RSS itself and
    records the request lines it received."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.requestline)
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", str(len(RSS)))
            self.end_headers()
            self.wfile.write(RSS)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_http_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with forward_proxy() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        result = fetched("http://feeds.example.invalid/news.xml")
    assert result.body == RSS
    assert seen == ["GET http://feeds.example.invalid/news.xml HTTP/1.1"]


def test_no_proxy_hosts_are_fetched_directly(
    monkeypatch: pytest.MonkeyPatch, feed_server: FeedServer
) -> None:
    for name in ("ALL_PROXY", "all_proxy", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    feed_server.set("/direct.xml", RSS)
    with forward_proxy() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        result = fetched(feed_server.url("/direct.xml"))
    assert result.body == RSS
    assert seen == []


# --- credentials ---------------------------------------------------------------------

USERNAME = "reader"
PASSWORD = "sécret:pass word"  # non-ASCII, a colon and a space: all percent-encoded in a URL


def with_userinfo(url: str, username: str = USERNAME, password: str = PASSWORD) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{rest}"


def fetch_with(url: str, credentials: Credentials | None, **fields: Any) -> Fetched | NotModified:
    async def run() -> Fetched | NotModified:
        async with Fetcher(LIMITS) as fetcher:
            return await fetcher.fetch(state_for(url, **fields), NOW, credentials)

    return asyncio.run(run())


def assert_no_credential_in(text: str) -> None:
    for secret in (PASSWORD, quote(PASSWORD, safe=""), "hunter2", "abc123"):
        assert secret not in text, text


def private_feed(server: FeedServer, path: str = "/private.xml") -> str:
    server.set(path, RSS)
    server.require_auth(path, USERNAME, PASSWORD)
    return server.url(path)


def test_userinfo_in_the_feed_url_is_sent_as_basic_auth(feed_server: FeedServer) -> None:
    result = fetched(with_userinfo(private_feed(feed_server)))
    assert result.body == RSS
    # the credentials went as a header, not in the URL, and do not come back in it either
    assert result.url == feed_server.url("/private.xml")
    (request,) = feed_server.requests_to("/private.xml")
    assert request.path == "/private.xml"
    assert request.headers["host"] == f"127.0.0.1:{feed_server.port}"
    assert_no_credential_in(result.url)


def test_explicit_credentials_win_over_userinfo(feed_server: FeedServer) -> None:
    url = with_userinfo(private_feed(feed_server), "old-user", "stale password")
    result = fetch_with(url, Credentials(USERNAME, PASSWORD))
    assert isinstance(result, Fetched)
    assert result.body == RSS


def test_credentials_reach_a_moved_feed_on_the_same_origin(feed_server: FeedServer) -> None:
    """After a 301 the feed is fetched at its new URL; the configured URL's userinfo is
    still the credentials, and neither the new URL nor moved_to carries them."""
    moved = private_feed(feed_server, "/new.xml")
    feed_server.redirect("/old.xml", "/new.xml", 301)
    configured = with_userinfo(feed_server.url("/old.xml"))
    first = fetched(configured)
    assert first.moved_to == moved
    # the next poll
    result = asyncio.run(fetch_async(FeedState(url=configured, fetch_url=moved)))
    assert isinstance(result, Fetched)
    assert result.body == RSS
    assert [r.path for r in feed_server.requests_to("/old.xml")] == ["/old.xml"]


def test_credentials_stay_with_the_configured_origin_across_redirects(
    feed_server: FeedServer,
) -> None:
    with FeedServer() as elsewhere:  # same host, another port: another origin
        elsewhere.set("/feed.xml", RSS)
        feed_server.redirect("/start.xml", "/middle.xml", 302)
        feed_server.redirect("/middle.xml", elsewhere.url("/feed.xml"), 302)
        feed_server.require_auth("/start.xml", USERNAME, PASSWORD)
        feed_server.require_auth("/middle.xml", USERNAME, PASSWORD)
        result = fetched(with_userinfo(feed_server.url("/start.xml")))
        assert result.body == RSS
        (seen_elsewhere,) = elsewhere.requests
    assert "authorization" not in seen_elsewhere.headers
    for path in ("/start.xml", "/middle.xml"):
        (request,) = feed_server.requests_to(path)
        assert request.headers["authorization"].startswith("Basic ")


def test_401_after_a_redirect_to_another_origin_says_the_credentials_were_withheld(
    feed_server: FeedServer,
) -> None:
    with FeedServer() as elsewhere:
        feed_server.redirect("/start.xml", private_feed(elsewhere), 302)
        with pytest.raises(HTTPStatusError) as caught:
            fetch_with(feed_server.url("/start.xml"), Credentials(USERNAME, PASSWORD))
        assert "authorization" not in elsewhere.requests[0].headers
    assert caught.value.status == 401
    assert str(caught.value) == (
        f"HTTP 401 Unauthorized at http://127.0.0.1:{elsewhere.port}, where a redirect led:"
        " the feed's credentials are only sent to the origin of its configured URL"
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl tool."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(tls_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[FeedServer]:
    """An https FeedServer on 127.0.0.1 whose certificate the Fetcher trusts."""
    cert, key = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=cert)
    monkeypatch.setattr(aggregator.fetch, "_ssl_context", lambda: client_context)
    with FeedServer(tls=server_context) as server:
        yield server


def test_credentials_follow_http_up_to_https_on_the_same_host(
    feed_server: FeedServer, tls_server: FeedServer
) -> None:
    feed_server.redirect("/feed.xml", private_feed(tls_server), 301)
    result = fetched(with_userinfo(feed_server.url("/feed.xml")))
    assert result.body == RSS
    assert result.moved_to == tls_server.url("/private.xml")


def test_credentials_do_not_follow_https_down_to_http(
    feed_server: FeedServer, tls_server: FeedServer
) -> None:
    tls_server.redirect("/feed.xml", feed_server.url("/plain.xml"), 302)
    tls_server.require_auth("/feed.xml", USERNAME, PASSWORD)
    feed_server.set("/plain.xml", RSS)
    assert fetched(with_userinfo(tls_server.url("/feed.xml"))).body == RSS
    assert tls_server.requests_to("/feed.xml")[0].headers["authorization"].startswith("Basic ")
    assert "authorization" not in feed_server.requests_to("/plain.xml")[0].headers


def test_401_without_credentials_says_to_add_auth(feed_server: FeedServer) -> None:
    with pytest.raises(HTTPStatusError) as caught:
        fetch(private_feed(feed_server))
    assert caught.value.status == 401
    assert str(caught.value) == (
        "HTTP 401 Unauthorized: the server wants credentials (add auth: to this feed)"
    )


def test_401_with_wrong_credentials_says_they_were_refused(feed_server: FeedServer) -> None:
    url = with_userinfo(private_feed(feed_server), USERNAME, "wrong")
    with pytest.raises(HTTPStatusError) as caught:
        fetch(url)
    assert str(caught.value) == "credentials refused (HTTP 401)"


def test_403_says_whether_credentials_were_sent(feed_server: FeedServer) -> None:
    feed_server.respond("/forbidden.xml", 403, b"no")
    with pytest.raises(HTTPStatusError) as without:
        fetch(feed_server.url("/forbidden.xml"))
    assert str(without.value) == (
        "HTTP 403 Forbidden: access denied (if the feed is private, add auth: to this feed)"
    )
    with pytest.raises(HTTPStatusError) as sent:
        fetch(with_userinfo(feed_server.url("/forbidden.xml")))
    assert str(sent.value) == "credentials refused (HTTP 403)"


def test_a_redirect_loop_message_shows_no_credentials(hostile_server: HostileServer) -> None:
    with pytest.raises(TooManyRedirects) as caught:
        fetch(with_userinfo(hostile_server.url("/loop/a")))
    assert str(caught.value) == f"redirect loop (back to {hostile_server.url('/loop/a')})"


@pytest.mark.parametrize(
    ("location", "message"),
    [
        (
            "ftp://admin:hunter2@files.example/feed.xml?token=abc123&page=2",
            "redirect to unsupported URL 'ftp://***@files.example/feed.xml?token=***&page=2'",
        ),
        ("http://admin:hunter2@[::1/feed.xml", "invalid URL 'http://***@[::1/feed.xml'"),
    ],
)
def test_urls_quoted_in_messages_show_no_credentials(
    feed_server: FeedServer, location: str, message: str
) -> None:
    feed_server.redirect("/a.xml", location, 302)
    with pytest.raises(FetchError) as caught:
        fetch(with_userinfo(feed_server.url("/a.xml")))
    assert str(caught.value) == message
    assert_no_credential_in(str(caught.value))


def test_credentials_never_show_their_password() -> None:
    credentials = Credentials("reader", "hunter2")
    for text in (repr(credentials), str(credentials), f"{credentials}", repr([credentials])):
        assert "hunter2" not in text
        assert "reader" in text
