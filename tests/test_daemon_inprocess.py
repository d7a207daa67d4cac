"""The daemon's signal handling, in process: SIGHUP reloads, SIGTERM drains and returns 0.

The end-to-end tests (test_daemon.py) run the real daemon as a process; this one runs
`Daemon.run` on this process's own event loop and signals, so a failure points at the
handler rather than at a subprocess's log.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from aggregator.daemon import Daemon
from aggregator.pipeline import run_loop
from tests.feedserver import FeedServer
from tests.test_daemon import free_port, make_story, request, rss, write_config

TOPIC = "  all:\n    title: {title}\n"


async def wait_for(condition: object, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def one_feed_config(server: FeedServer, config_path: Path, port: int, interval: str) -> None:
    """feeds.yaml with one feed, /a.rss (story "a"), in the topic "all"."""
    server.set("/a.rss", rss("A", [make_story("a")]))
    topics = TOPIC.format(title="All")
    write_config(config_path, port, [server.url("/a.rss")], interval=interval, topics=topics)


def run_driven(daemon: Daemon, drive: Callable[[], Awaitable[None]]) -> int:
    """Run `daemon` in this process while `drive` acts on it; stopped when `drive` ends
    (a failed check must not leave it running). Returns its exit code; the signal
    handlers it installed are put back."""

    async def drive_then_stop() -> None:
        try:
            await drive()
        finally:
            daemon.stop.set()

    async def main() -> int:
        driver = asyncio.create_task(drive_then_stop())
        code = await daemon.run()
        await driver
        return code

    previous = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    try:
        return run_loop(main())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_sighup_reloads_and_sigterm_stops_with_exit_0(tmp_path: Path) -> None:
    config_path = tmp_path / "feeds.yaml"
    port = free_port()
    with FeedServer() as server:
        server.set("/a.rss", rss("A", [make_story("a")]))
        feed = server.url("/a.rss")

        def configure(title: str) -> None:
            write_config(config_path, port, [feed], interval="1h", topics=TOPIC.format(title=title))

        configure("First")
        daemon = Daemon(config_path)
        seen: dict[str, object] = {}

        async def drive() -> None:
            await wait_for(lambda: daemon.config is not None and daemon.health.last_poll)
            assert daemon.config is not None
            seen["before"] = daemon.config.topics[0].title
            configure("Second")
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(
                lambda: daemon.config is not None and daemon.config.topics[0].title == "Second"
            )
            seen["served"] = daemon.publisher.outputs.get("all.atom") is not None
            os.kill(os.getpid(), signal.SIGTERM)

        code = run_driven(daemon, drive)

    assert code == 0
    assert seen == {"before": "First", "served": True}
    assert daemon.poller is None  # closed: store, fetcher and workers
    assert b"Second" in (tmp_path / "public" / "all.atom").read_bytes()


# --- per-feed metrics ---------------------------------------------------------------------


def feed_series(body: bytes) -> dict[str, dict[tuple[str, ...], float]]:
    """/metrics' per-feed samples: sample name → (feed[, kind]) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if "feed" in sample.labels and not sample.name.endswith("_bucket"):
                kind = (sample.labels["kind"],) if "kind" in sample.labels else ()
                series.setdefault(sample.name, {})[(sample.labels["feed"], *kind)] = sample.value
    return series


def test_per_feed_metrics_follow_the_configured_feeds(tmp_path: Path) -> None:
    """Each configured feed gets its series once polled, labelled by its name or its URL
    with credentials hidden; a feed dropped from the config on reload takes its series
    with it."""
    config_path = tmp_path / "feeds.yaml"
    port = free_port()
    with FeedServer() as server:
        server.set("/a.rss", rss("A", [make_story("a1"), make_story("a2")]))
        server.set("/b.rss", rss("B", [make_story("b1")]))
        server.require_auth("/b.rss", "reader", "hunter2")
        alpha, missing = server.url("/a.rss"), server.url("/missing.rss")
        private = (
            server.url("/b.rss").replace("http://", "http://reader:hunter2@") + "?token=s3cret"
        )
        shown = server.url("/b.rss").replace("http://", "http://***@") + "?token=***"

        def configure(*feeds: tuple[str, str | None]) -> None:
            lines = [
                "settings:",
                "  database: agg.db",
                "  output_dir: public",
                f"  listen: 127.0.0.1:{port}",
                "  interval: 1h",
                "feeds:",
            ]
            for url, name in feeds:
                lines += [f"  - url: {url}"] + ([f"    name: {name}"] if name else [])
            config_path.write_text("\n".join(lines) + "\n")

        configure((alpha, "Alpha"), (missing, "Missing"), (private, None))
        daemon = Daemon(config_path)
        seen: dict[str, bytes] = {}

        async def metrics() -> bytes:
            return (await asyncio.to_thread(request, port, "/metrics")).body

        def feeds_polled() -> int:
            [family] = daemon.health.metrics.feed_fetch_seconds.collect()
            return sum(sample.name.endswith("_count") for sample in family.samples)

        async def drive() -> None:
            await wait_for(lambda: feeds_polled() == 3)
            seen["before"] = await metrics()
            configure((missing, "Missing"), (private, None))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(lambda: daemon.config is not None and len(daemon.config.feeds) == 2)
            seen["after"] = await metrics()

        assert run_driven(daemon, drive) == 0

    before = feed_series(seen["before"])
    assert set(before["aggregator_feed_fetch_duration_seconds_count"]) == {
        ("Alpha",),
        ("Missing",),
        (shown,),
    }
    assert before["aggregator_feed_items_total"][("Alpha", "new")] == 2
    assert before["aggregator_feed_items_total"][(shown, "new")] == 1
    assert before["aggregator_feed_errors_total"] == {("Missing", "http_404"): 1}
    assert set(before["aggregator_feed_last_success_timestamp_seconds"]) == {("Alpha",), (shown,)}
    for body in seen.values():
        assert b"hunter2" not in body and b"s3cret" not in body
        # the aggregate series stay
        assert b"aggregator_polls_total{" in body and b"aggregator_feeds " in body

    after = feed_series(seen["after"])
    assert b'feed="Alpha"' not in seen["after"]
    assert set(after["aggregator_feed_fetch_duration_seconds_count"]) == {("Missing",), (shown,)}
    assert after["aggregator_feed_errors_total"] == {("Missing", "http_404"): 1}


