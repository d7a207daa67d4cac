"""Where a feed's state changes: one pure decision per poll. No I/O.

    FeedState (read from the store before the poll)
      + Outcome (what the poll met: failed, 304, same body, parsed)
      ─ decide() ─► FeedUpdate (the new state, its next due time, what to write)

The poller (pipeline.Poller) fetches and parses, asks `decide`, and the store writes the
update with the poll's items in one transaction (`Store.save`). The daemon schedules the
feed at `FeedUpdate.state.next_due`; nobody reads the state back. When the daemon starts
or reloads, `due_at_start` says when each feed is due.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from aggregator.errors import FeedError, Gone, HTTPStatusError, RetryLater
from aggregator.fetch import cache_max_age
from aggregator.model import FeedSource, FeedState, Fetched, NotModified, ParsedFeed
from aggregator.text import single_line
from aggregator.timeutil import to_iso
from aggregator.urls import redact_text

#: a feed's last error as stored and shown is at most this long
MAX_ERROR_CHARS = 500
#: failures back off exponentially up to this
MAX_BACKOFF = timedelta(hours=24)
#: a feed's own hint (RSS ttl, Cache-Control max-age) may lengthen its interval up to this
MAX_HINT = timedelta(hours=24)
_MAX_HINT_SECONDS = int(MAX_HINT.total_seconds())
#: due times after a success are spread by up to this fraction of the interval, so feeds
#: added together do not stay in lockstep
JITTER = 0.1
#: the soonest a feed is polled again after a poll
MIN_GAP = timedelta(seconds=1)
#: a feed's entry rate counts the entries dated within this window
RATE_WINDOW = timedelta(days=30)
#: fewer dated entries than this in the window: their span says too little, so the rate
#: is taken over the whole window (slower, the polite side)
RATE_MIN_ENTRIES = 3
#: the adaptive interval polls this many times per expected new entry
POLLS_PER_ENTRY = 4
#: a feed whose WebSub hub pushes it (an active subscription, websub.py) is polled at
#: least this far apart, as a fallback for pushes lost on the way; max_interval does not
#: shorten it, a feed's own `interval` in feeds.yaml stays as it is
PUSHED_INTERVAL = timedelta(hours=6)


# --- what a poll met --------------------------------------------------------------------


@dataclass(frozen=True)
class Failed:
    """The fetch failed, or the body it brought could not be parsed (`response` set)."""

    error: FeedError
    response: Fetched | NotModified | None = None


@dataclass(frozen=True)
class Answered:
    """A 304, a body identical to the last one (`parsed` None), or a body parsed."""

    response: Fetched | NotModified
    body_hash: str | None = None
    #: the feed's own fields when the body was parsed
    parsed: ParsedFeed | None = None
    #: the body's entry chunks for partial parsing next time (see partial.py); None: keep
    entry_chunks: tuple[tuple[str, str], ...] | None = None
    #: with `parsed`: the feed's new entries a day (entry_rate), None when it dates none
    entries_per_day: float | None = None


#: what a fetched poll met (a feed not fetched, see `skip_reason`, changes nothing)
Outcome = Failed | Answered


@dataclass(frozen=True)
class FeedUpdate:
    """Everything a poll writes about the feed itself."""

    state: FeedState
    #: entry chunks to store (None: leave the stored ones)
    entry_chunks: tuple[tuple[str, str], ...] | None = None


# --- decisions --------------------------------------------------------------------------


def feed_fingerprint(source: FeedSource) -> str:
    """Changes when the user edits the feed's entry in feeds.yaml: a gone feed is retried."""
    text = "\n".join(
        [
            source.url,
            source.name or "",
            ",".join(source.tags),
            str(source.interval),
            source.user_agent or "",
            repr(source.headers),  # hashed with the rest: never stored as such
        ]
    )
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def still_gone(source: FeedSource, state: FeedState) -> bool:
    """Whether a feed found gone (410) stays so: its entry in feeds.yaml was not edited
    since."""
    return state.gone and state.gone_fingerprint == feed_fingerprint(source)


def skip_reason(source: FeedSource, state: FeedState, now: datetime, force: bool) -> str | None:
    """Why this feed must not be fetched now, or None. `force` overrides a server's word
    (gone, Retry-After), never the config's (`enabled: false`)."""
    if not source.enabled:
        return "skipped: disabled in the config (enabled: false)"
    if force:
        return None
    if still_gone(source, state):
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


