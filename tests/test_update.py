"""A feed's state after a poll (update.py), in process: skipping, gone, backoff, hints,
due times."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.errors import FeedError, Gone, HTTPStatusError, ParseError, RetryLater
from aggregator.model import FeedSource, FeedState, Fetched, NotModified, ParsedFeed
from aggregator.update import (
    JITTER,
    MAX_BACKOFF,
    MIN_GAP,
    Answered,
    Failed,
    decide,
    due_at_start,
    entry_rate,
    explain_interval,
    feed_fingerprint,
    interval_for,
    next_due,
    poll_hint,
    skip_reason,
    still_gone,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SOURCE = FeedSource(url="https://a.example/f", name="A")
STATE = FeedState(url=SOURCE.url, fetch_url=SOURCE.url)


def test_a_gone_feed_stays_gone_until_its_config_entry_changes() -> None:
    gone = replace(STATE, gone=True, gone_fingerprint=feed_fingerprint(SOURCE))
    assert still_gone(SOURCE, gone)
    assert not still_gone(replace(SOURCE, interval=timedelta(hours=2)), gone)
    assert not still_gone(replace(SOURCE, name="B"), gone)
    assert not still_gone(SOURCE, replace(gone, gone=False))
    assert not still_gone(SOURCE, replace(gone, gone_fingerprint=None))


def test_gone_and_retry_after_skip_unless_forced() -> None:
    gone = replace(STATE, gone=True, gone_fingerprint=feed_fingerprint(SOURCE))
    assert skip_reason(SOURCE, STATE, NOW, force=False) is None
    assert "gone" in (skip_reason(SOURCE, gone, NOW, force=False) or "")
    # gone, but its entry was edited since: fetched again
    assert skip_reason(replace(SOURCE, name="Renamed"), gone, NOW, force=False) is None
    later = replace(STATE, retry_after=NOW + timedelta(minutes=5))
    assert "wait until" in (skip_reason(SOURCE, later, NOW, force=False) or "")
    earlier = replace(STATE, retry_after=NOW - timedelta(seconds=1))
    assert skip_reason(SOURCE, earlier, NOW, force=False) is None
    assert skip_reason(SOURCE, replace(later, gone=True), NOW, force=True) is None


def test_failures_back_off_doubling_up_to_a_day() -> None:
    interval = timedelta(minutes=30)
    assert next_due(interval, NOW, 0) == NOW + interval
    assert next_due(interval, NOW, 1) == NOW + 2 * interval
    assert next_due(interval, NOW, 3) == NOW + 8 * interval
    assert next_due(interval, NOW, 40) == NOW + MAX_BACKOFF
    # an interval longer than the cap is never shortened by failing
    assert next_due(timedelta(days=2), NOW, 5) == NOW + timedelta(days=2)


def test_a_feeds_hint_lengthens_its_interval_never_shortens_it() -> None:
    fixed = FeedSource(url="https://a.example/feed", interval=timedelta(minutes=30))
    assert interval_for(fixed, None, None) == timedelta(minutes=30)
    assert interval_for(fixed, None, 60) == timedelta(minutes=30)
    assert interval_for(fixed, None, 7200) == timedelta(hours=2)
    assert interval_for(fixed, None, 10 * 86400) == timedelta(days=1)
    assert poll_hint({"cache-control": "public, max-age=3600"}, 90) == 5400
    assert poll_hint({}, None) is None


URL = SOURCE.url
FEED = ParsedFeed(title="  The\nFeed ", site_url="https://a.example/", entries=())


def fetched(**fields: object) -> Fetched:
    values: dict[str, object] = {"url": URL, "status": 200, "body": b"<rss/>", "headers": {}}
    values.update(fields)
    return Fetched(**values)  # type: ignore[arg-type]


def test_a_parsed_body_records_validators_title_and_the_next_due_time() -> None:
    old = replace(STATE, failures=3, last_error="timed out", etag='"old"')
    response = fetched(etag='"new"', headers={"cache-control": "max-age=7200"})
    update = decide(SOURCE, old, Answered(response, "h1", FEED, (("c", "k"),)), NOW)
    state = update.state
    assert (state.etag, state.body_hash, state.last_status) == ('"new"', "h1", 200)
    assert (state.failures, state.last_error, state.gone) == (0, None, False)
    assert state.title == "The Feed"  # one line
    assert state.site_url == "https://a.example/"
    assert state.hint_seconds == 7200
    assert state.next_due == NOW + timedelta(hours=2)  # the hint lengthens 30 min
    assert update.entry_chunks == (("c", "k"),)


def test_a_304_keeps_what_the_last_body_gave_and_its_entry_chunks() -> None:
    old = replace(STATE, etag='"e"', body_hash="h0", title="Kept", hint_seconds=3600)
    update = decide(SOURCE, old, Answered(NotModified(url=URL)), NOW)
    assert (update.state.etag, update.state.body_hash, update.state.title) == ('"e"', "h0", "Kept")
    assert update.state.last_status == 304
    assert update.state.next_due == NOW + timedelta(hours=1)
    assert update.entry_chunks is None  # the stored ones stay


def test_jitter_spreads_a_success_by_at_most_a_tenth_of_the_interval() -> None:
    response = NotModified(url=URL)
    early = decide(SOURCE, STATE, Answered(response), NOW, jitter=-1.0)
    late = decide(SOURCE, STATE, Answered(response), NOW, jitter=5.0)  # clamped to 1
    assert early.state.next_due == NOW + SOURCE.interval * (1 - JITTER)
    assert late.state.next_due == NOW + SOURCE.interval * (1 + JITTER)


def test_failures_back_off_and_a_410_is_gone_until_the_entry_changes() -> None:
    first = decide(SOURCE, STATE, Failed(HTTPStatusError(URL, 500, "HTTP 500")), NOW)
    assert (first.state.failures, first.state.last_status) == (1, 500)
    assert first.state.next_due == NOW + 2 * SOURCE.interval
    gone = decide(SOURCE, first.state, Failed(Gone(URL, 410, "HTTP 410 Gone")), NOW)
    assert gone.state.gone and gone.state.failures == 2
    assert still_gone(SOURCE, gone.state)
    assert not still_gone(replace(SOURCE, tags=("new",)), gone.state)


def test_retry_after_is_kept_and_never_polled_before() -> None:
    until = NOW + timedelta(hours=6)
    error = RetryLater(URL, 429, "HTTP 429", retry_after=until)
    update = decide(SOURCE, STATE, Failed(error), NOW)
    assert update.state.retry_after == until and update.state.next_due == until


def test_a_parse_failure_takes_the_move_but_keeps_the_last_readable_validators() -> None:
    old = replace(STATE, etag='"good"', body_hash="h-good")
    response = fetched(etag='"broken"', moved_to="https://b.example/f")
    update = decide(SOURCE, old, Failed(ParseError(URL, "not a feed"), response), NOW)
    state = update.state
    assert (state.etag, state.body_hash) == ('"good"', "h-good")
    assert (state.fetch_url, state.moved_to) == ("https://b.example/f", "https://b.example/f")
    assert state.last_error == "not a feed" and state.last_status is None


def test_stored_errors_are_one_redacted_bounded_line() -> None:
    message = "bad\r\nthing at https://u:secret@a.example/?token=abc " + "x" * 2000
    update = decide(SOURCE, STATE, Failed(FeedError(URL, message)), NOW)
    assert update.state.last_error is not None
    assert "secret" not in update.state.last_error and "abc" not in update.state.last_error
    assert "\n" not in update.state.last_error and len(update.state.last_error) <= 500


def test_due_times_at_start_and_after_an_edit() -> None:
    polled = replace(
        STATE, last_fetched=NOW - timedelta(minutes=10), next_due=NOW + timedelta(minutes=20)
    )
    assert due_at_start(SOURCE, None, NOW, edited=False, order=3) == NOW + timedelta(
        milliseconds=30
    )
    assert due_at_start(SOURCE, polled, NOW, edited=False) == NOW + timedelta(minutes=20)
    # an edited interval applies at once: a full (new) interval after the last poll
    hourly = replace(SOURCE, interval=timedelta(hours=1))
    assert due_at_start(hourly, polled, NOW, edited=True) == NOW + timedelta(minutes=50)
    overdue = replace(polled, next_due=NOW - timedelta(hours=1))
    assert due_at_start(SOURCE, overdue, NOW, edited=False) == NOW
    waiting = replace(polled, retry_after=NOW + timedelta(hours=3))
    assert due_at_start(SOURCE, waiting, NOW, edited=False) == NOW + timedelta(hours=3)
    gone = replace(polled, gone=True, gone_fingerprint=feed_fingerprint(SOURCE), failures=4)
    assert due_at_start(SOURCE, gone, NOW, edited=False) is None
    assert due_at_start(hourly, gone, NOW, edited=True) == NOW  # edited: retried now
    assert MIN_GAP > timedelta(0)


def test_a_disabled_feed_is_skipped_even_when_forced_and_never_scheduled() -> None:
    disabled = replace(SOURCE, enabled=False)
    assert "disabled" in (skip_reason(disabled, STATE, NOW, force=True) or "")
    assert due_at_start(disabled, None, NOW, edited=False) is None
    polled = replace(STATE, last_fetched=NOW, next_due=NOW + timedelta(minutes=5))
    assert due_at_start(disabled, polled, NOW, edited=True) is None
    assert due_at_start(SOURCE, polled, NOW, edited=False) == NOW + timedelta(minutes=5)


# --- the adaptive interval ----------------------------------------------------------------

ADAPTIVE = FeedSource(
    url="https://a.example/f",
    interval=timedelta(minutes=30),
    min_interval=timedelta(minutes=10),
    max_interval=timedelta(hours=12),
)


def test_entry_rate_counts_recent_dated_entries_over_their_span() -> None:
    hourly = [NOW - timedelta(hours=h) for h in range(1, 11)]
    assert entry_rate(hourly, NOW) == pytest.approx(24, rel=0.01)
    # a feed listing only its last ten of a hundred a day: a short span, a high rate
    burst = [NOW - timedelta(minutes=15 * n) for n in range(1, 11)]
    assert entry_rate(burst, NOW) == pytest.approx(10 / (150 / 1440), rel=0.01)
    # silent for a month: 0; nothing dated: not known; future dates do not count
    assert entry_rate([NOW - timedelta(days=40)], NOW) == 0.0
    assert entry_rate([], NOW) is None
    assert entry_rate([NOW + timedelta(days=1)], NOW) is None
    # two entries say little: taken over the whole window (the polite side)
    assert entry_rate([NOW - timedelta(hours=1), NOW - timedelta(hours=2)], NOW) == 2 / 30


def test_ten_a_day_is_polled_more_often_than_one_a_month() -> None:
    busy, busy_why = explain_interval(ADAPTIVE, replace(STATE, entries_per_day=10.0))
    quiet, quiet_why = explain_interval(ADAPTIVE, replace(STATE, entries_per_day=1 / 30))
    assert busy == timedelta(hours=2.4) / 4
    assert quiet == timedelta(hours=12)  # capped at max_interval
    assert "10 entries a day" in busy_why and "0.23 entries a week" in quiet_why
    # bounded below by min_interval
    assert explain_interval(ADAPTIVE, replace(STATE, entries_per_day=1000.0))[0] == timedelta(
        minutes=10
    )
    # nothing known: the configured interval; silent: max_interval
    assert explain_interval(ADAPTIVE, STATE) == (
        timedelta(minutes=30),
        "default: its rhythm is not known yet",
    )
    assert explain_interval(ADAPTIVE, replace(STATE, entries_per_day=0.0))[0] == timedelta(hours=12)
    # a feed's own interval in feeds.yaml is kept; its hint still lengthens it
    assert explain_interval(SOURCE, replace(STATE, entries_per_day=10.0)) == (
        SOURCE.interval,
        "set for this feed",
    )
    hinted = explain_interval(ADAPTIVE, replace(STATE, entries_per_day=10.0, hint_seconds=7200))
    assert hinted == (timedelta(hours=2), "the feed asks for it (ttl or Cache-Control)")


def test_a_parsed_body_sets_the_rate_and_a_304_keeps_it() -> None:
    response = Fetched(url=URL, status=200, body=b"x", headers={})
    parsed = decide(ADAPTIVE, STATE, Answered(response, "h", FEED, entries_per_day=10.0), NOW)
    assert parsed.state.entries_per_day == 10.0
    assert parsed.state.next_due == NOW + timedelta(hours=2.4) / 4
    not_modified = NotModified(url=URL, etag=None, last_modified=None, headers={})
    kept = decide(ADAPTIVE, parsed.state, Answered(not_modified), NOW)
    assert kept.state.entries_per_day == 10.0
    assert kept.state.next_due == NOW + timedelta(hours=2.4) / 4
