"""The daemon (`aggregator run`): scheduler, HTTP server, reload, signals, sd_notify.

A thin shell around the pipeline. One asyncio loop holds APScheduler 3, the fetches and
uvicorn. Each feed has one date job at its next due time (kept in the database, so a
restart polls only what is due); after a poll the job is re-added at the next due time
the pipeline stored, with jitter. Polls that change items mark their topics dirty, and one
render job, scheduled once per burst, re-renders only those topics.

Signal handlers only set events; the main loop does the work (reload on SIGHUP, drain and
exit 0 on SIGTERM/SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from aggregator import __version__, httpserver, pipeline, publish, render, search, update
from aggregator.config import load_config
from aggregator.errors import Busy, ConfigError, PublishError, QueryError, StoreError, kind_of
from aggregator.logs import configure_logging
from aggregator.model import Config, FeedSource, FeedState, PollResult, Settings
from aggregator.notify import notify, watchdog_interval
from aggregator.paging import ArchivePage
from aggregator.pipeline import Poller
from aggregator.publish import Output, OutputCache, make_app
from aggregator.store import Store, StoreThread, lock_problem
from aggregator.timeutil import to_iso, utcnow
from aggregator.urls import redact_text
from aggregator.websub import Pinger, Subscriber

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("aggregator")
disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series are noise

#: in-flight polls get this long to finish on SIGTERM; with the final render and
#: SERVER_STOP_SECONDS the process is gone within 10 s (systemd's TimeoutStopSec is 20 s)
DRAIN_SECONDS = 7.5
#: open HTTP requests get this long to finish on SIGTERM
SERVER_STOP_SECONDS = 1.0
#: the last render at SIGTERM, and closing the database, get this long each
FINAL_RENDER_SECONDS = 0.5
CLOSE_SECONDS = 0.5
#: a poll that could not write the database is retried this soon (or at its interval)
STORE_RETRY = timedelta(minutes=1)
#: the store's thread stuck on one call this long (another process's lock) is "busy"
STALLED_SECONDS = 5.0
#: a burst of polls within this many seconds leads to one render
RENDER_DELAY = 1.0
#: opening the database takes longer than this (a migration or a re-index of a large
#: one, another process's lock): systemd is told every STARTING_EXTEND / 3 seconds that
#: the start goes on, so its start timeout (90 s by default) does not kill the daemon
#: and roll the migration back at every restart
STARTING_PATIENCE = 5.0
STARTING_EXTEND = 60.0
#: how often feeds.yaml is checked for changes (a change is read once it has settled
#: for one period, so an edit is applied 0.5–1 s after the save)
WATCH_SECONDS = 0.5
#: how often the database's write lock is probed when systemd's watchdog does not ask
DATABASE_PROBE_SECONDS = 15.0
#: seconds before a render that could not publish (a full disk, an unwritable output_dir)
#: is tried again
PUBLISH_RETRY = 60.0
#: feeds named in the one line that says which polls the stop cut off
CANCELLED_SHOWN = 5
#: archive pages kept as rendered between two renders (Publisher.archive_page)
ARCHIVE_PAGES_KEPT = 256
#: a search or an archive page not rendered yet (waiting for the store's thread included)
#: gets this long, then 503
SEARCH_SECONDS = 5.0
#: searches and archive pages being rendered at most; more are answered 503 at once (they
#: queue on the store's thread with the polls, which must not wait behind a crowd of
#: readers or crawlers)
SEARCH_CONCURRENCY = 2


#: buckets of the poll duration histograms, seconds
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


async def _tell_systemd_still_starting() -> None:
    """Once opening the database has taken STARTING_PATIENCE seconds, say so in the log and
    keep extending systemd's start timeout (EXTEND_TIMEOUT_USEC) until cancelled."""
    await asyncio.sleep(STARTING_PATIENCE)
    log.info("opening the database is taking long (a migration, or another process's lock)")
    while True:
        notify(f"EXTEND_TIMEOUT_USEC={int(STARTING_EXTEND * 1_000_000)}")
        notify("STATUS=opening the database")
        await asyncio.sleep(STARTING_EXTEND / 3)