def entry_rate(dates: Iterable[datetime], now: datetime) -> float | None:
    """New entries a day, from the publication dates of a feed's entries (stored and
    just read; undated ones left out); None when there are none.

    Counted over the entries dated within RATE_WINDOW, divided by the time since the oldest
    of them: a feed that lists only its last ten entries, published this morning, has a
    high rate, one whose newest entry is a month old has 0."""
    dated = [d for d in dates if d <= now]
    if not dated:
        return None
    recent = [d for d in dated if now - d <= RATE_WINDOW]
    if not recent:
        return 0.0
    span = RATE_WINDOW if len(recent) < RATE_MIN_ENTRIES else now - min(recent)
    return len(recent) / max(span / timedelta(days=1), 1 / 24)


def interval_for(
    source: FeedSource,
    entries_per_day: float | None,
    hint_seconds: int | None,
    pushed: bool = False,
) -> timedelta:
    """The interval a feed is polled at (explain_interval says why)."""
    return _interval_and_reason(source, entries_per_day, hint_seconds, pushed)[0]


def explain_interval(
    source: FeedSource, state: FeedState | None, pushed: bool = False
) -> tuple[timedelta, str]:
    """The interval the feed is polled at now, and why, in a few words (for `status`).
    `pushed`: its WebSub hub pushes it (an active subscription)."""
    if state is None:
        return _interval_and_reason(source, None, None, pushed)
    return _interval_and_reason(source, state.entries_per_day, state.hint_seconds, pushed)


def _interval_and_reason(
    source: FeedSource,
    entries_per_day: float | None,
    hint_seconds: int | None,
    pushed: bool = False,
) -> tuple[timedelta, str]:
    """The interval a feed is polled at, and why in a few words.

    A feed with its own `interval` in feeds.yaml is polled at that. Otherwise the interval
    follows the feed's entry rate: POLLS_PER_ENTRY polls per expected new entry, within
    min_interval and max_interval; settings.interval while the rate is not known. The
    feed's own hint (RSS ttl, Cache-Control max-age) can lengthen either, up to MAX_HINT.
    While its WebSub hub pushes it (`pushed`), an adaptive interval is PUSHED_INTERVAL
    at least.
    """
    low, high = source.min_interval, source.max_interval
    if low is None or high is None:
        interval, reason = source.interval, "set for this feed"
    elif entries_per_day is None:
        interval, reason = source.interval, "default: its rhythm is not known yet"
    elif entries_per_day <= 0:
        interval, reason = high, "no entry in 30 days: max_interval"
    else:
        wanted = timedelta(days=1) / (entries_per_day * POLLS_PER_ENTRY)
        interval = min(max(wanted, low), high)
        reason = f"follows its rhythm: {_rate_words(entries_per_day)}"
        if wanted > high:
            reason += ", at most max_interval"
        elif wanted < low:
            reason += ", at least min_interval"
    if pushed and low is not None and interval < PUSHED_INTERVAL:
        interval, reason = PUSHED_INTERVAL, "pushed by its WebSub hub: polled as a fallback"
    if hint_seconds:
        hinted = timedelta(seconds=min(hint_seconds, _MAX_HINT_SECONDS))
        if hinted > interval:
            return hinted, "the feed asks for it (ttl or Cache-Control)"
    return interval, reason


#: the start of each reason explain_interval gives → its one word in `status`'s table
_REASON_LABELS = (
    ("set for this feed", "set"),
    ("default", "default"),
    ("no entry in 30 days", "quiet"),
    ("follows its rhythm", "rhythm"),
    ("the feed asks", "feed asks"),
    ("pushed", "pushed"),
)


def interval_label(reason: str) -> str:
    """A reason of explain_interval in a word or two, for a table cell."""
    return next((label for head, label in _REASON_LABELS if reason.startswith(head)), "")


def _rate_words(entries_per_day: float) -> str:
    if entries_per_day >= 1:
        return f"{entries_per_day:.3g} entries a day"
    return f"{entries_per_day * 7:.2g} entries a week"


def hold(old: FeedState, until: datetime) -> FeedUpdate:
    """The state of a feed not fetched because its server asked (Retry-After, through
    another feed of the host) to wait until `until`: due then, nothing else changed."""
    return FeedUpdate(replace(old, retry_after=until, next_due=max(until, old.next_due or until)))


def poll_hint(headers: Mapping[str, str], ttl_minutes: int | None) -> int | None:
    """Seconds the feed itself asks us to wait between polls, if it says: at most
    MAX_HINT, which is all that is ever honoured. A server's number is unbounded
    (`max-age=99999999999999999999`), and neither timedelta nor SQLite takes one that
    large: kept as it came, it failed the poll (and with it a `poll --once` round)."""
    hints = [h for h in (cache_max_age(headers), ttl_minutes and ttl_minutes * 60) if h]
    return min(max(hints), _MAX_HINT_SECONDS) if hints else None


