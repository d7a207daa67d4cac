"""The pipeline: polling one feed, a round over every feed, and publishing the topics.

    FeedSource + FeedState ─ should_skip? (gone, Retry-After) ─► PollResult(skipped)
      ─► fetch.Fetcher.fetch ─► NotModified ─────────────────► store validators
                              ─► Fetched ─ same body hash? ──► store validators
      ─► ingest.process_body, in a parse worker:
           parse.parse_feed (partial: only the entries changed since) ─► ParsedFeed
           ─► dedupe.entry_key + raw hash: entries unchanged since last time are not cleaned
           ─► clean.clean_entry ─► dedupe.content_hash, index_keys ─► Item
      ─► store.save_poll: dedupe against stored stories, one transaction per feed
    publish(): per topic store.newest_items ─► render.* ─► publish.write_outputs

Only fetching runs concurrently; parsing and cleaning run in an executor (CPU work off
the event loop); the store is written from the caller's thread. The CLI's `poll --once`
and the daemon call the same functions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from aggregator import render, topics
from aggregator.errors import (
    FeedError,
    Gone,
    HTTPStatusError,
    ParseError,
    ParseTimeout,
    RetryLater,
    StoreError,
)
from aggregator.fetch import Fetcher, cache_max_age
from aggregator.ingest import process_body
from aggregator.model import (
    Config,
    FeedSource,
    FeedState,
    Fetched,
    FetchLimits,
    PollResult,
    PublishedItem,
    SourceRef,
    Topic,
)
from aggregator.publish import write_outputs
from aggregator.store import Store, StoreThread
from aggregator.text import single_line
from aggregator.timeutil import to_iso, utcnow

if TYPE_CHECKING:
    import pebble
from aggregator.urls import redact_text

log = logging.getLogger("aggregator")

#: a feed's last error as stored and shown is at most this long
MAX_ERROR_CHARS = 500
#: failures back off exponentially up to this
MAX_BACKOFF = timedelta(hours=24)
#: a feed's own hint (RSS ttl, Cache-Control max-age) may lengthen its interval up to this
MAX_HINT = timedelta(hours=24)


# --- pure decisions ---------------------------------------------------------------------


T = TypeVar("T")


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


def feed_fingerprint(source: FeedSource) -> str:
    """Changes when the user edits the feed's entry in feeds.yaml: a gone feed is retried."""
    text = "\n".join([source.url, source.name or "", ",".join(source.tags), str(source.interval)])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def still_gone(source: FeedSource, state: FeedState, gone_fingerprint: str | None) -> bool:
    """Whether a feed found gone (410) stays so: its entry in feeds.yaml was not edited
    since. The one place this rule lives (the round and the daemon's schedule ask it)."""
    return state.gone and gone_fingerprint == feed_fingerprint(source)


def should_skip(state: FeedState, now: datetime, force: bool) -> str | None:
    """Why this feed must not be fetched now, or None."""
    if force:
        return None
    if state.gone:
        return "skipped: gone (HTTP 410); edit its entry in the config or use --force"
    if state.retry_after is not None and state.retry_after > now:
        return f"skipped: server asked to wait until {to_iso(state.retry_after)}"
    return None


def next_due(interval: timedelta, now: datetime, failures: int) -> datetime:
    """When to poll again: the interval, doubled per consecutive failure, capped."""
    if failures <= 0:
        return now + interval
    backoff: timedelta = interval * (2 ** min(failures, 16))
    cap: timedelta = max(MAX_BACKOFF, interval)
    return now + min(backoff, cap)


def effective_interval(configured: timedelta, hint_seconds: int | None) -> timedelta:
    """The feed's hint can lengthen the configured interval, never shorten it."""
    if not hint_seconds:
        return configured
    return max(configured, min(timedelta(seconds=hint_seconds), MAX_HINT))


def poll_hint(headers: Mapping[str, str], ttl_minutes: int | None) -> int | None:
    """Seconds the feed itself asks us to wait between polls, if it says."""
    hints = [h for h in (cache_max_age(headers), ttl_minutes and ttl_minutes * 60) if h]
    return max(hints) if hints else None


