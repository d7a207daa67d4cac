"""The pipeline's one route: polling feeds, for `poll --once` and the daemon alike.

    Poller.poll(source, state)
      ─ update.skip_reason? (gone, Retry-After) ────────────────► PollResult(skipped)
      ─ fetch.Fetcher.fetch ─► NotModified ─────────────────────┐
                            ─► Fetched ─ same body hash? ───────┤
      ─ ingest.process_body, in a parse worker:                 │
           parse (partial.py: only the entries changed since)   │
           ─► identify (dedupe.entry_key; unchanged entries stop here)
           ─► clean.clean_entry ─► dedupe.content_hash, index_keys ─► items
      ─ update.decide(source, state, outcome) ─► FeedUpdate ────┴► Store.save(update,
        items, fetch): the feed's state, its items, deduplicated (dedupe.match/merge/
        edit), and the poll's row of its fetch history, in one transaction on the
        store's thread

Fetching runs concurrently on the event loop; parsing and cleaning run in worker
processes (ParsePool); the store runs on a thread of its own (store.StoreThread). Nothing
of it blocks the loop. Publishing what was stored is publish.py's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import heapq
import logging
import multiprocessing
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aggregator import update, websub
from aggregator.errors import (
    FeedError,
    ParseError,
    ParseTimeout,
    RetryLater,
    StoreError,
    kind_of,
)
from aggregator.fetch import Fetcher, server_key
from aggregator.ingest import process_body
from aggregator.model import (
    Config,
    FeedSource,
    FeedState,
    Fetched,
    FetchLimits,
    Item,
    NotModified,
    PollResult,
    Settings,
)
from aggregator.publish import SITE_OWED, index_and_publish, topics_of_feed
from aggregator.store import FetchRecord, Store, StoreThread
from aggregator.text import single_line
from aggregator.timeutil import to_iso, utcnow
from aggregator.urls import redact_text, redact_url

if TYPE_CHECKING:
    import pebble

log = logging.getLogger("aggregator")

T = TypeVar("T")

#: the daemon's polls started within this long of a round's first share it (see Poller)
ROUND_SECONDS = 60.0
#: closing the database waits this long for a call stuck on another process's lock
CLOSE_SECONDS = 5.0


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on uvloop when it is installed: libuv's loop takes about a
    fifth less CPU per request than asyncio's (2,000 conditional GETs through httpx: 4.05
    -> 3.18 CPU-s), and plain asyncio is the fallback where uvloop does not build."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# --- polling ----------------------------------------------------------------------------


class Poller:
    """Fetches, parses and stores feeds: the one route of `poll --once` and the daemon.

    Owns the store's thread, the fetcher and the parse workers. A round (the poll's
    `round_id`, which dedupe.merge asks) is an explicit value: `poll_round` gives one to
    all its feeds; the daemon's polls share one per ROUND_SECONDS (`_current_round`).
    At most `max_connections` feeds are between "fetch started" and "stored" at once,
    which bounds the bodies held in memory when fetching outpaces parsing.

        async with await Poller.open(settings) as poller:
            results = await poller.poll_round(config.feeds)
    """

    def __init__(
        self,
        db: StoreThread,
        settings: Settings,
        *,
        limits: FetchLimits | None = None,
        parsers: Executor | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.limits = limits or settings.fetch_limits()
        self.parsers: Executor = parsers if parsers is not None else ParsePool()
        self.configure(settings)
        self._fetcher: Fetcher | None = None
        self._fetcher_lock = asyncio.Lock()
        self._in_progress = asyncio.Semaphore(self.limits.max_connections)
        self._rng = rng or random.Random()
        self._round = ""
        self._round_started = 0.0
        #: server ("host:port") → until when it asked (Retry-After) not to be fetched
        self._holds: dict[str, datetime] = {}
        #: feeds a WebSub hub pushes (active subscriptions, kept by the daemon's websub
        #: manager): polled at update.PUSHED_INTERVAL at least
        self.pushed_feeds: set[str] = set()
        self._server_slots: dict[str, asyncio.Semaphore] = {}

    @classmethod
    async def open(cls, settings: Settings, **options: Any) -> Poller:
        """A poller on the database of `settings` (opened, and migrated if need be)."""
        return cls(await StoreThread.open(settings.database), settings, **options)

    def configure(self, settings: Settings) -> None:
        """Apply reloaded settings (retention, parse deadline; fetch limits need a restart)."""
        self.settings = settings
        if isinstance(self.parsers, ParsePool):
            self.parsers.timeout = settings.parse_timeout.total_seconds()

    async def close(self, *, cancel: bool = False, timeout: float = CLOSE_SECONDS) -> None:
        """Stop the parse workers (`cancel`: those still busy are killed, not waited for),
        the fetcher and the store's thread."""
        await asyncio.to_thread(self.parsers.shutdown, True, cancel_futures=cancel)
        if self._fetcher is not None:
            fetcher, self._fetcher = self._fetcher, None
            await fetcher.__aexit__(None, None, None)
        await self.db.close(timeout=timeout)

    async def __aenter__(self) -> Poller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def poll_round(
        self,
        sources: Sequence[FeedSource],
        *,
        force: bool = False,
        on_result: Callable[[FeedSource, PollResult], None] | None = None,
        keep_states: bool = True,
    ) -> list[PollResult]:
        """Poll `sources` concurrently as one round; results in their order. Without
        `keep_states`, the results kept for the return leave out the feeds' new states
        (`on_result` still sees them): 7.5 MB at 10,000 feeds that a caller needing only
        the counts would hold through its render.

        A feed's poll starts once its server has a free turn (max_per_host) and fewer
        than max_connections polls are under way: in the order of `sources`, a server's
        feeds waiting for its turns holding up no other server's. So the same feeds run
        at once as when every poll waits on `poll`'s semaphores itself, without a task,
        a coroutine and two semaphore waiters per feed for the whole round (3 MB at
        2,000 feeds, 15 MB at 10,000). The first StoreError ends the round."""
        states = await self.db.run(Store.feed_states)  # one query, not one per feed
        round_id = _new_round_id()
        if not force:
            self.remember_holds(states.values(), utcnow())
        results: list[PollResult | None] = [None] * len(sources)
        # server → the indexes of its feeds not started yet, in order
        waiting: dict[str, collections.deque[int]] = {}
        for index, source in enumerate(sources):
            state = states.get(source.url)
            server = server_key(state.fetch_url if state is not None else source.url)
            waiting.setdefault(server, collections.deque()).append(index)
        # (next index, server) of each server with a feed waiting and a turn free
        ready = [(queue[0], server) for server, queue in waiting.items()]
        heapq.heapify(ready)
        busy: dict[str, int] = dict.fromkeys(waiting, 0)
        running: set[asyncio.Task[None]] = set()
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        left = len(sources)
        per_host, most = self.limits.max_per_host, self.limits.max_connections

        async def one(index: int, server: str, state: FeedState | None) -> None:
            nonlocal left
            source = sources[index]
            try:
                result = await self.poll(source, state, force=force, round_id=round_id)
                if on_result is not None:
                    on_result(source, result)
            except Exception as error:  # a StoreError: the round cannot go on
                if not finished.done():
                    finished.set_exception(error)
                return
            results[index] = result if keep_states else replace(result, state=None)
            left -= 1
            busy[server] -= 1
            queue = waiting[server]
            if queue and busy[server] == per_host - 1:  # its turns were all taken
                heapq.heappush(ready, (queue[0], server))
            running.discard(asyncio.current_task())
            start()
            if not left and not finished.done():
                finished.set_result(None)

        def start() -> None:
            while ready and len(running) < most and not finished.done():
                _, server = heapq.heappop(ready)
                queue = waiting[server]
                index = queue.popleft()
                busy[server] += 1
                if queue and busy[server] < per_host:
                    heapq.heappush(ready, (queue[0], server))
                # each poll takes its feed's stored state: none is kept past its poll
                state = states.pop(sources[index].url, None)
                task = asyncio.ensure_future(one(index, server, state))
                running.add(task)
                task.add_done_callback(running.discard)

        start()
        try:
            if left:
                await finished
        finally:
            if running:  # the round failed or was cancelled: so are the polls under way
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
        return [result for result in results if result is not None]  # all, in order

    async def poll(
        self,
        source: FeedSource,
        state: FeedState | None = None,
        *,
        force: bool = False,
        round_id: str | None = None,
    ) -> PollResult:
        """Poll one feed and store what it brings. Never raises for a feed's own fault; a
        StoreError (the database cannot be written) propagates, nothing of the poll stored.
        `state` is the feed's stored state when the caller has it."""
        if state is None:
            state = await self.db.run(Store.feed_state, source.url)
        if round_id is None:
            round_id = self._current_round()
        # A server's feeds wait for its turns (per_host_concurrency, per_host_spacing)
        # before they take one of the slots every feed shares: a newspaper's forty feeds,
        # or a server that answers slowly, never hold up other servers' feeds.
        async with self._server_slot(server_key(state.fetch_url)), self._in_progress:
            return await self._poll(source, state, force, round_id)

    def _server_slot(self, server: str) -> asyncio.Semaphore:
        slot = self._server_slots.get(server)
        if slot is None:
            slot = self._server_slots[server] = asyncio.Semaphore(self.limits.max_per_host)
        return slot

    def _current_round(self) -> str:
        """The round of a poll the daemon starts: the one begun less than ROUND_SECONDS
        ago, else a new one. So the feeds the daemon polls as it starts (every one due
        then, 10 ms apart) form one round, as in `poll --once`."""
        now = time.monotonic()
        if not self._round or now - self._round_started > ROUND_SECONDS:
            self._round, self._round_started = _new_round_id(), now
        return self._round

    async def _poll(
        self, source: FeedSource, state: FeedState, force: bool, round_id: str
    ) -> PollResult:
        started = time.monotonic()
        now = utcnow()
        skip = update.skip_reason(source, state, now, force)
        if skip is not None:
            return PollResult(url=source.url, skipped=skip, status=state.last_status, state=state)
        held = None if force else self._host_held_until(state, now)
        if held is not None:
            # another feed of this server was told to wait: so is this one, without a fetch
            held_update = update.hold(state, held)
            await self.db.run(Store.save, held_update, now=now, round_id=round_id)
            return PollResult(
                url=source.url,
                skipped=f"skipped: its server asked to wait until {to_iso(held)}",
                status=state.last_status,
                state=held_update.state,
            )
        left_out: tuple[str, ...] = ()
        try:
            outcome, items, left_out = await self._fetch_and_parse(source, state, now)
        except StoreError:
            raise
        except Exception as error:
            outcome, items = _internal_error(source, error), ()
        self._note_hold(state, outcome)
        pushed = source.url in self.pushed_feeds
        jitter = self._rng.uniform(-1, 1)
        feed_update = update.decide(source, state, outcome, now, jitter, pushed=pushed)
        fetch = _fetch_record(outcome, feed_update.state, now, time.monotonic() - started)
        try:
            saved = await self.db.run(
                Store.save,
                feed_update,
                items,
                now=now,
                round_id=round_id,
                left_out=left_out,
                fetch=fetch,
            )
        except StoreError:
            raise
        except Exception as error:  # a bug met on this feed's items: the feed fails
            outcome, items = _internal_error(source, error), ()
            feed_update = update.decide(source, state, outcome, now)
            fetch = _fetch_record(outcome, feed_update.state, now, time.monotonic() - started)
            saved = await self.db.run(
                Store.save, feed_update, now=now, round_id=round_id, fetch=fetch
            )
        new_state = feed_update.state
        response = getattr(outcome, "response", None)
        parsed = getattr(outcome, "parsed", None)
        return PollResult(
            url=source.url,
            status=new_state.last_status,
            new=saved.new,
            updated=saved.updated,
            merged=saved.merged,
            error=outcome.error.without_tracebacks()
            if isinstance(outcome, update.Failed)
            else None,
            moved_to=response.moved_to if response is not None else None,
            duration=time.monotonic() - started,
            warning=parsed.warning if parsed is not None else None,
            unchanged=isinstance(response, Fetched) and parsed is None,
            state=new_state,
            feed_changed=_shown(new_state) != _shown(state),
        )

    async def ingest_pushed(
        self, source: FeedSource, body: bytes, content_type: str | None
    ) -> PollResult:
        """Store what the feed's WebSub hub pushed (its content distribution): `body` goes
        the way of a fetched one (`_parse_fetched`, update.decide, Store.save), as a 200
        from the feed's URL. A body that does not parse is dropped (the result carries its
        error) without counting as the feed's failure: the next poll tells. The push
        changes neither the feed's validators nor the hub it declares. Raises StoreError."""
        started = time.monotonic()
        now = utcnow()
        state = await self.db.run(Store.feed_state, source.url)
        headers = {"content-type": content_type} if content_type else {}
        response = Fetched(url=state.fetch_url, status=200, body=body, headers=headers)
        async with self._in_progress:
            try:
                outcome, items, left_out = await self._parse_fetched(source, state, response, now)
            except StoreError:
                raise
            except Exception as error:
                outcome, items, left_out = _internal_error(source, error), (), ()
        if isinstance(outcome, update.Failed):
            return PollResult(url=source.url, error=outcome.error.without_tracebacks(), state=state)
        feed_update = update.decide(
            source, state, outcome, now, self._rng.uniform(-1, 1), pushed=True
        )
        kept = replace(
            feed_update.state,
            etag=state.etag,
            last_modified=state.last_modified,
            websub_hub=state.websub_hub,
            websub_topic=state.websub_topic,
        )
        feed_update = replace(feed_update, state=kept)
        fetch = replace(
            _fetch_record(outcome, kept, now, time.monotonic() - started), outcome="pushed"
        )
        saved = await self.db.run(
            Store.save,
            feed_update,
            items,
            now=now,
            round_id=self._current_round(),
            left_out=left_out,
            fetch=fetch,
        )
        parsed = outcome.parsed
        return PollResult(
            url=source.url,
            status=200,
            new=saved.new,
            updated=saved.updated,
            merged=saved.merged,
            duration=time.monotonic() - started,
            warning=parsed.warning if parsed is not None else None,
            unchanged=parsed is None,
            state=kept,
            feed_changed=_shown(kept) != _shown(state),
        )

    async def fetcher(self) -> Fetcher:
        """The poller's HTTP client (started if need be), for WebSub's requests to hubs."""
        return await self._started_fetcher()

    async def _started_fetcher(self) -> Fetcher:
        """The fetcher, started with the first poll (a daemon with no feeds has none)."""
        async with self._fetcher_lock:
            if self._fetcher is None:
                fetcher = Fetcher(self.limits)
                await fetcher.__aenter__()
                self._fetcher = fetcher
            return self._fetcher

    def remember_holds(self, states: Iterable[FeedState], now: datetime) -> None:
        """Take the servers' pending Retry-After from stored states (at start), so a
        server that asked one feed to wait is not asked for its other feeds either."""
        for state in states:
            if state.retry_after is not None and state.retry_after > now:
                self._hold(state.fetch_url, state.retry_after)

    def _note_hold(self, state: FeedState, outcome: update.Outcome) -> None:
        error = getattr(outcome, "error", None)
        if isinstance(error, RetryLater) and error.retry_after is not None:
            self._hold(state.fetch_url, error.retry_after)

    def _hold(self, url: str, until: datetime) -> None:
        server = server_key(url)
        self._holds[server] = max(until, self._holds.get(server, until))

    def _host_held_until(self, state: FeedState, now: datetime) -> datetime | None:
        if not self._holds:
            return None
        until = self._holds.get(server_key(state.fetch_url))
        return until if until is not None and until > now else None

    async def _fetch_and_parse(
        self, source: FeedSource, state: FeedState, now: datetime
    ) -> tuple[update.Outcome, tuple[tuple[Item, str], ...], tuple[str, ...]]:
        """What the poll met, the items to store, and the keys of new entries left out
        by the feed's max_items_per_round."""
        fetcher = await self._started_fetcher()
        try:
            credentials = source.auth.credentials() if source.auth else None
            response = await fetcher.fetch(
                state, now, credentials, headers=dict(source.headers), user_agent=source.user_agent
            )
        except FeedError as error:
            return update.Failed(error), (), ()
        if not isinstance(response, Fetched):
            return update.Answered(response), (), ()
        return await self._parse_fetched(source, state, response, now)

    async def _parse_fetched(
        self, source: FeedSource, state: FeedState, response: Fetched, now: datetime
    ) -> tuple[update.Outcome, tuple[tuple[Item, str], ...], tuple[str, ...]]:
        """`_fetch_and_parse` once there is a body: fetched, or pushed by a WebSub hub."""
        body_hash = hashlib.sha256(response.body).hexdigest()
        if body_hash == state.body_hash:
            return update.Answered(response, body_hash), (), ()
        known = await self.db.run(Store.known_entries, source.url)
        retention = self.settings.retention
        try:
            processed = await run_parse(
                source.url,
                self.parsers,
                process_body,
                response,
                source.url,
                known.raw_hashes,
                now,
                now - retention,
                known.chunks,
            )
        except FeedError as error:
            return update.Failed(error, response), (), ()
        # Parsed, the body is not needed again: a poll waiting for the store (a cold round
        # queues several) holds its items, not also the feed's bytes
        response = replace(response, body=b"")
        items, left_out = _capped(processed.items, known.raw_hashes, source.max_items_per_round)
        rate = update.entry_rate([*known.recent_dates, *(item.published for item, _ in items)], now)
        answered = update.Answered(
            response, body_hash, processed.feed, processed.entry_chunks, entries_per_day=rate
        )
        return answered, items, left_out