def decide(
    source: FeedSource,
    old: FeedState,
    outcome: Outcome,
    now: datetime,
    jitter: float = 0.0,
    *,
    pushed: bool = False,
) -> FeedUpdate:
    """The feed's state after a poll (or a push from its WebSub hub) that met `outcome`.

    `jitter` in [-1, 1] (drawn by the caller) spreads a successful poll's next due time by
    that fraction of `JITTER` times the interval. `pushed`: the feed's hub pushes it, so
    it is polled less often (`PUSHED_INTERVAL`). A parsed body says which WebSub hub the
    feed declares now (the first; its self URL, else the URL fetched, is the topic); a 304
    or the same body keeps what the last one said."""
    if isinstance(outcome, Failed):
        return FeedUpdate(_failed(source, old, outcome, now))
    response = outcome.response
    parsed = outcome.parsed
    if parsed is not None:
        hint = poll_hint(response.headers, parsed.ttl_minutes)
        rate = outcome.entries_per_day
    else:  # no body read: the hint the last one gave still holds unless the headers say
        hint = poll_hint(response.headers, None) or old.hint_seconds
        rate = old.entries_per_day
    interval = interval_for(source, rate, hint, pushed)
    due = next_due(interval, now, 0) + interval * (JITTER * max(-1.0, min(1.0, jitter)))
    state = replace(
        _moved(old, response),
        etag=response.etag or old.etag,
        last_modified=response.last_modified or old.last_modified,
        body_hash=outcome.body_hash or old.body_hash,
        last_fetched=now,
        last_status=response.status,
        last_error=None,
        failures=0,
        gone=False,
        gone_fingerprint=None,
        retry_after=None,
        hint_seconds=hint,
        entries_per_day=rate,
        next_due=max(due, now + MIN_GAP),
        title=(single_line(parsed.title) or old.title) if parsed else old.title,
        site_url=(parsed.site_url or old.site_url) if parsed else old.site_url,
        icon_url=(parsed.icon_url or old.icon_url) if parsed else old.icon_url,
    )
    if parsed is not None:
        hub = parsed.hubs[0] if parsed.hubs else None
        topic = (parsed.self_url or response.url) if hub else None
        state = replace(state, websub_hub=hub, websub_topic=topic)
    return FeedUpdate(state, entry_chunks=outcome.entry_chunks if parsed else None)


def _moved(old: FeedState, response: Fetched | NotModified | None) -> FeedState:
    """The state with a permanent redirect the response followed, if any."""
    if response is None or not response.moved_to:
        return old
    return replace(old, fetch_url=response.moved_to, moved_to=response.moved_to)


def _failed(source: FeedSource, old: FeedState, outcome: Failed, now: datetime) -> FeedState:
    # A parse failure keeps the validators of the last body we could read (only the move
    # is taken), so the next poll fetches the body again rather than taking a 304 (or the
    # same bytes) as confirming a result that failed.
    error = outcome.error
    failures = old.failures + 1
    gone = isinstance(error, Gone)
    due = next_due(source.interval, now, failures)
    retry_after = error.retry_after if isinstance(error, RetryLater) else None
    if retry_after is not None:
        due = max(due, retry_after)
    return replace(
        _moved(old, outcome.response),
        last_fetched=now,
        last_status=error.status if isinstance(error, HTTPStatusError) else None,
        # stored as shown: a credential quoted in a message never reaches the database;
        # one line of bounded length: a server's reason phrase is part of some messages
        last_error=single_line(redact_text(error.message))[:MAX_ERROR_CHARS],
        failures=failures,
        gone=gone,
        gone_fingerprint=feed_fingerprint(source) if gone else None,
        retry_after=retry_after,
        next_due=due,
    )


def due_at_start(
    source: FeedSource, state: FeedState | None, now: datetime, *, edited: bool, order: int = 0
) -> datetime | None:
    """When the daemon polls a feed after it starts (or after a reload that `edited` the
    feed's entry or added it); None for a feed that stays gone or is disabled.

    Never polled: now, `order` × 10 ms apart so a long list starts in config order. Gone
    but edited since: now. Edited or added and healthy: a full interval after the last
    poll (the new interval applies at once). Else when it was due, never before a
    server's Retry-After."""
    if not source.enabled:
        return None
    if state is None or state.last_fetched is None:
        return now + timedelta(milliseconds=10 * order)
    if still_gone(source, state):
        return None
    if state.gone:
        due = now
    elif edited and state.failures == 0:
        due = state.last_fetched + interval_for(source, state.entries_per_day, state.hint_seconds)
    else:
        due = state.next_due or now
    if state.retry_after and state.retry_after > due:
        due = state.retry_after
    return max(due, now)