# --- polling ----------------------------------------------------------------------------


async def poll_feed(
    source: FeedSource,
    db: StoreThread,
    fetcher: Fetcher,
    *,
    retention: timedelta,
    force: bool = False,
    executor: Executor | None = None,
    now: datetime | None = None,
    stored: tuple[FeedState, str | None] | None = None,
) -> PollResult:
    """Poll one feed and store what it brings. Never raises for a feed's own fault; a
    StoreError (the database cannot be written) propagates, nothing of the poll stored.

    `stored` is the feed's state and gone fingerprint when the caller read them already
    (a round reads every feed's in one call), else they are read here."""
    started = time.monotonic()
    now = now or utcnow()
    fingerprint = feed_fingerprint(source)
    if stored is None:
        stored = await db.run(_state_and_gone_fingerprint, source.url)
    state, gone_fingerprint = stored
    if state.gone and not still_gone(source, state, gone_fingerprint):
        state = replace(state, gone=False)
    skip = should_skip(state, now, force)
    if skip is not None:
        return PollResult(url=source.url, skipped=skip, status=state.last_status)

    try:
        return await _fetch_and_store(
            source, db, fetcher, state, now, started, fingerprint, retention, executor
        )
    except StoreError:
        raise
    except Exception as error:
        # A bug met on this feed's input: this feed's failure (recorded, backed off, shown
        # by status), never the round's or the daemon's.
        log.exception("%s: internal error while polling", redact_text(source.url))
        failure = FeedError(source.url, f"internal error ({type(error).__name__}); see the log")
        return await _record_failure(db, source, state, failure, now, started, fingerprint)


async def _fetch_and_store(
    source: FeedSource,
    db: StoreThread,
    fetcher: Fetcher,
    state: FeedState,
    now: datetime,
    started: float,
    fingerprint: str,
    retention: timedelta,
    executor: Executor | None,
) -> PollResult:
    try:
        credentials = source.auth.credentials() if source.auth else None
        response = await fetcher.fetch(state, now, credentials)
    except FeedError as error:
        return await _record_failure(db, source, state, error, now, started, fingerprint)

    moved_to = response.moved_to or state.moved_to
    hint = poll_hint(response.headers, None) or state.hint_seconds
    # What a parse failure is recorded against: the move is real, but the validators
    # stay those of the last body we could read, so the next poll fetches the body again
    # rather than taking a 304 (or the same bytes) as confirming a result that failed.
    unparsed = replace(state, fetch_url=response.moved_to or state.fetch_url, moved_to=moved_to)
    state = replace(
        state,
        fetch_url=response.moved_to or state.fetch_url,
        moved_to=moved_to,
        etag=response.etag or state.etag,
        last_modified=response.last_modified or state.last_modified,
        last_fetched=now,
        last_status=response.status,
        last_error=None,
        failures=0,
        gone=False,
        retry_after=None,
        hint_seconds=hint,
        next_due=next_due(effective_interval(source.interval, hint), now, 0),
    )
    if not isinstance(response, Fetched):
        await db.run(Store.save_state, state)
        return _result(source, state, started, moved_to=response.moved_to)

    body_hash = hashlib.sha256(response.body).hexdigest()
    if body_hash == state.body_hash:
        await db.run(Store.save_state, state)
        return _result(source, state, started, moved_to=response.moved_to, unchanged=True)

    known, known_chunks = await db.run(_known_entries, source.url)
    try:
        processed = await run_parse(
            source.url,
            executor,
            process_body,
            response,
            source.url,
            known,
            now,
            now - retention,
            known_chunks,
        )
    except FeedError as error:
        return await _record_failure(db, source, unparsed, error, now, started, fingerprint)

    feed = processed.feed
    hint = poll_hint(response.headers, feed.ttl_minutes)
    state = replace(
        state,
        body_hash=body_hash,
        title=single_line(feed.title) or state.title,
        site_url=feed.site_url or state.site_url,
        hint_seconds=hint,
        next_due=next_due(effective_interval(source.interval, hint), now, 0),
    )
    outcome = await db.run(
        Store.save_poll, state, processed.items, now, entry_chunks=processed.entry_chunks
    )
    return _result(
        source,
        state,
        started,
        moved_to=response.moved_to,
        new=outcome.new,
        updated=outcome.updated,
        merged=outcome.merged,
        warning=feed.warning,
    )


