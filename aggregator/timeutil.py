"""UTC timestamps and their one text form (ISO 8601, seconds, `Z`). No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """The current time, UTC, whole seconds (stored and published forms have no fractions)."""
    return datetime.now(UTC).replace(microsecond=0)


def to_utc(moment: datetime) -> datetime:
    """An aware datetime in UTC; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def to_iso(moment: datetime) -> str:
    """`2026-11-23T13:21:45Z`: sortable as text, which the store's indexes rely on."""
    return to_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return to_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def format_duration(span: timedelta) -> str:
    """`1h30m`, `45s`, `2d`: the config's own notation, largest units first, at most two."""
    seconds = int(span.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts[:2])