def test_feed_labels_are_names_else_urls_without_credentials_and_unique() -> None:
    from aggregator.daemon import feed_labels
    from aggregator.model import FeedSource

    feeds = [
        FeedSource(url="https://a.example/feed", name="Alpha"),
        FeedSource(url="https://u:pw@b.example/feed?token=one"),
        FeedSource(url="https://u:pw@b.example/feed?token=two"),
    ]
    assert feed_labels(feeds) == {
        "https://a.example/feed": "Alpha",
        "https://u:pw@b.example/feed?token=one": "https://***@b.example/feed?token=***",
        "https://u:pw@b.example/feed?token=two": "https://***@b.example/feed?token=*** (2)",
    }


def test_metrics_series_only_for_configured_feeds_and_gone_with_a_rename() -> None:
    from datetime import UTC, datetime

    from aggregator.daemon import Metrics
    from aggregator.errors import FetchTimeout
    from aggregator.model import FeedSource, FeedState, PollResult

    url = "https://a.example/feed"
    fetched = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    metrics = Metrics()
    stored = {url: FeedState(url=url, fetch_url=url, last_fetched=fetched, last_status=200)}
    metrics.configure_feeds([FeedSource(url=url, name="Alpha")], stored)
    # the last success survives a restart: taken from the stored state
    assert feed_series(metrics.render())["aggregator_feed_last_success_timestamp_seconds"] == {
        ("Alpha",): fetched.timestamp()
    }
    metrics.record(PollResult(url=url, error=FetchTimeout(url, "timed out after 1 s")))
    metrics.record(PollResult(url="https://not-configured.example/", new=3, duration=1.0))
    series = feed_series(metrics.render())
    assert series["aggregator_feed_errors_total"] == {("Alpha", "timeout"): 1}
    assert {key[0] for values in series.values() for key in values} == {"Alpha"}

    metrics.configure_feeds([FeedSource(url=url, name="Renamed")], stored)
    body = metrics.render()
    assert b'feed="Alpha"' not in body
    assert set(feed_series(body)["aggregator_feed_last_success_timestamp_seconds"]) == {
        ("Renamed",)
    }


def test_a_rename_polled_just_before_the_stop_reaches_the_opml(tmp_path: Path) -> None:
    """A poll that renames a feed in no topic asks for the index and the OPML, with no
    topic to render. When the stop comes before that render, the stop does it."""
    config_path = tmp_path / "feeds.yaml"
    opml = tmp_path / "public" / "feeds.opml"
    port = free_port()
    with FeedServer() as server:
        server.set("/a.rss", rss("Old name", [make_story("a")]))
        feed = server.url("/a.rss")
        # the topic takes the other feed only
        server.set("/b.rss", rss("B", [make_story("b")]))
        topics = "  news:\n    title: News\n    feeds: [news]\n"
        write_config(config_path, port, [feed], interval="1s", topics=topics)
        with config_path.open("a") as config:
            config.write(f"  - url: {server.url('/b.rss')}\n    tags: [news]\n")
        daemon = Daemon(config_path)

        async def drive() -> None:
            await wait_for(lambda: opml.exists() and "Old name" in opml.read_text())
            await wait_for(lambda: not daemon.publisher.dirty and not daemon.in_flight)
            server.set("/a.rss", rss("New name", [make_story("a")]))
            polls = len(server.requests_to("/a.rss"))
            await wait_for(lambda: len(server.requests_to("/a.rss")) > polls)
            # stopped now, before the render it asks for (RENDER_DELAY); the stop waits
            # for the poll in flight, then renders what is owed

        assert run_driven(daemon, drive) == 0

    assert 'text="New name"' in opml.read_text(encoding="utf-8")