class Metrics:
    """Prometheus metrics, in a registry of our own (no global state between tests).

    The aggregate series, and per-feed ones labelled `feed` by the feed's configured name,
    else its URL with credentials hidden. Their labels only ever come from the configured
    feeds (`configure_feeds`), and a feed dropped from the config takes its series with
    it, so the number of series stays bounded by the config."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter(
            "aggregator_polls", "Feed polls by result", ["result"], registry=self.registry
        )
        self.items = Counter(
            "aggregator_items", "Items stored, by kind", ["kind"], registry=self.registry
        )
        self.fetch_seconds = Histogram(
            "aggregator_poll_duration_seconds",
            "Time to poll one feed",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.failing = Gauge(
            "aggregator_feeds_failing", "Feeds whose last poll failed", registry=self.registry
        )
        self.feeds = Gauge("aggregator_feeds", "Configured feeds", registry=self.registry)
        self.config_loaded = Gauge(
            "aggregator_config_last_load_timestamp_seconds",
            "When the config was last loaded successfully",
            registry=self.registry,
        )
        self.config_valid = Gauge(
            "aggregator_config_valid",
            "1 if the config file on disk is valid",
            registry=self.registry,
        )
        self.last_poll = Gauge(
            "aggregator_last_poll_timestamp_seconds",
            "When a poll last finished",
            registry=self.registry,
        )
        # per feed
        self.feed_fetch_seconds = Histogram(
            "aggregator_feed_fetch_duration_seconds",
            "Time to poll the feed (fetch, parse, store)",
            ["feed"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.feed_items = Counter(
            "aggregator_feed_items",
            "Items the feed's polls stored, new or updated",
            ["feed", "kind"],
            registry=self.registry,
        )
        self.feed_errors = Counter(
            "aggregator_feed_errors",
            "The feed's failed polls, by kind of error (http_<status> for an HTTP error)",
            ["feed", "kind"],
            registry=self.registry,
        )
        self.feed_last_success = Gauge(
            "aggregator_feed_last_success_timestamp_seconds",
            "When a poll of the feed last succeeded",
            ["feed"],
            registry=self.registry,
        )
        #: configured feed URL → its `feed` label
        self.feed_labels: dict[str, str] = {}
        #: label → the error kinds it has series for (to remove them with the feed)
        self._error_kinds: dict[str, set[str]] = {}

    def configure_feeds(
        self, feeds: Sequence[FeedSource], states: Mapping[str, FeedState] | None = None
    ) -> None:
        """The configured feeds, at start and after each reload: the series of feeds no
        longer configured (or now named otherwise) are removed; a new feed's last success
        is taken from its stored state, so it survives a restart."""
        labels = feed_labels(feeds)
        kept = set(labels.values())
        for label in set(self.feed_labels.values()) - kept:
            self._remove_feed(label)
        known = set(self.feed_labels.values())
        for url, label in labels.items():
            state = (states or {}).get(url)
            if label in known or state is None or state.last_fetched is None:
                continue
            if not state.last_error:
                self.feed_last_success.labels(label).set(state.last_fetched.timestamp())
        self.feed_labels = labels

    def _remove_feed(self, label: str) -> None:
        for metric in (self.feed_fetch_seconds, self.feed_last_success):
            metric.remove(label)
        for kind in ("new", "updated"):
            self.feed_items.remove(label, kind)
        for kind in self._error_kinds.pop(label, set()):
            self.feed_errors.remove(label, kind)

    def record(self, result: PollResult) -> None:
        if result.skipped:
            kind = "skipped"
        elif result.error is not None:
            kind = "error"
        elif result.status == 304:
            kind = "not_modified"
        elif result.unchanged:
            kind = "unchanged"
        else:
            kind = "ok"
        self.polls.labels(kind).inc()
        self.items.labels("new").inc(result.new)
        self.items.labels("updated").inc(result.updated)
        self.items.labels("merged").inc(result.merged)
        if not result.skipped:
            self.fetch_seconds.observe(result.duration)
            self.last_poll.set(time.time())
            self._record_feed(result)

    def _record_feed(self, result: PollResult) -> None:
        label = self.feed_labels.get(result.url)
        if label is None:  # a poll that ended after its feed left the config
            return
        self.feed_fetch_seconds.labels(label).observe(result.duration)
        self.feed_items.labels(label, "new").inc(result.new)
        self.feed_items.labels(label, "updated").inc(result.updated)
        if result.error is None:
            self.feed_last_success.labels(label).set(time.time())
            return
        kind = kind_of(result.error)
        if kind == "http" and result.status is not None:
            kind = f"http_{result.status}"
        self._error_kinds.setdefault(label, set()).add(kind)
        self.feed_errors.labels(label, kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def feed_labels(feeds: Sequence[FeedSource]) -> dict[str, str]:
    """Each feed's `feed` label: its configured name, else its URL with credentials hidden
    (two such URLs may differ only in a hidden token: the second gets " (2)")."""
    labels: dict[str, str] = {}
    taken: set[str] = set()
    for source in feeds:
        base = source.shown_name
        label, n = base, 1
        while label in taken:
            n += 1
            label = f"{base} ({n})"
        taken.add(label)
        labels[source.url] = label
    return labels


class _Server(uvicorn.Server):
    """uvicorn inside our loop: the daemon owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class _ConfigStamp:
    """What the config file looked like when last read, to notice edits."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> _ConfigStamp | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


class Health:
    """What /healthz, /metrics and systemd's STATUS line report."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        #: feed URL → whether its last poll failed, for every configured feed
        self.failing: dict[str, bool] = {}
        self.last_poll: datetime | None = None
        #: why the config on disk is not in use (None: it is)
        self.config_error: str | None = None
        self.config_loaded = False
        #: None while the database takes writes; "locked" while another process holds its
        #: write lock; else why it cannot be written
        self.database_problem: str | None = None
        #: why the last render could not publish (None: it did)
        self.publish_problem: str | None = None
        self.db: StoreThread | None = None
        self._probe: asyncio.Task[None] | None = None

    def feeds_configured(self, config: Config, states: Mapping[str, FeedState]) -> None:
        """A (re)loaded config: its feeds' failing flags, from the stored states."""
        self.failing = {
            f.url: self.failing.get(
                f.url, bool(states[f.url].last_error) if f.url in states else False
            )
            for f in config.feeds
        }
        self.metrics.failing.set(sum(self.failing.values()))
        self.metrics.feeds.set(len(config.feeds))
        self.metrics.configure_feeds(config.feeds, states)

    def polled(self, result: PollResult) -> None:
        self.database_problem = None
        self.metrics.record(result)
        self.last_poll = utcnow()
        failed = result.error is not None
        if self.failing.get(result.url) != failed:  # a sum over every feed only on a change
            self.failing[result.url] = failed
            self.metrics.failing.set(sum(self.failing.values()))

    def config_read(self, error: str | None) -> None:
        self.config_error = error
        self.metrics.config_valid.set(0 if error else 1)
        if error is None:
            self.config_loaded = True
            self.metrics.config_loaded.set(time.time())
        else:
            self.notify_status()

    def published(self, problem: str | None) -> None:
        changed = problem != self.publish_problem
        self.publish_problem = problem
        if changed:
            self.notify_status()

    def probe_database(self) -> None:
        """Check beside the loop, never in its way (another process may hold the lock)."""
        if self.db is not None and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._probe_database(self.db))

    async def _probe_database(self, db: StoreThread) -> None:
        with contextlib.suppress(StoreError):
            self.database_problem = await db.run(Store.probe)

    def database_state(self) -> str:
        """ "ok", "busy" (another process holds the write lock, or the store's thread has
        been stuck on one call for a while) or why the database cannot be written."""
        if self.db is None:
            return self.database_problem or "not open"
        if self.database_problem == "locked" or self.db.stalled_for() > STALLED_SECONDS:
            return "busy"
        return self.database_problem or "ok"

    def report(self) -> tuple[int, dict[str, object]]:
        failing = sum(self.failing.values())
        total = len(self.failing)
        database = self.database_state()
        healthy = self.config_loaded and self.db is not None and database in ("ok", "busy")
        degraded = (
            self.config_error is not None
            or (total > 0 and failing * 2 > total)
            or database != "ok"
            or self.publish_problem is not None
        )
        body: dict[str, object] = {
            "status": "ok" if healthy and not degraded else "degraded",
            "config_valid": self.config_error is None,
            "config_error": self.config_error,
            "last_poll": to_iso(self.last_poll) if self.last_poll else None,
            "feeds_failing": failing,
            "database": database,
            "publishing": "ok" if self.publish_problem is None else self.publish_problem,
            "version": __version__,
        }
        return (200 if healthy else 503), body

    def notify_status(self) -> None:
        failing = sum(self.failing.values())
        text = f"{len(self.failing)} feeds, {failing} failing"
        database = self.database_state() if self.db is not None else "ok"
        if database != "ok":
            text += f"; database {database}"
        if self.config_error:
            text += "; config invalid: " + self.config_error
        if self.publish_problem:
            text += "; publishing failed: " + self.publish_problem
        notify(f"STATUS={text}")