def _state_and_gone_fingerprint(store: Store, url: str) -> tuple[FeedState, str | None]:
    return store.feed_state(url), store.gone_fingerprint(url)


def states_and_gone_fingerprints(store: Store) -> tuple[dict[str, FeedState], dict[str, str]]:
    """Every feed's stored state, and the config fingerprints of the gone ones."""
    return store.feed_states(), store.gone_fingerprints()


def _known_entries(store: Store, url: str) -> tuple[dict[str, str | None], dict[str, str]]:
    return store.known_raw_hashes(url), store.known_entry_chunks(url)


def _result(source: FeedSource, state: FeedState, started: float, **fields: object) -> PollResult:
    return PollResult(
        url=source.url,
        status=state.last_status,
        duration=time.monotonic() - started,
        **fields,  # type: ignore[arg-type]
    )


async def _record_failure(
    db: StoreThread,
    source: FeedSource,
    state: FeedState,
    error: FeedError,
    now: datetime,
    started: float,
    fingerprint: str,
) -> PollResult:
    failures = state.failures + 1
    state = replace(
        state,
        last_fetched=now,
        last_status=error.status if isinstance(error, HTTPStatusError) else None,
        # stored as shown: a credential quoted in a message never reaches the database
        # one line of bounded length: a server's reason phrase is part of some messages
        last_error=single_line(redact_text(error.message))[:MAX_ERROR_CHARS],
        failures=failures,
        gone=isinstance(error, Gone),
        retry_after=error.retry_after if isinstance(error, RetryLater) else None,
        next_due=next_due(source.interval, now, failures),
    )
    if isinstance(error, RetryLater) and error.retry_after and state.next_due:
        state = replace(state, next_due=max(state.next_due, error.retry_after))
    await db.run(Store.save_state, state, fingerprint if state.gone else None)
    return PollResult(
        url=source.url,
        status=state.last_status,
        error=error,
        duration=time.monotonic() - started,
    )


#: added to the parse workers' niceness (0 = same priority as the main process, 19 = lowest)
_WORKER_NICENESS = 10


