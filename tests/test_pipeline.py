"""The pipeline's pure decisions, in process: skipping, gone, backoff, hints."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from aggregator.model import FeedSource, FeedState
from aggregator.pipeline import (
    MAX_BACKOFF,
    effective_interval,
    feed_fingerprint,
    next_due,
    poll_hint,
    should_skip,
    still_gone,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SOURCE = FeedSource(url="https://a.example/f", name="A")
STATE = FeedState(url=SOURCE.url, fetch_url=SOURCE.url)


def test_a_gone_feed_stays_gone_until_its_config_entry_changes() -> None:
    gone = replace(STATE, gone=True)
    fingerprint = feed_fingerprint(SOURCE)
    assert still_gone(SOURCE, gone, fingerprint)
    assert not still_gone(replace(SOURCE, interval=timedelta(hours=2)), gone, fingerprint)
    assert not still_gone(replace(SOURCE, name="B"), gone, fingerprint)
    assert not still_gone(SOURCE, STATE, fingerprint)
    assert not still_gone(SOURCE, gone, None)


def test_gone_and_retry_after_skip_unless_forced() -> None:
    assert should_skip(STATE, NOW, force=False) is None
    assert "gone" in (should_skip(replace(STATE, gone=True), NOW, force=False) or "")
    later = replace(STATE, retry_after=NOW + timedelta(minutes=5))
    assert "wait until" in (should_skip(later, NOW, force=False) or "")
    assert should_skip(replace(STATE, retry_after=NOW - timedelta(seconds=1)), NOW, False) is None
    assert should_skip(replace(later, gone=True), NOW, force=True) is None


def test_failures_back_off_doubling_up_to_a_day() -> None:
    interval = timedelta(minutes=30)
    assert next_due(interval, NOW, 0) == NOW + interval
    assert next_due(interval, NOW, 1) == NOW + 2 * interval
    assert next_due(interval, NOW, 3) == NOW + 8 * interval
    assert next_due(interval, NOW, 40) == NOW + MAX_BACKOFF
    # an interval longer than the cap is never shortened by failing
    assert next_due(timedelta(days=2), NOW, 5) == NOW + timedelta(days=2)


def test_a_feeds_hint_lengthens_its_interval_never_shortens_it() -> None:
    interval = timedelta(minutes=30)
    assert effective_interval(interval, None) == interval
    assert effective_interval(interval, 60) == interval
    assert effective_interval(interval, 7200) == timedelta(hours=2)
    assert effective_interval(interval, 10 * 86400) == timedelta(days=1)
    assert poll_hint({"cache-control": "public, max-age=3600"}, 90) == 5400
    assert poll_hint({}, None) is None
