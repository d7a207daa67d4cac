"""Per-feed settings, the adaptive interval and pruned-stays-pruned (issue 15, items 3, 5
and 6), against real loopback servers and the real command line."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.config import parse_config
from aggregator.errors import ConfigError
from aggregator.model import FeedSource, FeedState, PollResult, Settings
from aggregator.pipeline import Poller
from aggregator.store import Store
from aggregator.timeutil import utcnow
from tests.commands import aggregator
from tests.feedserver import FeedServer
from tests.test_daemon import Story, make_story, rss

SETTINGS = {"retention": timedelta(days=3650), "per_host_spacing": timedelta(0)}


def poll(settings: Settings, *sources: FeedSource) -> list[PollResult]:
    async def run() -> list[PollResult]:
        async with await Poller.open(settings, parsers=ThreadPoolExecutor(1)) as poller:
            return await poller.poll_round(list(sources))

    return asyncio.run(run())


def stored_titles(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {title for (title,) in conn.execute("SELECT title FROM items")}


# --- user_agent, headers ------------------------------------------------------------------


def test_headers_go_to_the_feeds_origin_only_the_user_agent_everywhere(tmp_path: Path) -> None:
    settings = Settings(database=tmp_path / "agg.db", **SETTINGS)  # type: ignore[arg-type]
    with FeedServer() as origin, FeedServer() as mirror:
        mirror.set("/feed.xml", rss("Mirror", [make_story("m")]))
        origin.redirect("/feed.xml", mirror.url("/feed.xml"), status=302)
        source = FeedSource(
            url=origin.url("/feed.xml"),
            user_agent="TopicBot/2",
            headers=(("X-Api-Key", "k3y"), ("Cookie", "session=abc")),
        )
        (result,) = poll(settings, source)
        assert result.error is None
        (first,) = origin.requests
        (redirected,) = mirror.requests
    assert first.headers["x-api-key"] == "k3y" and first.headers["cookie"] == "session=abc"
    assert "x-api-key" not in redirected.headers and "cookie" not in redirected.headers
    assert first.headers["user-agent"] == redirected.headers["user-agent"] == "TopicBot/2"
    assert "k3y" not in repr(source)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("    headers: {Host: evil.example}\n", "Host is set by the aggregator itself"),
        ("    headers: {Authorization: Bearer s3cret}\n", "use auth: or userinfo"),
        ('    headers: {"X Key": s3cret}\n', "not an HTTP header name"),
        ('    headers: {X-Key: "s3cret\\r\\nX-Other: 1"}\n', "one non-empty line"),
        ("    headers: [X-Key]\n", "expected a mapping of header names"),
        ("    user_agent: ''\n", "must not be empty"),
        ("    max_items_per_round: 0\n", "must be at least 1"),
    ],
)
def test_bad_feed_settings_name_their_line_and_never_echo_a_value(
    tmp_path: Path, entry: str, message: str
) -> None:
    text = "feeds:\n  - url: https://a.example/feed\n" + entry
    with pytest.raises(ConfigError) as raised:
        parse_config(text, tmp_path / "feeds.yaml")
    shown = str(raised.value)
    assert message in shown
    assert "feeds.yaml:3:" in shown
    assert "s3cret" not in shown


def test_politeness_settings_are_validated(tmp_path: Path) -> None:
    def load(settings: str) -> Settings:
        return parse_config(
            f"settings:\n{settings}feeds:\n  - url: https://a.example/f\n", tmp_path / "f.yaml"
        ).settings

    assert load("  per_host_spacing: 0\n").per_host_spacing == timedelta(0)
    assert load("  per_host_spacing: 250ms\n").per_host_spacing == timedelta(milliseconds=250)
    assert load("  per_host_spacing: 1.5s\n").per_host_spacing == timedelta(seconds=1.5)
    assert load("  per_host_concurrency: 2\n").fetch_limits().max_per_host == 2
    for bad, message in [
        ("  per_host_spacing: fast\n", "expected 0 or a duration such as 300ms"),
        ("  per_host_spacing: 5m\n", "expected 0 or a duration such as 300ms"),
        ("  per_host_spacing: 90s\n", "at most 60s"),
        ("  per_host_concurrency: 0\n", "at least 1"),
        ("  min_interval: 2h\n  max_interval: 1h\n", "f.yaml:3: settings.max_interval: min"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load(bad)


# --- max_items_per_round ------------------------------------------------------------------


def test_max_items_per_round_keeps_the_newest_and_never_the_rest(tmp_path: Path) -> None:
    """A feed with a long backlog gives its newest entries; the others are left out for
    good, not trickled in by later polls."""
    settings = Settings(database=tmp_path / "agg.db", **SETTINGS)  # type: ignore[arg-type]
    backlog = [make_story(f"old{n}", age=timedelta(hours=n + 1)) for n in range(10)]
    with FeedServer() as server:
        server.set("/feed.xml", rss("Prolific", backlog))
        source = FeedSource(url=server.url("/feed.xml"), max_items_per_round=3)
        (first,) = poll(settings, source)
        assert first.new == 3
        assert stored_titles(settings.database) == {s.title for s in backlog[:3]}
        fresh = make_story("fresh", age=timedelta(minutes=5))
        server.set("/feed.xml", rss("Prolific", [fresh, *backlog]))
        (second,) = poll(settings, source)
    assert second.new == 1
    assert stored_titles(settings.database) == {fresh.title} | {s.title for s in backlog[:3]}


# --- the adaptive interval ------------------------------------------------------------------


def stories_every(gap: timedelta, count: int, since: timedelta = timedelta(0)) -> list[Story]:
    return [
        make_story(f"s{since}-{n}", age=since + gap * n + timedelta(minutes=1))
        for n in range(count)
    ]


def test_the_interval_follows_the_feeds_rhythm_as_it_changes(tmp_path: Path) -> None:
    """A quiet feed is polled at max_interval; once it publishes every hour, it is polled
    four times an hour (within min_interval); a feed with its own interval keeps it."""
    settings = Settings(database=tmp_path / "agg.db", **SETTINGS)  # type: ignore[arg-type]
    adaptive = dict(min_interval=timedelta(minutes=10), max_interval=timedelta(hours=12))
    with FeedServer() as server:
        quiet = stories_every(timedelta(days=30), 3, since=timedelta(days=40))
        server.set("/feed.xml", rss("Rhythm", quiet))
        server.set("/fixed.xml", rss("Fixed", stories_every(timedelta(hours=1), 10)))
        source = FeedSource(url=server.url("/feed.xml"), **adaptive)  # type: ignore[arg-type]
        fixed = FeedSource(url=server.url("/fixed.xml"), interval=timedelta(minutes=45))
        before = utcnow()
        quiet_result, fixed_result = poll(settings, source, fixed)
        assert_due_in(quiet_result.state, before, timedelta(hours=12))
        assert_due_in(fixed_result.state, before, timedelta(minutes=45))

        busy = stories_every(timedelta(hours=1), 12)
        server.set("/feed.xml", rss("Rhythm", busy + quiet))
        before = utcnow()
        (busy_result,) = poll(settings, source)
    state = busy_result.state
    assert state is not None and state.entries_per_day is not None
    assert 18 <= state.entries_per_day <= 30  # twelve in the last twelve hours
    # one entry an hour, four polls per expected entry: about every 15 minutes
    assert_due_in(state, before, timedelta(minutes=15), slack=0.25)


def assert_due_in(
    state: FeedState | None, since: datetime, interval: timedelta, slack: float = 0.11
) -> None:
    assert state is not None and state.next_due is not None
    due_in = state.next_due - since
    assert interval * (1 - slack) <= due_in <= interval * (1 + slack) + timedelta(seconds=2)


# --- pruned stays pruned --------------------------------------------------------------------


def undated_rss(titles: list[str], note: str = "") -> bytes:
    items = "".join(
        f"<item><title>{t}</title><link>https://u.example/{t.replace(' ', '-')}</link>"
        f"<description>{t}: words of its own, {t}.{note}</description></item>"
        for t in titles
    )
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Undated</title>'
        f"<link>https://u.example/</link>{items}</channel></rss>"
    ).encode()


@pytest.mark.parametrize("edited", [False, True], ids=["as-it-was", "edited-since"])
def test_an_undated_item_pruned_does_not_come_back(tmp_path: Path, edited: bool) -> None:
    """Whether the feed lists the entry as it was (partial parsing passes it by) or edited
    (parsed again), a pruned entry is not stored again."""
    settings = Settings(database=tmp_path / "agg.db", **SETTINGS)  # type: ignore[arg-type]
    with FeedServer() as server:
        server.set("/feed.xml", undated_rss(["Evergreen page"]))
        source = FeedSource(url=server.url("/feed.xml"))
        poll(settings, source)
        assert stored_titles(settings.database) == {"Evergreen page"}
        # the retention reaches it (its date is when it was first seen)
        with Store.open(settings.database) as store:
            assert store.prune(utcnow() + timedelta(hours=1)) == 1
        # the feed still lists it, beside a new entry: the body is parsed again
        note = " Updated." if edited else ""
        server.set("/feed.xml", undated_rss(["Evergreen page", "New post"], note))
        (result,) = poll(settings, source)
    assert result.new == 1
    assert stored_titles(settings.database) == {"New post"}


def test_prune_lists_what_it_removes_and_a_lowered_retention_stays_applied(
    tmp_path: Path,
) -> None:
    old = [make_story(f"week{n}", age=timedelta(days=7 + n)) for n in range(3)]
    recent = make_story("today", age=timedelta(hours=2))
    with FeedServer() as server:
        server.set("/feed.xml", rss("Outlet", [recent, *old]))
        config = tmp_path / "feeds.yaml"
        settings = '  database: agg.db\n  output_dir: public\n  listen: ""\n'
        feed = f"feeds:\n  - url: {server.url('/feed.xml')}\n    name: Outlet\n"
        config.write_text(f"settings:\n  per_host_spacing: 0\n{settings}{feed}")
        assert aggregator(config, "poll", "--once").returncode == 0
        assert len(stored_titles(tmp_path / "agg.db")) == 4

        config.write_text(f"settings:\n  per_host_spacing: 0\n  retention: 3d\n{settings}{feed}")
        dry = aggregator(config, "prune", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would prune 3 items published before" in dry.stdout
        assert all(s.title in dry.stdout for s in old) and "(Outlet)" in dry.stdout
        assert len(stored_titles(tmp_path / "agg.db")) == 4

        pruned = aggregator(config, "prune")
        assert pruned.returncode == 0, pruned.stderr
        assert "pruned 3 items" in pruned.stdout
        assert stored_titles(tmp_path / "agg.db") == {recent.title}
        atom = (tmp_path / "public" / "all.atom").read_text()
        assert recent.title in atom and old[0].title not in atom

        # the feed changes and still lists them: they stay pruned
        server.set("/feed.xml", rss("Outlet", [make_story("later"), recent, *old]))
        assert aggregator(config, "poll", "--once").returncode == 0
    assert stored_titles(tmp_path / "agg.db") == {recent.title, make_story("later").title}


def test_tombstones_are_bounded(tmp_path: Path) -> None:
    """A tombstone outlives its item by TOMBSTONE_LIFE times the retention, then goes."""
    with Store.open(tmp_path / "agg.db") as store:
        now = datetime(2026, 12, 6, tzinfo=UTC)
        store.db.execute(
            "INSERT INTO pruned VALUES ('https://a.example/f', 'k1', '2020-01-01T00:00:00Z'),"
            " ('https://a.example/f', 'k2', '2026-11-01T00:00:00Z')"
        )
        store.prune(now - timedelta(days=30), now=now)
        left = {k for (k,) in store.db.execute("SELECT entry_key FROM pruned").fetchall()}
    assert left == {"k2"}