class ConfigWatcher:
    """feeds.yaml: read, validated and watched. Each valid version goes to `apply`; an
    invalid one is reported (log, /healthz, STATUS) and the last good config kept."""

    def __init__(self, path: Path, health: Health) -> None:
        self.path = path
        self.health = health
        self.stamp: _ConfigStamp | None = None
        #: what the watcher saw last time, while waiting for a save to settle
        self.seen_stamp: _ConfigStamp | None = None
        #: the file as it was when last read
        self.read_stamp: _ConfigStamp | None = None
        #: the change `changed` found is only the file not readable last time, unchanged
        #: since: read again without a line in the log (a folder in its place, chmod 000)
        self.retrying = False
        self.has_config = False

    def read(self) -> Config | None:
        """The config file, validated; None (with the error logged once and kept for
        /healthz) when it is invalid or cannot be read."""
        self.stamp = self.read_stamp = _ConfigStamp.of(self.path)
        return self._outcome(_load(self.path))

    async def read_beside(self) -> Config | None:
        """`read`, the file read and validated on a thread: a huge file (minutes of
        parsing) must not stall serving and the systemd watchdog."""
        self.stamp = self.read_stamp = _ConfigStamp.of(self.path)
        return self._outcome(await asyncio.to_thread(_load, self.path))

    def _outcome(self, loaded: Config | ConfigError) -> Config | None:
        if isinstance(loaded, ConfigError):
            cause = loaded.__cause__
            if isinstance(cause, OSError):
                # cannot read it now (out of file descriptors, a mount away, chmod 000):
                # try again on the next check rather than wait for the file to change
                self.stamp = None
            self.failed(str(loaded))
            return None
        self.health.config_read(None)
        return loaded

    def failed(self, error: str) -> None:
        error = redact_text(error)  # shown in /healthz and the STATUS line
        if error != self.health.config_error:
            log.error("%s", error)
            if self.has_config:
                log.error("keeping the last valid config; fix the file and save again")
        self.health.config_read(error)

    def changed(self) -> bool:
        """Whether the file was edited since it was read, and the edit has settled: the file
        looks the same on two checks in a row (a save caught between truncation and write
        would otherwise be read as an empty, invalid file)."""
        stamp = _ConfigStamp.of(self.path)
        settled = stamp == self.seen_stamp
        self.seen_stamp = stamp
        self.retrying = self.stamp is None and stamp == self.read_stamp
        # a file deleted (or moved away) and not put back is a change too: reported
        return stamp != self.stamp and settled


