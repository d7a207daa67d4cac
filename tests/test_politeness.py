"""Politeness per server, not per feed (issue 15, item 4), against real loopback servers:
at most `per_host_concurrency` requests in flight to one server, their starts at least
`per_host_spacing` apart, a Retry-After from one feed holding the server's other feeds,
and other servers' feeds never waiting behind a busy one."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from aggregator.fetch import server_key
from aggregator.model import FeedSource, PollResult, Settings
from aggregator.pipeline import Poller
from aggregator.store import Store
from tests.feedserver import FeedServer
from tests.test_daemon import make_story, rss

FEEDS_ON_ONE_HOST = 40


def settings_for(tmp_path: Path, **politeness: object) -> Settings:
    return replace(
        Settings(database=tmp_path / "agg.db", retention=timedelta(days=3650)),
        **politeness,  # type: ignore[arg-type]
    )


def section_feeds(server: FeedServer, count: int, prefix: str, delay: float) -> list[FeedSource]:
    """`count` feeds on one server, as a newspaper's section feeds."""
    sources = []
    for n in range(count):
        path = f"/{prefix}/{n}.xml"
        server.set(path, rss(f"{prefix}{n}", [make_story(f"{prefix}-{n}")]), delay=delay)
        sources.append(FeedSource(url=server.url(path), name=f"{prefix} {n}"))
    return sources


def poll_round(settings: Settings, sources: list[FeedSource]) -> dict[str, float]:
    """One round; when each feed's poll ended, in seconds after the round began."""
    ended: dict[str, float] = {}
    start = time.monotonic()

    def note(source: FeedSource, result: PollResult) -> None:
        assert result.error is None, result.error
        ended[source.url] = time.monotonic() - start

    async def run() -> None:
        async with await Poller.open(settings, parsers=ThreadPoolExecutor(2)) as poller:
            await poller.poll_round(sources, on_result=note)

    asyncio.run(run())
    return ended