class ParsePool(Executor):
    """Worker processes for parsing and cleaning, started on first use: a round in which
    every feed answers 304 never pays for them. Parsing is CPU-bound pure Python, so
    processes, not threads, are what uses more than one core.

    `run` gives each body a deadline (`timeout` seconds of work, not counting its wait for
    a free worker): a worker still busy past it is killed and replaced, and only that
    body's feed fails. The pool is pebble's: the standard ProcessPoolExecutor cannot stop
    one worker, only break the whole pool and every body queued in it."""

    def __init__(self, workers: int | None = None, *, timeout: float | None = None) -> None:
        self.workers = workers or max(1, len(os.sched_getaffinity(0)))
        #: seconds `run` lets one call work; None: no deadline
        self.timeout = timeout
        self._pool: pebble.ProcessPool | None = None

    def _started(self) -> pebble.ProcessPool:
        import pebble  # with the first body to parse: a round of 304s never needs it

        if self._pool is None:
            # spawn: fresh interpreters, never a fork of this process with its event loop
            # and threads; and no forkserver process kept alive beside them (40 MB)
            context = multiprocessing.get_context("spawn")
            # Workers at a lower priority: the event loop (fetch timeouts, the HTTP server)
            # stays responsive, and with a core per worker the main process, which fetches
            # and stores for all of them, is not made to wait for its turn. The workers still
            # get every cycle it leaves (mutated bench round 7.9 → 7.1 s, five pairs).
            self._pool = pebble.ProcessPool(
                self.workers, initializer=os.nice, initargs=(_WORKER_NICENESS,), context=context
            )
        return self._pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """`fn(*args, **kwargs)` in a worker, without a deadline."""
        return self._started().schedule(fn, args=args, kwargs=kwargs)

    async def run(
        self, fn: Callable[..., T], *args: Any, url: str, timeout: float | None = None
    ) -> T:
        """`fn(*args)` in a worker, for at most `timeout` seconds (default: the pool's).

        Raises ParseTimeout(url) past the deadline, after the worker doing it was killed.
        A call whose worker died under it (killed by the OOM killer, say) or whose pool
        broke is run once more in a fresh one: the cause may be another body's."""
        import pebble

        seconds = self.timeout if timeout is None else timeout
        for attempt in range(2):
            pool = self._started()
            try:
                future = pool.schedule(fn, args=args, timeout=seconds)
                return await asyncio.wrap_future(future)
            except TimeoutError as error:
                if error.__cause__ is not None:
                    raise  # raised by `fn` itself (pebble chains the worker's traceback)
                message = f"parsing took longer than {seconds:g} s; gave up"
                raise ParseTimeout(url, message) from error
            except pebble.ProcessExpired as error:
                if attempt:
                    message = f"the parsing process died (exit status {error.exitcode})"
                    raise ParseError(url, message) from error
            except (BrokenProcessPool, RuntimeError):
                # every worker gone at once (pebble's "Unexpected error within the Pool")
                if attempt or pool.active:
                    raise
                await self._discard(pool)
        raise AssertionError("unreachable")

    async def _discard(self, pool: pebble.ProcessPool) -> None:
        """Stops a broken pool; the next call starts a fresh one."""
        if self._pool is pool:
            self._pool = None
            pool.stop()
            await asyncio.to_thread(_join, pool)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if cancel_futures:
                pool.stop()  # kills what is running, drops what is queued
            else:
                pool.close()  # what is queued still runs
            if wait:
                _join(pool)


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


async def poll_round(
    config: Config,
    db: StoreThread,
    *,
    force: bool = False,
    limits: FetchLimits | None = None,
    executor: Executor | None = None,
    feeds: Sequence[FeedSource] | None = None,
    on_result: Callable[[FeedSource, PollResult], None] | None = None,
) -> list[PollResult]:
    """Poll `feeds` (default: every configured feed) concurrently; results in config order.

    Without an `executor`, bodies are parsed in a ParsePool of one process per core, each
    for at most `parse_timeout`; a plain Executor passed in gives them no deadline."""
    sources = list(config.feeds if feeds is None else feeds)
    if executor is None:
        with ParsePool(timeout=config.settings.parse_timeout.total_seconds()) as pool:
            return await poll_round(
                config,
                db,
                force=force,
                limits=limits,
                executor=pool,
                feeds=sources,
                on_result=on_result,
            )

    # One time for the round: copies of a story fetched in it count as seen together.
    now = utcnow()
    limits = limits or config.settings.fetch_limits()
    # Feeds between "fetch started" and "stored": bounds the bodies held in memory (and
    # queued for the parser) when fetching outpaces parsing, as it does on a fast network.
    in_progress = asyncio.Semaphore(limits.max_connections)

    # every feed's state in one call, not one per feed: a round of 304s is mostly this
    states, gone_fingerprints = await db.run(states_and_gone_fingerprints)

    async def one(source: FeedSource, fetcher: Fetcher) -> PollResult:
        state = states.get(source.url) or FeedState(url=source.url, fetch_url=source.url)
        async with in_progress:
            result = await poll_feed(
                source,
                db,
                fetcher,
                retention=config.settings.retention,
                force=force,
                executor=executor,
                now=now,
                stored=(state, gone_fingerprints.get(source.url)),
            )
        if on_result is not None:
            on_result(source, result)
        return result

    async with Fetcher(limits) as fetcher:
        return list(await asyncio.gather(*(one(source, fetcher) for source in sources)))