def _load(path: Path) -> Config | ConfigError:
    """load_config, or why not. A FIFO (or a device) in the file's place is refused, not
    read: opening it would wait for a writer forever."""
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return ConfigError(str(path), None, "", "cannot read: not a regular file")
    try:
        return load_config(path)
    except ConfigError as e:
        return e


class Publisher:
    """Renders what polls changed, once per burst of polls, and serves the outputs."""

    def __init__(self, scheduler: AsyncIOScheduler) -> None:
        self.scheduler = scheduler
        self.outputs = OutputCache()
        #: slugs of topics a poll changed since the last render
        self.dirty: set[str] = set()
        #: a render was asked for and has not yet been done: a poll that renamed a feed
        #: in no topic asks for one (the index and the OPML) with no topic dirty
        self.owed = False
        #: archive pages rendered on request since the last render, oldest first
        self.pages: OrderedDict[str, Output] = OrderedDict()
        #: renders so far: a page rendered across one is not kept
        self.renders = 0
        #: when the last render ended (at first, the start): an archive page is not older
        self.rendered_at = time.time()
        #: pings settings.websub_hub after a render that changed feeds
        self.pinger: Pinger | None = None

    def request(
        self,
        slugs: set[str],
        render: Callable[[], Awaitable[None]],
        delay: float = RENDER_DELAY,
    ) -> None:
        self.dirty |= slugs
        self.owed = True
        if self.scheduler.get_job("render") is None:
            self.scheduler.add_job(
                render,
                "date",
                run_date=datetime.now(UTC) + timedelta(seconds=delay),
                id="render",
                misfire_grace_time=None,
            )

    async def render(self, db: StoreThread, config: Config, everything: bool = False) -> str | None:
        """Render what changed (everything, with `everything`); why it failed (the caller
        logs it, saying what it does next), or None."""
        only = None if everything else set(self.dirty)
        self.dirty.clear()
        self.owed = False
        try:
            # on the store's thread: reading the items and rendering them never hold up
            # the loop that serves the outputs
            outputs, changed = await db.run(publish.index_and_publish, config, only)
        except (StoreError, PublishError) as e:
            self.dirty |= only if only is not None else {t.slug for t in config.topics}
            self.owed = True
            return str(e)
        # (archive pages are not among them: they are served as rendered on request)
        self.outputs.update(outputs)
        self.pages.clear()  # they may have changed with the first pages
        self.renders += 1
        self.rendered_at = time.time()
        self.outputs.retain(publish.output_names(config))
        if changed:
            log.info("published %s", ", ".join(changed))
            hub = config.settings.websub_hub
            if hub and self.pinger is not None:
                self.pinger.request(hub, config.settings.base_url, changed)
        return None

    async def archive_page(
        self, db: StoreThread, config: Config, page: ArchivePage
    ) -> Output | None:
        """An archive page, rendered on the store's thread when asked for; kept until the
        next render (at most ARCHIVE_PAGES_KEPT), so that readers and crawlers asking for
        the same pages do not each cost a query."""
        found = self.pages.get(page.name)
        if found is None:
            renders = self.renders
            found = await db.run(publish.render_archive_page, config, page, self.rendered_at)
            if found is None or renders != self.renders:
                return found
            self.pages[page.name] = found
            while len(self.pages) > ARCHIVE_PAGES_KEPT:
                self.pages.popitem(last=False)
        else:
            self.pages.move_to_end(page.name)
        return found

    def refresh(self, config: Config) -> None:
        """Serve outputs another process published (`poll --once`, `build` run by hand)."""
        names = publish.output_names(config)
        changed = self.outputs.refresh(config.settings.output_dir, names)
        if changed:
            log.info("serving %s as written by another process", ", ".join(changed))