def _capped(
    items: tuple[tuple[Item, str], ...], stored: Mapping[str, object], most: int | None
) -> tuple[tuple[tuple[Item, str], ...], tuple[str, ...]]:
    """The items to store when a poll may add at most `most` new entries (the newest;
    edits of stored ones always count), and the keys of the new ones left out."""
    new = [item for item, _ in items if item.entry_key not in stored]
    if most is None or len(new) <= most:
        return items, ()
    newest = sorted(new, key=lambda item: item.published, reverse=True)
    left_out = {item.entry_key for item in newest[most:]}
    kept = tuple(pair for pair in items if pair[0].entry_key not in left_out)
    return kept, tuple(sorted(left_out))


def _fetch_record(
    outcome: update.Outcome, state: FeedState, now: datetime, duration: float
) -> FetchRecord:
    """The poll's row of the feed's history (`status --feed`); `state` is the feed's state
    after it (`update.decide`), whose error text is the one stored."""
    if isinstance(outcome, update.Failed):
        return FetchRecord(
            fetched_at=now,
            duration=duration,
            status=state.last_status,
            outcome="error",
            error_kind=kind_of(outcome.error),
            error=state.last_error,
        )
    response = outcome.response
    if isinstance(response, NotModified):
        result = "not_modified"
    elif outcome.parsed is None:
        result = "unchanged"
    else:
        result = "ok"
    return FetchRecord(fetched_at=now, duration=duration, status=response.status, outcome=result)


