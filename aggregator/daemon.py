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
import random
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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

from aggregator import __version__, httpserver, pipeline
from aggregator.config import load_config
from aggregator.errors import ConfigError, PublishError, StoreError
from aggregator.fetch import Fetcher
from aggregator.logs import configure_logging
from aggregator.model import Config, FeedSource, FeedState, PollResult, Settings
from aggregator.notify import notify, watchdog_interval
from aggregator.publish import OutputCache, make_app
from aggregator.store import Store, StoreThread, lock_problem
from aggregator.timeutil import to_iso, utcnow
from aggregator.urls import redact_text

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
#: how often feeds.yaml is checked for changes (a change is read once it has settled
#: for one period, so an edit is applied 0.5–1 s after the save)
WATCH_SECONDS = 0.5
#: due times are spread by up to this fraction of the interval
JITTER = 0.1


class Metrics:
    """Prometheus metrics, in a registry of our own (no global state between tests)."""

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
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
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

    def render(self) -> bytes:
        return generate_latest(self.registry)


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


class Daemon:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config: Config | None = None
        self.config_error: str | None = None
        self.stamp: _ConfigStamp | None = None
        #: what the watcher saw last time, while waiting for a save to settle
        self.seen_stamp: _ConfigStamp | None = None
        #: the store, on a thread of its own: the loop never waits on SQLite
        self.db: StoreThread | None = None
        self.fetcher: Fetcher | None = None
        #: parse workers, each body under the config's parse_timeout; started on first use
        self.parsers = pipeline.ParsePool()
        # A loop busy rendering must not make jobs "miss" their time: run them late, once.
        self.scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "misfire_grace_time": None}
        )
        self.outputs = OutputCache()
        self.metrics = Metrics()
        self.stop = asyncio.Event()
        self.hup = asyncio.Event()
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.dirty: set[str] = set()
        self.failing: dict[str, bool] = {}
        self.last_poll: datetime | None = None
        #: None while the database takes writes; "locked" while another process holds its
        #: write lock; else why it cannot be written
        self.database_problem: str | None = None
        self.probe: asyncio.Task[None] | None = None
        self.server: _Server | None = None

    # --- life cycle -----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.hup.set)

        self.config = self._read_config()
        settings = self.config.settings if self.config else Settings()
        try:
            listener = _bind(settings.listen) if settings.listen else None
        except OSError as e:
            log.error("cannot listen on %s: %s", settings.listen, e)
            return 1
        if self.config is not None:
            try:
                await self._open(self.config)
            except (StoreError, PublishError) as e:
                log.error("%s", e)
                return 1

        server_task = None
        if listener is not None:
            app = make_app(self.outputs, self.health, self.metrics.render)
            self.server = _Server(httpserver.make_config(app))
            server_task = asyncio.create_task(self.server.serve(sockets=[listener]))
            log.info("serving on http://%s/", settings.listen)

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
        notify("READY=1")
        self._notify_status()

        while not self.stop.is_set():
            waiters = [asyncio.create_task(self.stop.wait()), asyncio.create_task(self.hup.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if self.hup.is_set() and not self.stop.is_set():
                self.hup.clear()
                log.info("SIGHUP: reloading %s", self.config_path)
                await self._reload()

        notify("STOPPING=1")
        # Pause, not shut down: APScheduler's shutdown cancels the jobs in flight, and
        # polls in flight get DRAIN_SECONDS to finish and store what they fetched.
        self.scheduler.pause()
        log.info("stopping: waiting up to %.0f s for %d polls", DRAIN_SECONDS, len(self.in_flight))
        if self.in_flight:
            _, pending = await asyncio.wait(set(self.in_flight), timeout=DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.scheduler.shutdown(wait=False)
        if self.dirty and self.config is not None and self.db is not None:
            # bounded: a database another process holds must not hold up the exit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._render(), timeout=FINAL_RENDER_SECONDS)
        if self.server is not None and server_task is not None:
            self.server.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server_task, timeout=SERVER_STOP_SECONDS)
        await self._close()
        log.info("stopped")
        return 0

    async def _open(self, config: Config) -> None:
        self.db = await StoreThread.open(config.settings.database)
        self.outputs.load_dir(config.settings.output_dir, pipeline.output_names(config))
        await self._render(everything=True)
        states = await self.db.run(Store.feed_states)
        self.failing = {
            f.url: bool(states[f.url].last_error) if f.url in states else False
            for f in config.feeds
        }
        self.metrics.failing.set(sum(self.failing.values()))
        await self._schedule_all(config, changed=None)

    async def _close(self) -> None:
        # workers still busy (polls cut off at the drain) are stopped, not waited for
        await asyncio.to_thread(self.parsers.shutdown, True, cancel_futures=True)
        if self.fetcher is not None:
            await self.fetcher.__aexit__(None, None, None)
            self.fetcher = None
        if self.db is not None:
            await self.db.close(timeout=CLOSE_SECONDS)
            self.db = None

    # --- config -----------------------------------------------------------------------------

    def _read_config(self) -> Config | None:
        """The config file, validated; None (with the error logged once and kept for
        /healthz) when it is invalid or cannot be read."""
        self.stamp = _ConfigStamp.of(self.config_path)
        try:
            config = load_config(self.config_path)
        except ConfigError as e:
            if isinstance(e.__cause__, OSError):
                # cannot read it now (out of file descriptors, a mount away): try again
                # on the next check rather than wait for the file to change
                self.stamp = None
            self._config_failed(str(e))
            return None
        self.config_error = None
        self.metrics.config_valid.set(1)
        self.metrics.config_loaded.set(time.time())
        self.metrics.feeds.set(len(config.feeds))
        return config

    def _config_failed(self, error: str) -> None:
        error = redact_text(error)  # shown in /healthz and the STATUS line
        if error != self.config_error:
            log.error("%s", error)
            if self.config is not None:
                log.error("keeping the last valid config; fix the file and save again")
        self.config_error = error
        self.metrics.config_valid.set(0)
        self._notify_status()

    async def _reload(self) -> None:
        """Apply the config file as it is now. Whatever the file holds, the daemon stays
        up: an invalid file, or a failure applying a valid one, keeps the last good config."""
        try:
            config = self._read_config()
            if config is not None:
                await self._apply(config)
        except Exception as e:  # a bug must not take the service down; it is logged
            log.exception("reloading %s failed", self.config_path)
            self._config_failed(f"{self.config_path}: reload failed: {type(e).__name__}: {e}")

    async def _apply(self, config: Config) -> None:
        previous = self.config
        if previous is None:
            try:
                await self._open(config)
            except (StoreError, PublishError) as e:
                log.error("%s", e)
                self.database_problem = str(e)
                return
            self.config = config
            return
        self.config = config
        if previous.settings.listen != config.settings.listen:
            log.warning("settings.listen changed: restart the service to apply it")
        if previous.settings.database != config.settings.database:
            log.warning("settings.database changed: restart the service to apply it")
        changed = {f.url for f in config.feeds} ^ {f.url for f in previous.feeds}
        changed |= {f.url for f in config.feeds if f not in previous.feeds}
        self.failing = {f.url: self.failing.get(f.url, False) for f in config.feeds}
        self.metrics.failing.set(sum(self.failing.values()))
        await self._schedule_all(config, changed=changed)
        await self._render(everything=True)
        log.info("config reloaded: %d feeds, %d topics", len(config.feeds), len(config.topics))
        self._notify_status()

    async def _watch_files(self) -> None:
        await self._watch_config()
        if self.config is not None:
            # outputs another process published (`poll --once`, `build` run by hand)
            settings = self.config.settings
            changed = self.outputs.refresh(settings.output_dir, pipeline.output_names(self.config))
            if changed:
                log.info("serving %s as written by another process", ", ".join(changed))

    async def _watch_config(self) -> None:
        stamp = _ConfigStamp.of(self.config_path)
        settled = stamp == self.seen_stamp
        self.seen_stamp = stamp
        # Reload once the file looks the same on two checks in a row: a save caught
        # between truncation and write would otherwise be read as an empty, invalid file.
        if stamp is not None and stamp != self.stamp and settled:
            log.info("%s changed: reloading", self.config_path)
            await self._reload()

    # --- scheduling -------------------------------------------------------------------------

    async def _schedule_all(self, config: Config, changed: set[str] | None) -> None:
        """(Re)schedule feeds: every feed when `changed` is None, else just those URLs;
        jobs of feeds no longer configured are removed."""
        assert self.db is not None
        configured = {f.url for f in config.feeds}
        for job in self.scheduler.get_jobs():
            if job.id.startswith("poll:") and job.id[5:] not in configured:
                job.remove()
        states, gone_fingerprints = await self.db.run(pipeline.states_and_gone_fingerprints)
        now = utcnow()
        for index, source in enumerate(config.feeds):
            if changed is not None and source.url not in changed:
                continue
            state = states.get(source.url) or FeedState(url=source.url, fetch_url=source.url)
            if pipeline.still_gone(source, state, gone_fingerprints.get(source.url)):
                continue
            if state.last_fetched is None:
                # Never polled: now, a few ms apart so a big list starts in order.
                due = now + timedelta(milliseconds=10 * index)
            elif state.gone:
                # Gone (410), but its entry was edited since (checked above): retry now,
                # not after the failure backoff stored with it.
                due = now
            elif changed is not None and state.failures == 0:
                interval = pipeline.effective_interval(source.interval, state.hint_seconds)
                due = state.last_fetched + interval
            else:
                due = state.next_due or now
            if state.retry_after and state.retry_after > due:
                due = state.retry_after
            self._schedule(source.url, max(due, now))

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

    def _with_jitter(self, due: datetime, interval: timedelta) -> datetime:
        spread = interval.total_seconds() * JITTER
        return due + timedelta(seconds=random.uniform(-spread, spread))

    async def _poll(self, url: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        try:
            await self._poll_feed(url)
        except asyncio.CancelledError:
            # cut off at the end of the drain: nothing of it was stored
            log.warning("%s: poll cancelled at shutdown", self._name(url))
        except Exception:
            # A bug, not the feed's fault. The date job is used up, so without a new one
            # this feed would silently never be polled again.
            retry = utcnow() + self._interval(url)
            log.exception("%s: internal error while polling; retrying at %s", url, to_iso(retry))
            if not self.stop.is_set():
                self._schedule(url, retry)
        finally:
            self.in_flight.discard(task)

    def _source(self, url: str) -> FeedSource | None:
        config = self.config
        return next((f for f in config.feeds if f.url == url), None) if config else None

    def _name(self, url: str) -> str:
        source = self._source(url)
        return (source.name if source else None) or url

    def _interval(self, url: str) -> timedelta:
        source = self._source(url)
        return source.interval if source else timedelta(minutes=30)

    async def _poll_feed(self, url: str) -> None:
        config, db = self.config, self.db
        source = self._source(url)
        if source is None or db is None or config is None or self.stop.is_set():
            return
        if self.fetcher is None:
            self.fetcher = Fetcher(config.settings.fetch_limits())
            await self.fetcher.__aenter__()
        self.parsers.timeout = config.settings.parse_timeout.total_seconds()
        try:
            result = await pipeline.poll_feed(
                source,
                db,
                self.fetcher,
                retention=config.settings.retention,
                executor=self.parsers,
            )
            state = await db.run(Store.feed_state, url)
        except StoreError as e:
            # Nothing of this poll was stored: it is retried soon, and fetches again.
            self.database_problem = lock_problem(e)
            retry = utcnow() + min(source.interval, STORE_RETRY)
            log.error("%s: %s; retrying at %s", source.name or url, e, to_iso(retry))
            self._schedule(url, retry)
            return
        self.database_problem = None
        self.metrics.record(result)
        self.last_poll = utcnow()
        self.failing[url] = result.error is not None
        self.metrics.failing.set(sum(self.failing.values()))
        line = pipeline.describe(source, result)
        if state.gone:
            log.warning("%s; no longer polled until its config entry changes", line)
        else:
            due = state.next_due or utcnow() + source.interval
            if state.failures == 0:
                due = self._with_jitter(due, source.interval)
            due = max(due, utcnow() + timedelta(seconds=1))
            self._schedule(url, due)
            level = logging.WARNING if result.error is not None else logging.INFO
            log.log(level, "%s; next at %s", line, to_iso(due))
        if result.new or result.updated or result.merged:
            self._request_render(pipeline.topics_of_feed(config, url))

    # --- rendering --------------------------------------------------------------------------

    def _request_render(self, slugs: set[str]) -> None:
        self.dirty |= slugs
        if self.scheduler.get_job("render") is None:
            self.scheduler.add_job(
                self._render,
                "date",
                run_date=datetime.now(UTC) + timedelta(seconds=RENDER_DELAY),
                id="render",
                misfire_grace_time=None,
            )

    async def _render(self, everything: bool = False) -> None:
        config, db = self.config, self.db
        if config is None or db is None:
            return
        only = None if everything else set(self.dirty)
        self.dirty.clear()
        try:
            # on the store's thread: reading the items and rendering them never hold up
            # the loop that serves the outputs
            outputs, changed = await db.run(pipeline.index_and_publish, config, only)
        except (StoreError, PublishError) as e:
            log.error("publishing failed: %s", e)
            self.dirty |= only if only is not None else {t.slug for t in config.topics}
            return
        self.outputs.update(outputs)
        self.outputs.retain(pipeline.output_names(config))
        if changed:
            log.info("published %s", ", ".join(changed))

    # --- maintenance, health ----------------------------------------------------------------

    async def _maintain(self) -> None:
        config, db = self.config, self.db
        if db is None or config is None:
            return
        try:
            removed = await db.run(Store.prune, utcnow() - config.settings.retention)
            await db.run(Store.optimize)
        except StoreError as e:
            log.error("maintenance failed: %s", e)
            return
        if removed:
            log.info("pruned %d items older than the retention", removed)
            self._request_render({t.slug for t in config.topics})

    async def _watchdog(self) -> None:
        # The loop runs this, so the daemon is alive: that is what systemd asks. The
        # database is probed beside it, never in its way (another process may hold it).
        notify("WATCHDOG=1")
        if self.db is not None and (self.probe is None or self.probe.done()):
            self.probe = asyncio.create_task(self._probe_database(self.db))
        self._notify_status()

    async def _probe_database(self, db: StoreThread) -> None:
        with contextlib.suppress(StoreError):
            self.database_problem = await db.run(Store.probe)

    def database_state(self) -> str:
        """ "ok", "busy" (another process holds the write lock, or the store's thread has
        been stuck on one call for a while) or why the database cannot be written."""
        if self.db is None:
            return "not open"
        if self.database_problem == "locked" or self.db.stalled_for() > STALLED_SECONDS:
            return "busy"
        return self.database_problem or "ok"

    def health(self) -> tuple[int, dict[str, object]]:
        failing = sum(self.failing.values())
        total = len(self.failing)
        database = self.database_state()
        healthy = self.config is not None and database in ("ok", "busy")
        degraded = (
            self.config_error is not None or (total > 0 and failing * 2 > total) or database != "ok"
        )
        body: dict[str, object] = {
            "status": "ok" if healthy and not degraded else "degraded",
            "config_valid": self.config_error is None,
            "config_error": self.config_error,
            "last_poll": to_iso(self.last_poll) if self.last_poll else None,
            "feeds_failing": failing,
            "database": database,
            "version": __version__,
        }
        return (200 if healthy else 503), body

    def _notify_status(self) -> None:
        failing = sum(self.failing.values())
        text = f"{len(self.failing)} feeds, {failing} failing"
        database = self.database_state() if self.db is not None else "ok"
        if database != "ok":
            text += f"; database {database}"
        if self.config_error:
            text += "; config invalid: " + self.config_error
        notify(f"STATUS={text}")


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