class Daemon:
    """Composes the config watcher, the poller (with its store), the publisher and health;
    schedules each feed's polls with APScheduler."""

    def __init__(self, config_path: Path) -> None:
        self.config: Config | None = None
        self.poller: Poller | None = None
        # A loop busy rendering must not make jobs "miss" their time: run them late, once.
        self.scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "misfire_grace_time": None}
        )
        self.health = Health()
        self.watcher = ConfigWatcher(config_path, self.health)
        self.publisher = Publisher(self.scheduler)
        self.stop = asyncio.Event()
        self.hup = asyncio.Event()
        self.in_flight: set[asyncio.Task[Any]] = set()
        #: the feeds whose polls the stop cut off
        self.cancelled: list[str] = []
        #: the WebSub subscriptions, when the daemon serves HTTP (websub.py)
        self.subscriber: Subscriber | None = None
        self.searches = asyncio.Semaphore(SEARCH_CONCURRENCY)
        self.reloading = asyncio.Lock()

    # --- life cycle -----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.hup.set)

        config = self.watcher.read()
        settings = config.settings if config else Settings()
        try:
            listener = _bind(settings.listen) if settings.listen else None
        except OSError as e:
            log.error("cannot listen on %s: %s", settings.listen, e)
            return 1
        async with contextlib.AsyncExitStack() as stack:
            # closed last: the store, the fetcher and the parse workers
            stack.push_async_callback(self._close)
            if config is not None:
                try:
                    await self._open(config)
                except (StoreError, PublishError) as e:
                    log.error("%s", e)
                    return 1
            if listener is not None:
                await self._serve(stack, listener)
                log.info("serving on http://%s/", settings.listen)
            self._start_scheduler()
            stack.push_async_callback(self._drain)
            notify("READY=1")
            self.health.notify_status()
            await self._handle_signals()
            notify("STOPPING=1")
        log.info("stopped")
        return 0

    async def _handle_signals(self) -> None:
        """Signal handlers only set events; the work is done here, in the loop."""
        while not self.stop.is_set():
            waiters = [asyncio.create_task(self.stop.wait()), asyncio.create_task(self.hup.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if self.hup.is_set() and not self.stop.is_set():
                self.hup.clear()
                log.info("SIGHUP: reloading %s", self.watcher.path)
                await self._reload()

    async def _serve(self, stack: contextlib.AsyncExitStack, listener: socket.socket) -> None:
        app = make_app(
            self.publisher.outputs,
            self.health.report,
            self.health.metrics.render,
            archive=self._archive_page,
            websub=self._websub_endpoint,
            search=self._search,
        )
        settings = self.config.settings if self.config else Settings()
        limits = httpserver.Limits(max_push_body=settings.max_feed_size)
        server = _Server(httpserver.make_config(app, limits))
        task = asyncio.create_task(server.serve(sockets=[listener]))

        async def stop_serving() -> None:
            server.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(task, timeout=SERVER_STOP_SECONDS)

        stack.push_async_callback(stop_serving)

    async def _archive_page(self, page: ArchivePage) -> Output | None:
        """A topic's archive page, rendered on the store's thread when asked for: within
        the same bounds as searches (SEARCH_CONCURRENCY, SEARCH_SECONDS), since any token
        names a page to render; one already rendered costs nothing."""
        config, poller = self.config, self.poller
        if config is None or poller is None or all(t.slug != page.slug for t in config.topics):
            return None
        if page.name in self.publisher.pages:
            return await self.publisher.archive_page(poller.db, config, page)
        if self.searches.locked():
            raise Busy("too many requests at once; try again")
        async with self.searches:
            try:
                return await asyncio.wait_for(
                    self.publisher.archive_page(poller.db, config, page), SEARCH_SECONDS
                )
            except TimeoutError as e:
                raise Busy("the page took too long; try again") from e

    def _start_scheduler(self) -> None:
        self.scheduler.start()
        self.scheduler.add_job(
            self._watch_files, "interval", seconds=WATCH_SECONDS, id="watch-files"
        )
        self.scheduler.add_job(
            self._maintain,
            "interval",
            days=1,
            id="maintenance",
            next_run_time=datetime.now(UTC) + timedelta(minutes=1),
        )
        watchdog = watchdog_interval()
        if watchdog:
            self.scheduler.add_job(self._watchdog, "interval", seconds=watchdog, id="watchdog")
        else:
            # without systemd's watchdog (which probes too), /healthz must still learn of a
            # write lock another process holds while no poll comes due
            self.scheduler.add_job(
                self._probe_database, "interval", seconds=DATABASE_PROBE_SECONDS, id="probe"
            )

    async def _drain(self) -> None:
        # Pause, not shut down: APScheduler's shutdown cancels the jobs in flight, and
        # polls in flight get DRAIN_SECONDS to finish and store what they fetched.
        self.scheduler.pause()
        log.info("stopping: waiting up to %.0f s for %d polls", DRAIN_SECONDS, len(self.in_flight))
        if self.in_flight:
            _, pending = await asyncio.wait(set(self.in_flight), timeout=DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self.cancelled:
                # one line, not one a feed: a backlog of thousands of polls waiting for a
                # connection is cut off at once
                shown = ", ".join(self.cancelled[:CANCELLED_SHOWN])
                more = len(self.cancelled) - CANCELLED_SHOWN
                log.warning(
                    "stopping: %d poll%s cut off, nothing of them stored: %s%s",
                    len(self.cancelled),
                    "" if len(self.cancelled) == 1 else "s",
                    shown,
                    f" and {more} more" if more > 0 else "",
                )
        self.scheduler.shutdown(wait=False)
        if self.subscriber is not None:
            await self.subscriber.close(timeout=SERVER_STOP_SECONDS)
        if self.publisher.owed and self.config is not None and self.poller is not None:
            # bounded: a database another process holds must not hold up the exit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._render(), timeout=FINAL_RENDER_SECONDS)
        if self.publisher.pinger is not None:
            await self.publisher.pinger.close(timeout=SERVER_STOP_SECONDS)

    async def _open(self, config: Config) -> None:
        still_starting = asyncio.ensure_future(_tell_systemd_still_starting())
        try:
            self.poller = await Poller.open(config.settings)
        finally:
            still_starting.cancel()
        self.health.db = self.poller.db
        self.config = config
        self.watcher.has_config = True
        self.publisher.pinger = Pinger(self.poller.fetcher)
        self.publisher.outputs.load_dir(config.settings.output_dir, publish.output_names(config))
        await self._render(everything=True)
        states = await self.poller.db.run(Store.feed_states)
        self.poller.remember_holds(states.values(), utcnow())
        self.health.feeds_configured(config, states)
        self._schedule_all(config, states, edited=None)
        if config.settings.listen:
            # started by the scheduler, once the callbacks are served: a hub may verify
            # a subscription before it answers the request
            self.subscriber = Subscriber(self.poller, self.scheduler, config, self._pushed)
            self.scheduler.add_job(self.subscriber.start, "date", id="websub-start")

    async def _close(self) -> None:
        if self.poller is not None:
            # workers still busy (polls cut off at the drain) are stopped, not waited for
            await self.poller.close(cancel=True, timeout=CLOSE_SECONDS)
            self.poller = None

    # --- config -----------------------------------------------------------------------------

    async def _reload(self) -> None:
        """Apply the config file as it is now. Whatever the file holds, the daemon stays
        up: an invalid file, or a failure applying a valid one, keeps the last good config."""
        try:
            # one at a time: a slow read of an older save must not be applied after a
            # newer one (a SIGHUP while the watcher reloads)
            async with self.reloading:
                config = await self.watcher.read_beside()
                if config is not None:
                    await self._apply(config)
        except Exception as e:  # a bug must not take the service down; it is logged
            log.exception("reloading %s failed", self.watcher.path)
            self.watcher.failed(f"{self.watcher.path}: reload failed: {type(e).__name__}: {e}")

    async def _apply(self, config: Config) -> None:
        previous = self.config
        if previous is None or self.poller is None:
            try:
                await self._open(config)
            except (StoreError, PublishError) as e:
                log.error("%s", e)
                self.health.database_problem = str(e)
            return
        self.config = config
        self.poller.configure(config.settings)
        if previous.settings.listen != config.settings.listen:
            log.warning("settings.listen changed: restart the service to apply it")
        if previous.settings.database != config.settings.database:
            log.warning("settings.database changed: restart the service to apply it")
        if previous.settings.fetch_limits() != config.settings.fetch_limits():
            log.warning("fetch limits changed: restart the service to apply them")
        edited = {f.url for f in config.feeds} ^ {f.url for f in previous.feeds}
        edited |= {f.url for f in config.feeds if f not in previous.feeds}
        states = await self.poller.db.run(Store.feed_states)
        self.health.feeds_configured(config, states)
        self._schedule_all(config, states, edited=edited)
        if self.subscriber is not None:
            self.subscriber.configure(config, states)
        await self._render(everything=True)
        log.info("config reloaded: %d feeds, %d topics", len(config.feeds), len(config.topics))
        self.health.notify_status()

    async def _watch_files(self) -> None:
        if self.watcher.changed():
            if not self.watcher.retrying:
                log.info("%s changed: reloading", self.watcher.path)
            await self._reload()
        if self.config is not None:
            self.publisher.refresh(self.config)

    # --- scheduling -------------------------------------------------------------------------

    def _schedule_all(
        self, config: Config, states: Mapping[str, FeedState], edited: set[str] | None
    ) -> None:
        """(Re)schedule feeds: every feed when `edited` is None (at start), else just those
        URLs; jobs of feeds no longer configured are removed."""
        configured = {f.url for f in config.feeds}
        for job in self.scheduler.get_jobs():
            if job.id.startswith("poll:") and job.id[5:] not in configured:
                job.remove()
        now = utcnow()
        for order, source in enumerate(config.feeds):
            if edited is not None and source.url not in edited:
                continue
            due = update.due_at_start(
                source, states.get(source.url), now, edited=edited is not None, order=order
            )
            if due is not None:
                self._schedule(source.url, due)
            elif self.scheduler.get_job(f"poll:{source.url}") is not None:
                self.scheduler.remove_job(f"poll:{source.url}")  # disabled, or gone

    def _schedule(self, url: str, due: datetime) -> None:
        self.scheduler.add_job(
            self._poll,
            "date",
            run_date=due,
            args=[url],
            id=f"poll:{url}",
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
        )

    def _source(self, url: str) -> FeedSource | None:
        config = self.config
        return config.feed_by_url.get(url) if config else None

    async def _poll(self, url: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        source = self._source(url)
        try:
            if source is not None and not self.stop.is_set():
                await self._poll_feed(source)
        except asyncio.CancelledError:
            # cut off at the end of the drain: nothing of it was stored (_drain tells)
            self.cancelled.append(source.shown_name if source else redact_text(url))
        except Exception:
            # A bug, not the feed's fault. The date job is used up, so without a new one
            # this feed would silently never be polled again.
            retry = utcnow() + (source.interval if source else timedelta(minutes=30))
            log.exception("%s: internal error while polling; retrying at %s", url, to_iso(retry))
            if not self.stop.is_set():
                self._schedule(url, retry)
        finally:
            self.in_flight.discard(task)

    async def _poll_feed(self, source: FeedSource) -> None:
        poller, config = self.poller, self.config
        if poller is None or config is None:
            return
        try:
            result = await poller.poll(source)
        except StoreError as e:
            # Nothing of this poll was stored (or, for one without entries, only the feed's
            # new state, without its line of history): it is retried soon, and fetches again.
            self.health.database_problem = lock_problem(e)
            retry = utcnow() + min(source.interval, STORE_RETRY)
            log.error("%s: %s; retrying at %s", source.name or source.url, e, to_iso(retry))
            self._schedule(source.url, retry)
            return
        self.health.polled(result)
        line = pipeline.describe(source, result)
        state = result.state
        if not source.enabled:
            log.info("%s; not polled while disabled", line)
        elif state is not None and update.still_gone(source, state):
            log.warning("%s; no longer polled until its config entry changes", line)
        else:
            due = _due_after(state, source)
            self._schedule(source.url, due)
            level = logging.WARNING if result.error is not None else logging.INFO
            log.log(level, "%s; next at %s", line, to_iso(due))
        if result.changed_outputs:
            self.publisher.request(publish.topics_of_feed(config, source.url), self._render)
        if self.subscriber is not None:
            self.subscriber.after_poll(source, state)

    def _pushed(self, source: FeedSource, result: PollResult) -> None:
        """After content a WebSub hub pushed was stored: its topics are rendered, and the
        feed's next poll moves to the due time stored with it."""
        config = self.config
        if config is None or self.stop.is_set():
            return
        if result.changed_outputs:
            self.publisher.request(publish.topics_of_feed(config, source.url), self._render)
        if self.scheduler.get_job(f"poll:{source.url}") is not None:
            self._schedule(source.url, _due_after(result.state, source))

    async def _websub_endpoint(self, request: Request) -> Response:
        if self.subscriber is None:
            from starlette.responses import PlainTextResponse

            return PlainTextResponse("not found\n", status_code=404)
        return await self.subscriber.endpoint(request)

    async def _render(self, everything: bool = False) -> None:
        if self.config is None or self.poller is None:
            return
        # a render is waited for at the stop as a poll is: APScheduler's shutdown would
        # cancel it (a CancelledError traceback in the log)
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            problem = await self.publisher.render(self.poller.db, self.config, everything)
            self.health.published(problem)
            if problem is not None and self.stop.is_set():
                log.error("publishing failed: %s", problem)
            elif problem is not None:
                # a full disk or an unwritable output_dir may clear without any poll
                # changing a topic: try again
                log.error("publishing failed: %s; trying again in %.0f s", problem, PUBLISH_RETRY)
                self.publisher.request(set(), self._render, delay=PUBLISH_RETRY)
        except asyncio.CancelledError:
            # cut off at the end of the drain; the store's thread finishes what it began,
            # and the render at the stop queues behind it
            self.publisher.owed = True
        finally:
            if task is not None:
                self.in_flight.discard(task)

    # --- search ----------------------------------------------------------------------------

    async def _search(self, extension: str, parameters: Mapping[str, str]) -> publish.Answer:
        """/search and its feeds: a bad query is 400 with its message, a search that cannot
        run now (busy, too slow, database trouble) 503; never a traceback."""
        config, poller = self.config, self.poller
        if config is None or poller is None:
            return _search_problem(extension, 503, "search is not available yet", config)
        if extension == "html" and not parameters.get("q", "").strip():
            page = render.render_search_html("Search", [], config.topics, list(parameters.items()))
            return publish.Answer(200, page, render.HTML_TYPE)
        try:
            request = search.request_from_parameters(config.topics, parameters)
        except QueryError as e:
            return _search_problem(extension, 400, str(e), config, parameters)
        if self.searches.locked():
            return _search_problem(extension, 503, "too many searches at once; try again", config)
        try:
            async with self.searches:
                body = await asyncio.wait_for(
                    poller.db.run(publish.render_search, config, request, extension, utcnow()),
                    timeout=SEARCH_SECONDS,
                )
        except TimeoutError:
            return _search_problem(extension, 503, "the search took too long; try again", config)
        except StoreError as e:
            log.warning("search %r: %s", request.query.text, e)
            return _search_problem(extension, 503, str(e), config)
        return publish.Answer(200, body, render.SEARCH_FORMATS[extension])

    # --- maintenance, health ----------------------------------------------------------------

    async def _maintain(self) -> None:
        config, poller = self.config, self.poller
        if poller is None or config is None:
            return
        try:
            removed = await poller.db.run(Store.prune, utcnow() - config.settings.retention)
            await poller.db.run(Store.optimize)
        except StoreError as e:
            log.error("maintenance failed: %s", e)
            return
        if removed:
            log.info("pruned %d items older than the retention", removed)
            self.publisher.request({t.slug for t in config.topics}, self._render)

    async def _probe_database(self) -> None:
        self.health.probe_database()

    async def _watchdog(self) -> None:
        # The loop runs this, so the daemon is alive: that is what systemd asks.
        notify("WATCHDOG=1")
        self.health.probe_database()
        self.health.notify_status()


def _search_problem(
    extension: str,
    status: int,
    message: str,
    config: Config | None,
    parameters: Mapping[str, str] | None = None,
) -> publish.Answer:
    """A search that cannot be answered: the search page with the message (the form kept
    filled in), or the message as plain text for a feed reader."""
    headers = (("Retry-After", "5"),) if status == 503 else ()
    if extension == "html" and config is not None:
        filled = [(k, v[: search.MAX_QUERY_CHARS]) for k, v in (parameters or {}).items()]
        body = render.render_search_html("Search", [], config.topics, filled, error=message)
        return publish.Answer(status, body, render.HTML_TYPE, headers)
    text = f"{message}\n".encode()
    return publish.Answer(status, text, "text/plain; charset=utf-8", headers)


def _due_after(state: FeedState | None, source: FeedSource) -> datetime:
    """When to poll a feed again after a poll: the due time `update.decide` stored, or for
    a skipped poll the later of that and the server's Retry-After."""
    now = utcnow()
    if state is None:
        return now + source.interval
    due = state.next_due or now + source.interval
    if state.retry_after and state.retry_after > due:
        due = state.retry_after
    return max(due, now + update.MIN_GAP)


def _bind(listen: str) -> socket.socket:
    """Bind the listen address ourselves, so a taken port is a clear error at start."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_daemon(config_path: Path) -> int:
    """`aggregator run`: returns the exit code."""
    configure_logging(logging.INFO)
    return pipeline.run_loop(Daemon(config_path).run())