def _shown(state: FeedState) -> tuple[str | None, ...]:
    """What the published outputs show of a feed's own state."""
    return state.title, state.site_url, state.icon_url


def _new_round_id() -> str:
    return uuid.uuid4().hex


def _internal_error(source: FeedSource, error: Exception) -> update.Failed:
    """A bug met on this feed's input: this feed's failure (recorded, backed off, shown by
    status), never the round's or the daemon's."""
    log.exception("%s: internal error while polling", redact_text(source.url), exc_info=error)
    return update.Failed(
        FeedError(source.url, f"internal error ({type(error).__name__}); see the log")
    )


async def poll_and_publish(
    config: Config,
    *,
    force: bool = False,
    on_result: Callable[[FeedSource, PollResult], None] | None = None,
) -> tuple[list[PollResult], int, list[str]]:
    """`poll --once`: one round over every feed, then prune and publish, and ping the
    WebSub hub if one is set. Returns the results, the number of items pruned and the
    output files that changed. (It does not subscribe to hubs: it serves no callback.)"""
    settings = config.settings
    poller = await Poller.open(settings)
    try:
        # owed until this round's publish is done: a round killed, or whose publish
        # failed, after it stored a feed's new name leaves the next round to render the
        # index and the OPML even if nothing changes in it
        site_owed = await poller.db.run(Store.get_meta, SITE_OWED) == "1"
        await poller.db.run(Store.set_meta, SITE_OWED, "1")
        results = await poller.poll_round(
            config.feeds, force=force, on_result=on_result, keep_states=False
        )
        pruned = await poller.db.run(Store.prune, utcnow() - settings.retention)
        only = None
        site = True  # the index and the OPML: unless nothing at all changed
        if not pruned:  # a prune can change any topic
            only = set().union(
                *(topics_of_feed(config, r.url) for r in results if r.changed_outputs)
            )
            site = site_owed or bool(only) or any(r.feed_changed for r in results)
        _, changed = await poller.db.run(
            index_and_publish, config, only, trust=True, keep=False, site=site
        )
        await poller.db.run(Store.set_meta, SITE_OWED, "0")
        if settings.websub_hub and changed:
            await _ping_hub(poller, settings, changed)
    finally:
        await poller.close()
    return results, pruned, changed