def test_forty_feeds_on_one_host_get_its_concurrency_and_spacing_and_no_more(
    tmp_path: Path,
) -> None:
    concurrency, spacing, answer_time = 3, 0.12, 0.5
    settings = settings_for(
        tmp_path,
        per_host_concurrency=concurrency,
        per_host_spacing=timedelta(seconds=spacing),
    )
    with FeedServer() as busy, FeedServer() as other:
        newspaper = section_feeds(busy, FEEDS_ON_ONE_HOST, "section", answer_time)
        blog = section_feeds(other, 5, "blog", 0.0)
        ended = poll_round(settings, newspaper + blog)
        starts = sorted(r.at for r in busy.requests)
        peak = busy.max_concurrent
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    print(
        f"\n{FEEDS_ON_ONE_HOST} feeds on one host, per_host_concurrency={concurrency},"
        f" per_host_spacing={spacing}s, answers taking {answer_time}s:"
        f" {len(starts)} requests, at most {peak} at once, smallest gap between starts"
        f" {min(gaps) * 1000:.0f} ms, median {sorted(gaps)[len(gaps) // 2] * 1000:.0f} ms"
    )
    assert len(starts) == FEEDS_ON_ONE_HOST
    # answers take longer than concurrency × spacing: the concurrency bound is reached,
    # and never passed
    assert peak == concurrency
    # the starts are spaced: the typical gap is the spacing, and none is much shorter (the
    # server's handler threads note the time a little late or early, more so on a loaded
    # machine: without spacing, starts would be a few ms apart)
    assert sorted(gaps)[len(gaps) // 2] >= spacing - 0.01
    assert min(gaps) >= spacing / 2
    # the other server's feeds did not queue behind the newspaper's forty
    newspaper_done = max(ended[s.url] for s in newspaper)
    assert newspaper_done >= FEEDS_ON_ONE_HOST * answer_time / concurrency
    assert max(ended[s.url] for s in blog) < newspaper_done / 3


def test_spacing_zero_turns_spacing_off(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, per_host_concurrency=8, per_host_spacing=timedelta(0))
    with FeedServer() as server:
        sources = section_feeds(server, 16, "s", 0.3)
        poll_round(settings, sources)
        assert server.max_concurrent == 8


def test_the_default_spacing_applies_to_loopback_too(tmp_path: Path) -> None:
    """The default is not weakened for local servers: tests turn it off explicitly."""
    assert Settings().per_host_spacing == timedelta(milliseconds=300)
    settings = replace(Settings(database=tmp_path / "agg.db", retention=timedelta(days=3650)))
    with FeedServer() as server:
        sources = section_feeds(server, 4, "s", 0.0)
        poll_round(settings, sources)
        starts = sorted(r.at for r in server.requests)
    assert starts[-1] - starts[0] >= 3 * 0.3 - 0.01


def test_a_retry_after_from_one_feed_holds_its_hosts_other_feeds(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, per_host_spacing=timedelta(0))
    with FeedServer() as server, FeedServer() as elsewhere:
        server.respond("/busy.xml", 429, b"slow down\n", headers={"Retry-After": "120"})
        siblings = section_feeds(server, 5, "sibling", 0.0)
        unrelated = section_feeds(elsewhere, 2, "unrelated", 0.0)
        busy = FeedSource(url=server.url("/busy.xml"), name="busy")

        async def run() -> tuple[PollResult, list[PollResult], list[PollResult]]:
            async with await Poller.open(settings, parsers=ThreadPoolExecutor(2)) as poller:
                first = await poller.poll(busy)
                held = await poller.poll_round(siblings + unrelated)
                forced = await poller.poll_round(siblings, force=True)
                return first, held, forced

        first, held, forced = asyncio.run(run())
        sibling_requests = [r for r in server.requests if "/sibling/" in r.path]
        unrelated_requests = elsewhere.requests
    assert first.error is not None and first.status == 429
    held_siblings, held_unrelated = held[: len(siblings)], held[len(siblings) :]
    # not one request to the held server; each sibling says why and is due after the hold
    assert len(sibling_requests) == len(siblings)  # only the forced round's
    for result in held_siblings:
        assert result.skipped is not None and "its server asked to wait" in result.skipped
        assert result.state is not None and result.state.retry_after is not None
        assert result.state.next_due is not None
        assert result.state.next_due >= result.state.retry_after
    # another server's feeds are fetched as usual
    assert all(r.error is None and r.skipped is None for r in held_unrelated)
    assert len(unrelated_requests) == len(unrelated)
    assert all(r.skipped is None and r.error is None for r in forced)


def test_a_hold_is_remembered_by_the_next_run(tmp_path: Path) -> None:
    """`poll --once` run again (a new process) still leaves the held server alone."""
    settings = settings_for(tmp_path, per_host_spacing=timedelta(0))
    with FeedServer() as server:
        server.respond("/busy.xml", 503, b"", headers={"Retry-After": "3600"})
        siblings = section_feeds(server, 3, "sibling", 0.0)
        busy = FeedSource(url=server.url("/busy.xml"), name="busy")

        async def first_run() -> None:
            async with await Poller.open(settings, parsers=ThreadPoolExecutor(1)) as poller:
                await poller.poll(busy)

        async def second_run() -> list[PollResult]:
            async with await Poller.open(settings, parsers=ThreadPoolExecutor(1)) as poller:
                return await poller.poll_round(siblings)

        asyncio.run(first_run())
        results = asyncio.run(second_run())
        assert not [r for r in server.requests if "/sibling/" in r.path]
    assert all(r.skipped and "its server asked to wait" in r.skipped for r in results)
    with Store.open(settings.database) as store:
        states = store.feed_states()
    assert all(states[s.url].retry_after is not None for s in siblings)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://News.Example/a.xml", "news.example:443"),
        ("http://news.example/b.xml", "news.example:80"),
        ("http://news.example:8080/c.xml", "news.example:8080"),
        ("http://[::1]:8080/c.xml", "::1:8080"),
    ],
)
def test_politeness_is_owed_per_server(url: str, key: str) -> None:
    assert server_key(url) == key
