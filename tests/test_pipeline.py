"""The poller: one route for `poll --once` and the daemon, rounds as values.

In process against a real loopback feed server, and (marked slow) the same input through
`aggregator poll --once` and through `aggregator run`, compared item by item.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from aggregator.model import FeedSource, PollResult, Settings
from aggregator.pipeline import Poller
from tests.commands import aggregator
from tests.feedserver import FeedServer
from tests.test_daemon import (
    DaemonProcess,
    Story,
    free_port,
    launch,  # noqa: F401  (a fixture)
    make_story,
    rss,
    wait_until,
    write_config,
)

SETTINGS = {"retention": timedelta(days=3650), "per_host_spacing": timedelta(0)}


def lead_titles(db_path: Path) -> dict[str, str]:
    """Stored story title → the feed URL that leads it."""
    db = sqlite3.connect(db_path)
    try:
        return dict(db.execute("SELECT title, first_feed_url FROM items").fetchall())
    finally:
        db.close()


def stories_of(db_path: Path) -> set[tuple[str, str, str, frozenset[tuple[str, str]]]]:
    """Each stored story as (title, link, lead feed, its copies as (feed, entry key)), ids
    and times aside: what a reader of the published feeds sees, and what was merged."""
    db = sqlite3.connect(db_path)
    try:
        copies: dict[str, set[tuple[str, str]]] = {}
        for item_id, feed_url, key in db.execute(
            "SELECT item_id, feed_url, entry_key FROM entries"
        ):
            copies.setdefault(item_id, set()).add((feed_url, key))
        return {
            (title, link, lead, frozenset(copies[item_id]))
            for item_id, title, link, lead in db.execute(
                "SELECT id, title, link, first_feed_url FROM items"
            )
        }
    finally:
        db.close()


def syndicated_pair(
    server: FeedServer, *, original_delay: float, copy_delay: float
) -> tuple[FeedSource, FeedSource, str]:
    """An original (published 5 h ago) and a syndicated copy of it (same link, published
    1 h ago) on two feeds, each answering after its delay."""
    original = make_story("syndicated", link="https://origin.example/story", age=timedelta(hours=5))
    copy = Story(original.link, "Syndicated copy", original.text, make_story("x").published)
    server.set("/origin.rss", rss("Origin", [original]), delay=original_delay)
    server.set("/partner.rss", rss("Partner", [copy]), delay=copy_delay)
    return (
        FeedSource(url=server.url("/origin.rss")),
        FeedSource(url=server.url("/partner.rss")),
        original.title,
    )


@pytest.mark.parametrize("copy_first", [True, False])
@pytest.mark.parametrize("route", ["round", "daemon"])
def test_copies_polled_together_are_led_by_the_earliest_published_in_any_order(
    tmp_path: Path, route: str, copy_first: bool
) -> None:
    """Whichever server answers first, the original leads: through a round (`poll --once`)
    and through single polls that overlap in time (the daemon at start)."""
    with FeedServer() as server:
        origin, partner, title = syndicated_pair(
            server, original_delay=0.4 if copy_first else 0, copy_delay=0 if copy_first else 0.4
        )
        settings = Settings(database=tmp_path / "agg.db", **SETTINGS)  # type: ignore[arg-type]

        async def poll() -> None:
            async with await Poller.open(settings, parsers=ThreadPoolExecutor(2)) as poller:
                if route == "round":
                    await poller.poll_round([origin, partner])
                else:
                    await asyncio.gather(poller.poll(origin), poller.poll(partner))

        asyncio.run(poll())
    assert lead_titles(tmp_path / "agg.db") == {title: origin.url}


def test_a_copy_polled_in_a_later_round_does_not_take_the_lead(tmp_path: Path) -> None:
    """A story already published keeps its face: an earlier-dated copy found later only
    moves its published date."""
    with FeedServer() as server:
        origin, partner, _ = syndicated_pair(server, original_delay=0, copy_delay=0)
        settings = Settings(database=tmp_path / "agg.db", **SETTINGS)  # type: ignore[arg-type]

        async def poll() -> None:
            async with await Poller.open(settings, parsers=ThreadPoolExecutor(1)) as poller:
                await poller.poll(partner, round_id="first")
                await poller.poll(origin, round_id="second")

        asyncio.run(poll())
    assert lead_titles(tmp_path / "agg.db") == {"Syndicated copy": partner.url}


@pytest.mark.slow
def test_poll_once_and_the_daemon_store_the_same_items_and_merges(
    tmp_path: Path,
    launch: Callable[..., DaemonProcess],  # noqa: F811
) -> None:
    """The same feeds through `aggregator poll --once` and through `aggregator run` give the
    same stories, led by the same outlets, with the same copies merged into each."""
    shared = make_story("wire", age=timedelta(hours=6))
    rewritten = make_story("rewritten")
    with FeedServer() as server:
        feeds: dict[str, Sequence[Story]] = {
            # the wire's story, syndicated under the same link by a partner polled first
            "partner": [
                Story(
                    shared.link, "Partner: " + shared.title, shared.text, make_story("p").published
                )
            ],
            # the daemon starts polls 10 ms apart: these start the wire's poll about a
            # second after its partner's, in the same round
            **{f"filler-{n}": [make_story(f"filler-{n}")] for n in range(100)},
            "wire": [shared, make_story("wire-own")],
            # the same text under another outlet's own URL, published earlier
            "scraper": [
                Story(
                    "https://scraper.example/copy",
                    rewritten.title,
                    "By Staff. " + rewritten.text,
                    shared.published,
                )
            ],
            "blog": [rewritten, make_story("blog-own")],
            "quiet": [make_story("quiet-own")],
        }
        delays = {"wire": 0.3, "scraper": 0.2, "quiet": 0.1}
        for name, stories in feeds.items():
            server.set(f"/{name}.rss", rss(name.capitalize(), stories), delay=delays.get(name, 0))
        urls = [server.url(f"/{name}.rss") for name in feeds]

        once_dir, daemon_dir = tmp_path / "once", tmp_path / "daemon"
        port = free_port()
        for directory in (once_dir, daemon_dir):
            directory.mkdir()
            write_config(
                directory / "feeds.yaml",
                port,
                urls,
                interval="1h",
                settings="  retention: 3650d",
            )
        done = aggregator(once_dir / "feeds.yaml", "poll", "--once")
        assert done.returncode == 0, done.stderr

        daemon = launch(daemon_dir / "feeds.yaml", port)
        daemon.wait_serving()
        wait_until(
            lambda: all(
                any(url in line and "next at" in line for line in daemon.log.splitlines())
                for url in urls
            ),
            30,
            "every feed polled once by the daemon",
        )
        assert daemon.stop()[0] == 0

    once, by_daemon = stories_of(once_dir / "agg.db"), stories_of(daemon_dir / "agg.db")
    assert once == by_daemon
    # and the input did hold merges: 107 entries, 105 stories, both led by the original
    assert sum(len(copies) for *_, copies in once) == 107 and len(once) == 105
    leads = {title: lead for title, _, lead, _ in once}
    assert leads[shared.title] == server.url("/wire.rss")
    assert leads[rewritten.title] == server.url("/scraper.rss")


def test_a_disabled_feed_is_not_fetched_and_its_items_stay_published(tmp_path: Path) -> None:
    """`enabled: false`: kept in the config, not polled (not even by poll --once --force),
    what it stored before still published."""
    from aggregator.config import parse_config
    from aggregator.publish import display_names, topic_items
    from aggregator.store import Store

    with FeedServer() as server:
        server.set("/a.rss", rss("A", [make_story("kept")]))
        url = server.url("/a.rss")
        settings = Settings(database=tmp_path / "agg.db", **SETTINGS)  # type: ignore[arg-type]

        async def poll(source: FeedSource) -> str | None:
            async with await Poller.open(settings, parsers=ThreadPoolExecutor(1)) as poller:
                [result] = await poller.poll_round([source], force=True)
            return result.skipped

        assert asyncio.run(poll(FeedSource(url=url))) is None
        assert "disabled" in (asyncio.run(poll(FeedSource(url=url, enabled=False))) or "")
        assert len(server.requests_to("/a.rss")) == 1  # the disabled poll fetched nothing

    config = parse_config(f"feeds:\n  - url: {url}\n    enabled: false\n", tmp_path / "f.yaml")
    assert config.feeds[0].enabled is False
    with Store.open(settings.database) as store:
        names = display_names(config, store.feed_states())
        [item] = topic_items(config, store, config.topics[0], names)
    assert item.title.startswith("Story kept")


def test_a_round_starts_polls_as_turns_free_and_returns_results_in_order(tmp_path: Path) -> None:
    """poll_round starts a feed's poll only when its server has a turn free and fewer than
    max_connections polls are under way (no task waits per feed), in the order of the
    config within each server, and returns the results in the order of the sources."""
    from aggregator.model import FeedState, FetchLimits, PollResult

    limits = FetchLimits(max_connections=5, max_per_host=2, per_host_spacing=0)
    settings = Settings(database=tmp_path / "agg.db")
    # 3 servers: a has 6 feeds, b 3, c 1, interleaved as a config might list them
    hosts = ["a", "a", "a", "b", "a", "c", "b", "a", "b", "a"]
    sources = [FeedSource(url=f"http://{h}.example/{i}") for i, h in enumerate(hosts)]
    in_flight: dict[str, int] = {}
    most: dict[str, int] = {}
    started: list[str] = []

    class Counting(Poller):
        async def poll(
            self,
            source: FeedSource,
            state: FeedState | None = None,
            *,
            force: bool = False,
            round_id: str | None = None,
        ) -> PollResult:
            host = source.url.split("/")[2]
            started.append(source.url)
            in_flight[host] = in_flight.get(host, 0) + 1
            total = sum(in_flight.values())
            most[host] = max(most.get(host, 0), in_flight[host])
            most["all"] = max(most.get("all", 0), total)
            await asyncio.sleep(0.01 if host == "a.example" else 0.002)
            in_flight[host] -= 1
            return PollResult(url=source.url)

    async def run() -> list[PollResult]:
        async with await Counting.open(settings, limits=limits) as poller:
            return await poller.poll_round(sources)

    results = asyncio.run(run())
    assert [r.url for r in results] == [s.url for s in sources]
    assert most["all"] <= 5 and most["a.example"] == 2 and most["b.example"] <= 2
    for host in ("a", "b"):
        mine = [u for u in started if f"//{host}." in u]
        assert mine == [s.url for s in sources if f"//{host}." in s.url]  # config order


def test_a_rounds_failed_polls_keep_their_messages_but_not_their_tracebacks(
    tmp_path: Path,
) -> None:
    """A round's results outlive its polls (`poll --once` keeps them all). A failure's
    traceback would keep every frame of its fetch alive with it: a round of 2,000 feeds
    whose servers all refused peaked at 107 MB in the main process, 66 MB without."""
    port = free_port()  # nothing listens there: every fetch is refused
    sources = [FeedSource(url=f"http://127.0.0.1:{port}/{n}.xml") for n in range(3)]
    settings = Settings(database=tmp_path / "agg.db", **SETTINGS)  # type: ignore[arg-type]

    async def poll() -> list[PollResult]:
        async with await Poller.open(settings, parsers=ThreadPoolExecutor(1)) as poller:
            return await poller.poll_round(sources)

    results = asyncio.run(poll())
    assert len(results) == 3
    for result in results:
        assert result.error is not None and "refused" in result.error.message
        chain: list[BaseException] = []
        error: BaseException | None = result.error
        while error is not None:
            chain.append(error)
            error = error.__cause__ or error.__context__
        assert len(chain) >= 2  # the transport's error is still there, as the cause
        assert [e.__traceback__ for e in chain] == [None] * len(chain)


def test_a_poll_or_a_push_that_only_renames_the_feed_changes_its_outputs(tmp_path: Path) -> None:
    """The outputs show a feed's name: a body whose only change is its title must get the
    feed's topics rendered again, whether it was polled or pushed (WebSub)."""
    story = make_story("s1")
    with FeedServer() as server:
        server.set("/a.rss", rss("Old name", [story]))
        source = FeedSource(url=server.url("/a.rss"))
        settings = Settings(database=tmp_path / "agg.db", **SETTINGS)  # type: ignore[arg-type]
        seen: dict[str, PollResult] = {}

        async def poll() -> None:
            async with await Poller.open(settings, parsers=ThreadPoolExecutor(1)) as poller:
                seen["first"] = await poller.poll(source)
                server.set("/a.rss", rss("Polled name", [story]))
                seen["polled"] = await poller.poll(source)
                body = rss("Pushed name", [story])
                seen["pushed"] = await poller.ingest_pushed(source, body, "application/rss+xml")
                seen["same"] = await poller.ingest_pushed(source, body, "application/rss+xml")

        asyncio.run(poll())
    assert seen["first"].new == 1
    for name, title in (("polled", "Polled name"), ("pushed", "Pushed name")):
        result = seen[name]
        assert not result.changed_items and result.state is not None
        assert result.state.title == title
        assert result.feed_changed and result.changed_outputs, name
    assert not seen["same"].changed_outputs