async def _ping_hub(poller: Poller, settings: Settings, changed: Sequence[str]) -> None:
    """`poll --once` tells settings.websub_hub about the feeds it changed, as the daemon
    does after a render (websub.Pinger); a failure is logged, not retried."""
    assert settings.websub_hub is not None
    urls = websub.feed_urls(settings.base_url, changed)
    if not urls:
        return
    failed = await websub.ping(await poller.fetcher(), settings.websub_hub, urls)
    for url, why in failed.items():
        log.warning(
            "WebSub hub %s: ping for %s failed: %s", redact_url(settings.websub_hub), url, why
        )


#: added to the parse workers' niceness (0 = same priority as the main process, 19 = lowest)
_WORKER_NICENESS = 10


class _PoolClosed(Exception):
    """Internal: the ParsePool was shut down."""


class _Worker:
    """One worker process of a ParsePool: a pebble pool of one, so that the ParsePool can
    start its workers one at a time. `busy`: a call holds it."""

    def __init__(self, pool: pebble.ProcessPool, now: float) -> None:
        self.pool = pool
        self.busy = False
        self.restarted(now)

    def restarted(self, now: float) -> None:
        """Its process (re)started: pebble replaces one past a deadline, dead or whose
        call was cancelled."""
        #: when its start-up ends: when it finishes its first call, at the latest
        #: STARTUP_SECONDS after it started (its first body may be a slow one)
        self.ready_at = now + ParsePool.STARTUP_SECONDS

    def finished_a_call(self, now: float) -> None:
        self.ready_at = min(self.ready_at, now)  # later calls leave it as the first set it