async def poll_and_publish(
    config: Config,
    *,
    force: bool = False,
    on_result: Callable[[FeedSource, PollResult], None] | None = None,
) -> tuple[list[PollResult], int, list[str]]:
    """`poll --once`: one round over every feed, then prune and publish. Returns the
    results, the number of items pruned and the output files that changed."""
    db = await StoreThread.open(config.settings.database)
    try:
        results = await poll_round(config, db, force=force, on_result=on_result)
        pruned = await db.run(Store.prune, utcnow() - config.settings.retention)
        _, changed = await db.run(index_and_publish, config)
    finally:
        await db.close(timeout=CLOSE_SECONDS)
    return results, pruned, changed


#: closing the database waits this long for a call stuck on another process's lock
CLOSE_SECONDS = 5.0


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


# --- publishing -------------------------------------------------------------------------


def display_names(config: Config, states: Mapping[str, FeedState]) -> dict[str, str]:
    """Feed URL → the name users see: the config's name, else the feed's title, else URL."""
    names = {}
    for source in config.feeds:
        state = states.get(source.url)
        names[source.url] = source.name or (state.title if state else None) or source.url
    return names


def topic_items(
    config: Config, store: Store, topic: Topic, names: dict[str, str]
) -> list[PublishedItem]:
    selected = [s.url for s in config.feeds if topics.selects_feed(topic, s)]
    matcher = topics.TopicMatcher(topic)

    def accept(item: PublishedItem, text: str) -> bool:
        return matcher.matches([item.title, item.summary_html, text, *item.categories])

    items = store.newest_items(selected, config.settings.max_items, accept, names)
    for term in matcher.slow_terms:
        log.warning(
            "topic %s: the term %s took longer than %g s to search some items, which it"
            " did not match; simplify it",
            topic.slug,
            term,
            topics.SEARCH_TIMEOUT,
        )
    return items


def render_outputs(
    config: Config, store: Store, only: Collection[str] | None = None
) -> dict[str, bytes]:
    """Published file name → bytes, for every topic or the slugs in `only`; the index and
    OPML always. Same database, same bytes."""
    base_url = config.settings.base_url
    states = store.feed_states()
    names = display_names(config, states)
    outputs: dict[str, bytes] = {}
    for topic in config.topics:
        if only is not None and topic.slug not in only:
            continue
        items = topic_items(config, store, topic, names)
        outputs.update(render.render_topic(topic, items, base_url))
    outputs["index.html"] = render.render_index(config.topics, base_url)
    sources = []
    for source in config.feeds:
        state = states.get(source.url)
        site = state.site_url if state and state.site_url else source.url
        sources.append(SourceRef(title=names[source.url], url=site, feed_url=source.url))
    outputs["feeds.opml"] = render.render_opml("aggregator sources", sources)
    return outputs


def output_names(config: Config) -> list[str]:
    """Every file name the config publishes."""
    return render.output_names(config.topics)


def topics_of_feed(config: Config, feed_url: str) -> set[str]:
    """Slugs of the topics that select this feed: the ones a poll of it can change."""
    return {
        topic.slug
        for topic in config.topics
        for source in config.feeds
        if source.url == feed_url and topics.selects_feed(topic, source)
    }


def index_and_publish(
    store: Store, config: Config, only: Collection[str] | None = None
) -> tuple[dict[str, bytes], list[str]]:
    """After a round or a burst of polls: the new items join the search index in one
    batch, then `publish`."""
    store.index_for_search()
    return publish(store, config, only)


def publish(
    store: Store, config: Config, only: Collection[str] | None = None
) -> tuple[dict[str, bytes], list[str]]:
    """Render outputs (every topic, or those in `only`) and write the ones whose bytes
    changed; returns what was rendered and the names written."""
    outputs = render_outputs(config, store, only)
    return outputs, write_outputs(config.settings.output_dir, outputs)