def test_a_render_running_at_the_stop_is_waited_for_not_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """APScheduler's shutdown cancels the jobs it runs: a render cut off that way logged
    a CancelledError traceback. The stop waits for it as for a poll."""
    import threading
    import time

    from aggregator import publish

    config_path = tmp_path / "feeds.yaml"
    atom = tmp_path / "public" / "all.atom"
    port = free_port()
    changed, rendering = threading.Event(), threading.Event()
    original = publish.index_and_publish

    def slow_render(*args: object, **kwargs: object) -> object:
        if changed.is_set():
            rendering.set()
            time.sleep(1.5)  # on the store's thread, while the stop comes
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(publish, "index_and_publish", slow_render)
    with FeedServer() as server:
        one_feed_config(server, config_path, port, "1s")
        daemon = Daemon(config_path)

        async def drive() -> None:
            await wait_for(lambda: atom.exists() and b"Story a" in atom.read_bytes())
            server.set("/a.rss", rss("A", [make_story("b"), make_story("a")]))
            changed.set()
            await wait_for(rendering.is_set)  # the render of the new story has begun

        assert run_driven(daemon, drive) == 0

    assert "raised an exception" not in caplog.text and "Traceback" not in caplog.text
    assert b"Story b" in atom.read_bytes()


def test_a_publish_that_fails_is_reported_in_healthz_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output_dir that cannot be written (here a file stands where its parent should
    be; root writes through chmod) fails every render: /healthz says so, and once the
    cause is gone the render is tried again without waiting for a poll to change a topic."""
    import json

    import aggregator.daemon as daemon_module

    monkeypatch.setattr(daemon_module, "PUBLISH_RETRY", 0.5)
    config_path = tmp_path / "feeds.yaml"
    blocker = tmp_path / "site"
    blocker.write_text("a file where output_dir's parent should be")
    port = free_port()
    seen: dict[str, object] = {}
    with FeedServer() as server:
        one_feed_config(server, config_path, port, "1h")
        text = config_path.read_text().replace("output_dir: public", "output_dir: site/public")
        config_path.write_text(text)
        daemon = Daemon(config_path)

        def health() -> dict[str, object]:
            reply = request(port, "/healthz")
            return dict(json.loads(reply.body))

        async def drive() -> None:
            await wait_for(lambda: daemon.health.publish_problem is not None)
            seen["failing"] = await asyncio.to_thread(health)
            blocker.unlink()
            await wait_for(lambda: (tmp_path / "site" / "public" / "all.atom").exists())
            await wait_for(lambda: daemon.health.publish_problem is None)
            seen["recovered"] = await asyncio.to_thread(health)

        assert run_driven(daemon, drive) == 0

    failing, recovered = seen["failing"], seen["recovered"]
    assert isinstance(failing, dict) and isinstance(recovered, dict)
    assert failing["status"] == "degraded" and failing["publishing"] != "ok"
    assert "site" in str(failing["publishing"])
    assert recovered["status"] == "ok" and recovered["publishing"] == "ok"


def test_a_write_lock_held_elsewhere_shows_in_healthz_without_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's watchdog pings probe the database; run without it (by hand, in a
    container), /healthz must still say "busy" while another process holds the write
    lock and no poll comes due, and "ok" once it is let go."""
    import sqlite3

    import aggregator.daemon as daemon_module

    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.setattr(daemon_module, "DATABASE_PROBE_SECONDS", 0.5)
    # a write left waiting on the lock would also say "busy", after this long: the probe
    # must say it first
    monkeypatch.setattr(daemon_module, "STALLED_SECONDS", 60.0)
    config_path = tmp_path / "feeds.yaml"
    port = free_port()
    states: list[str] = []
    with FeedServer() as server:
        one_feed_config(server, config_path, port, "1h")
        daemon = Daemon(config_path)

        async def drive() -> None:
            def idle() -> bool:
                poller = daemon.poller
                return (
                    daemon.health.last_poll is not None
                    and daemon.publisher.renders >= 1
                    and not daemon.publisher.owed
                    and daemon.scheduler.get_job("render") is None
                    and poller is not None
                    and poller.db.stalled_for() == 0
                )

            await wait_for(idle)
            await asyncio.sleep(0.5)
            await wait_for(idle)
            # nothing more for the store to do (no poll due for an hour): only a probe can
            # find the lock
            holder = sqlite3.connect(tmp_path / "agg.db", isolation_level=None)
            try:
                holder.execute("BEGIN EXCLUSIVE")
                await wait_for(lambda: daemon.health.database_state() == "busy")
                states.append(daemon.health.report()[1]["database"])  # type: ignore[arg-type]
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            await wait_for(lambda: daemon.health.database_state() == "ok")
            states.append(daemon.health.report()[1]["database"])  # type: ignore[arg-type]

        assert run_driven(daemon, drive) == 0
    assert states == ["busy", "ok"]