class ParsePool(Executor):
    """Worker processes for parsing and cleaning, started as they are needed: a round in
    which every feed answers 304 never pays for one, and a second starts only when bodies
    wait for the first. Parsing is CPU-bound pure Python, so processes, not threads, are
    what uses more than one core.

    A free worker takes the body that has waited longest. Another worker (up to
    `workers`) is started when a body has waited GROW_AFTER seconds counted from the end
    of the last start-up (a worker's first finished body): the bodies that queue while
    the first worker starts are not a reason for a second. A few changed feeds then cost
    one start-up, an interpreter and its imports, CPU the event loop wants (mutated bench
    round: 3.29, 3.39 and 3.75 s with two workers started, 3.13–3.18 s with one).

    `run` gives each body a deadline (`timeout` seconds of work, not counting its wait for
    a free worker): a worker still busy past it is killed and replaced, and only that
    body's feed fails. The workers are pebble's: the standard ProcessPoolExecutor cannot
    stop one worker, only break the whole pool and every body queued in it.

    `run` and the waiting are the event loop's; `shutdown` may be called from another
    thread. Bodies still waiting for a worker then fail (ParseError)."""

    #: seconds a body waits for a free worker, past the last start-up, before another is
    #: started. The backlog a mutated bench round builds while its first worker starts
    #: peaked at 18 bodies and took over a second to drain on a busy machine; with 0.25 s
    #: a second worker was started for it in one of two runs
    GROW_AFTER = 1.0
    #: seconds after which a worker that has not finished a body counts as started anyway
    STARTUP_SECONDS = 1.0

    def __init__(self, workers: int | None = None, *, timeout: float | None = None) -> None:
        self.workers = workers or max(1, len(os.sched_getaffinity(0)))
        #: seconds `run` lets one call work; None: no deadline
        self.timeout = timeout
        #: guards `_started` and `_closed` against `shutdown` from another thread
        self._lock = threading.Lock()
        self._started: list[_Worker] = []
        self._closed = False
        #: callers waiting for a free worker, oldest first: a freed worker is handed to
        #: the first, or None when they are to look again (a worker went, or all did)
        self._waiting: collections.deque[asyncio.Future[_Worker | None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> _Worker:
        import pebble  # with the first body to parse: a round of 304s never needs it

        with self._lock:
            if self._closed:
                raise _PoolClosed
            # spawn: fresh interpreters, never a fork of this process with its event loop
            # and threads; and no forkserver process kept alive beside them (40 MB). At a
            # lower priority: the event loop (fetch timeouts, the HTTP server) stays
            # responsive, and with a core per worker the main process, which fetches and
            # stores for all of them, is not made to wait for its turn. The workers still
            # get every cycle it leaves (mutated bench round 7.9 → 7.1 s, five pairs).
            pool = pebble.ProcessPool(
                1,
                initializer=os.nice,
                initargs=(_WORKER_NICENESS,),
                context=multiprocessing.get_context("spawn"),
            )
            worker = _Worker(pool, time.monotonic())
            self._started = [*self._started, worker]
            return worker

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """`fn(*args, **kwargs)` in the first worker, without a deadline, queued behind
        what it has to do (`run` is how bodies are parsed)."""
        try:
            worker = self._started[0] if self._started else self._start()
        except _PoolClosed:
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        return worker.pool.schedule(fn, args=args, kwargs=kwargs)

    def _grow_at(self, waiting_since: float) -> float | None:
        """When a body waiting since `waiting_since` starts another worker; None: never."""
        started = self._started
        if len(started) >= self.workers:
            return None
        if not started:  # the last one was discarded (broken): start one now
            return waiting_since
        return max(waiting_since, *(w.ready_at for w in started)) + self.GROW_AFTER

    async def _take(self) -> _Worker:
        """A free worker, marked busy; another started if the wait is long (see the class).
        Raises _PoolClosed once the pool was shut down."""
        loop = self._loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise _PoolClosed
            free = next((w for w in self._started if not w.busy), None)
            if free is None and not self._started:
                free = self._start()
            if free is not None:
                free.busy = True
                return free
            waiter: asyncio.Future[_Worker | None] = loop.create_future()
            self._waiting.append(waiter)
            waiting_since = time.monotonic()
            try:
                while not waiter.done():
                    grow_at = self._grow_at(waiting_since)
                    timeout = None if grow_at is None else max(0.01, grow_at - time.monotonic())
                    await asyncio.wait([waiter], timeout=timeout)
                    grow_at = self._grow_at(waiting_since)
                    if not waiter.done() and grow_at is not None and time.monotonic() >= grow_at:
                        waiter.cancel()
                        started = self._start()
                        started.busy = True
                        return started
            except BaseException:
                if waiter.done() and not waiter.cancelled() and (given := waiter.result()):
                    self._give_back(given)  # handed over as this caller was cancelled
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            given = waiter.result()
            if given is not None:
                return given  # handed over still busy: never free for another to take

    def _give_back(self, worker: _Worker) -> None:
        if worker not in self._started:  # discarded, or the pool was shut down
            self._wake_all()
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        worker.busy = False

    def _wake_all(self) -> None:
        """Every waiting caller looks again (a worker went, or all did). On the loop."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def run(
        self, fn: Callable[..., T], *args: Any, url: str, timeout: float | None = None
    ) -> T:
        """`fn(*args)` in a worker, for at most `timeout` seconds (default: the pool's).

        Raises ParseTimeout(url) past the deadline, after the worker doing it was killed.
        A call whose worker died under it (killed by the OOM killer, say) is run once more:
        the cause may be another body's. A worker found broken (its process died while
        idle) is replaced and the call goes to another."""
        import pebble

        seconds = self.timeout if timeout is None else timeout
        died = broken = 0
        while True:
            try:
                worker = await self._take()
            except _PoolClosed:
                raise ParseError(url, "the parse workers were stopped") from None
            restarted = False
            try:
                future = worker.pool.schedule(fn, args=args, timeout=seconds)
                return await asyncio.wrap_future(future)
            except TimeoutError as error:
                if error.__cause__ is not None:
                    raise  # raised by `fn` itself (pebble chains the worker's traceback)
                restarted = True
                message = f"parsing took longer than {seconds:g} s; gave up"
                raise ParseTimeout(url, message) from error
            except pebble.ProcessExpired as error:
                restarted = True
                died += 1
                if died > 1:
                    message = f"the parsing process died (exit status {error.exitcode})"
                    raise ParseError(url, message) from error
            except (BrokenProcessPool, RuntimeError):
                # the worker's pool broke (pebble's "Unexpected error within the Pool"):
                # each broken one is replaced; a bound, should every new one break too
                broken += 1
                if worker.pool.active or broken > self.workers:
                    raise
                await self._discard(worker)
            except asyncio.CancelledError:
                restarted = True  # pebble stops the process of a call cancelled under way
                raise
            finally:
                if restarted:
                    worker.restarted(time.monotonic())
                else:
                    worker.finished_a_call(time.monotonic())
                self._give_back(worker)

    async def _discard(self, worker: _Worker) -> None:
        """Stops a broken worker; a call that needs one starts a fresh one."""
        with self._lock:
            if worker not in self._started:
                return
            self._started = [w for w in self._started if w is not worker]
        worker.pool.stop()
        await asyncio.to_thread(_join, worker.pool)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            started, self._started = self._started, []
        for worker in started:
            if cancel_futures:
                worker.pool.stop()  # kills what is running
            else:
                worker.pool.close()  # what is running finishes
        # callers waiting for a worker fail (`run`); told on their loop's thread
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._wake_all)
        if wait:
            for worker in started:
                _join(worker.pool)


def _join(pool: pebble.ProcessPool) -> None:
    """Waits for the pool's workers to end. pebble drops the locks of the workers' channel
    before it stops them, so a worker still starting then (one just started in place of a
    killed one, or in a round over in a moment) cannot unpickle them and prints a
    traceback: they are kept until the workers are gone."""
    manager = getattr(getattr(pool, "_pool_manager", None), "worker_manager", None)
    mutex = getattr(getattr(manager, "workers_channel", None), "mutex", None)
    kept: tuple[object, ...] = (mutex.reader_mutex, mutex.writer_mutex) if mutex else ()
    pool.join()
    del kept


async def run_parse(url: str, executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` for the feed at `url` in `executor`: in a ParsePool with its deadline
    (ParseTimeout past it); in another Executor, or None (the loop's default), without."""
    if isinstance(executor, ParsePool):
        return await executor.run(fn, *args, url=url)
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


def describe(source: FeedSource, result: PollResult) -> str:
    """One log line per feed: readable in a terminal and in journald. Credentials in the
    feed's URL, a redirect's or an error message are shown as "***"; control characters
    (a server's reason phrase may hold them) are not shown."""
    return single_line(redact_text(_describe(source, result)))


def _describe(source: FeedSource, result: PollResult) -> str:
    name = source.name or source.url
    if result.skipped:
        return f"{name}: {result.skipped}"
    if result.error is not None:
        message = result.error.message
        if result.status and str(result.status) not in message:
            message += f" (HTTP {result.status})"
        return f"{name}: error: {message} [{source.url}]"
    parts = [f"HTTP {result.status}"]
    if result.status == 304:
        parts.append("not modified")
    elif result.unchanged:
        parts.append("unchanged")
    else:
        parts.append(f"{result.new} new, {result.updated} updated")
        if result.merged:
            parts.append(f"{result.merged} already seen elsewhere")
    parts.append(f"{result.duration:.2f}s")
    line = f"{name}: " + ", ".join(parts)
    if result.moved_to:
        line += f"; moved permanently to {result.moved_to} (update feeds.yaml)"
    if result.warning:
        line += f"; warning: {result.warning}"
    return line
