"""What `aggregator status` shows a person: the table of feeds, one feed's details and its
recent fetches, relative times. Made from the rows of `status --json` (cli.feed_status),
so the table never says what the JSON does not. No I/O.

Everything shown is one line without control or bidi characters (text.single_line): a
feed's title must not be able to move the cursor, retitle the terminal or reorder what
follows it. URLs and errors arrive redacted (cli.feed_status).
"""

from __future__ import annotations

import http
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from aggregator.errors import ERROR_KINDS
from aggregator.text import single_line
from aggregator.timeutil import format_duration, from_iso
from aggregator.update import interval_label

#: the order of the table: problems first
STATE_ORDER = {"error": 0, "gone": 1, "never": 2, "ok": 3}
#: the narrowest the feed column gets, however narrow the terminal
MIN_NAME_WIDTH = 12
#: the result column is cut at this width ("500 internal server error" fits)
MAX_RESULT_WIDTH = 25
ELLIPSIS = "…"
GAP = "  "

Row = Mapping[str, Any]


# --- words for values -------------------------------------------------------------------


def relative_time(moment: datetime | None, now: datetime, *, missing: str = "never") -> str:
    """`moment` from `now` in a few characters: "3 min ago", "in 2 h", "now"; `missing`
    when there is none."""
    if moment is None:
        return missing
    seconds = int((moment - now).total_seconds())
    span = abs(seconds)
    if span < 1:
        return "now"
    if span < 60:
        amount = f"{span} s"
    elif span < 3600:
        amount = f"{span // 60} min"
    elif span < 48 * 3600:  # hours and days to the nearest: a backoff of 2 h is "in 2 h"
        amount = f"{round(span / 3600)} h"
    else:
        amount = f"{round(span / 86400)} d"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def status_phrase(status: int) -> str:
    """ "200 OK", "304 not modified", "404 not found"; "HTTP 599" for a status without a
    name."""
    if status == 200:
        return "200 OK"
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
    return f"{status} {phrase.lower()}"


def result_text(status: int | None, error_kind: str | None, state: str) -> str:
    """The last fetch's result in a few words: its HTTP status, else the kind of its error
    ("timeout", "DNS", "bad XML"); "-" before the first fetch. Never "HTTP None"."""
    if state == "never":
        return "-"
    if status is not None:
        return status_phrase(status)
    if error_kind is not None:
        return ERROR_KINDS.get(error_kind, error_kind)
    return "ok"


def display_name(row: Row) -> str:
    return single_line(str(row["name"] or row["url"]))


def cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, "…" marking a cut."""
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS


# --- the table --------------------------------------------------------------------------


def sort_rows(rows: Sequence[Row]) -> list[Row]:
    """Problems first (error, gone, never, then ok), by name within each."""
    return sorted(
        rows, key=lambda row: (STATE_ORDER.get(row["state"], 9), display_name(row).casefold())
    )


def table_cells(row: Row, now: datetime) -> list[str]:
    state = row["state"] if row["enabled"] else f"{row['state']}, off"
    return [
        display_name(row),
        state,
        relative_time(from_iso(row["last_fetched"]), now),
        cut(single_line(row["last_result"]), MAX_RESULT_WIDTH),
        str(row["items"]),
        relative_time(from_iso(row["next_due"]), now, missing="-"),
        f"{format_duration(timedelta(seconds=row['interval_seconds']))}"
        f" {interval_label(row['interval_reason'])}".rstrip(),
    ]


HEADERS = ["FEED", "STATE", "LAST FETCH", "RESULT", "ITEMS", "NEXT DUE", "INTERVAL"]
#: columns aligned right (numbers)
RIGHT = {4}


def render_table(rows: Sequence[Row], now: datetime, width: int) -> list[str]:
    """The feeds as a table at most `width` columns wide where the terminal allows it (the
    feed column gives way, names cut with "…"), problems first, then a summary line and
    what does not fit in a cell (errors in full, moves) for the feeds that need it."""
    ordered = sort_rows(rows)
    cells = [table_cells(row, now) for row in ordered]
    widths = [max([len(HEADERS[i])] + [len(c[i]) for c in cells]) for i in range(len(HEADERS))]
    others = sum(widths[1:]) + len(GAP) * (len(HEADERS) - 1)
    widths[0] = max(min(widths[0], width - others), min(MIN_NAME_WIDTH, widths[0]))
    lines = [_line(HEADERS, widths)]
    for row_cells in cells:
        row_cells[0] = cut(row_cells[0], widths[0])
        lines.append(_line(row_cells, widths))
    lines.append("")
    lines.append(summary(rows))
    notes = [note for row in ordered for note in problem_notes(row)]
    if notes:
        lines.append("")
        lines.extend(notes)
    return lines


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [
        cell.rjust(w) if i in RIGHT else cell.ljust(w)
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return GAP.join(padded).rstrip()


def summary(rows: Sequence[Row]) -> str:
    """ "42 feeds: 40 ok, 1 error, 1 never polled; 2 disabled"."""
    if not rows:
        return "no feeds configured"
    counts = {state: sum(row["state"] == state for row in rows) for state in STATE_ORDER}
    words = {"ok": "ok", "error": "error", "gone": "gone", "never": "never polled"}
    parts = [
        f"{counts[state]} {words[state]}"
        for state in ("ok", "error", "gone", "never")
        if counts[state] or state == "ok"
    ]
    text = f"{len(rows)} feed{'s' if len(rows) != 1 else ''}: " + ", ".join(parts)
    disabled = sum(not row["enabled"] for row in rows)
    if disabled:
        text += f"; {disabled} disabled"
    return text


def problem_notes(row: Row) -> list[str]:
    """What the table cannot hold about a feed: its error in full, its move."""
    notes = []
    name = display_name(row)
    if row["last_error"] and row["state"] in ("error", "gone"):
        failures = row["failures"]
        streak = f" ({failures} failures in a row)" if failures > 1 else ""
        notes.append(f"{name}: {single_line(row['last_error'])}{streak}")
    if row["moved_to"]:
        notes.append(
            f"{name}: moved permanently to {single_line(row['moved_to'])} (update feeds.yaml)"
        )
    return notes


# --- one feed ---------------------------------------------------------------------------


def render_feed(row: Row, history: Sequence[Row], now: datetime, width: int) -> list[str]:
    """`status --feed`: one feed's details, then its recent fetches, newest first."""

    def when(key: str, missing: str) -> str:
        text = row[key]
        if text is None:
            return missing
        return f"{text} ({relative_time(from_iso(text), now)})"

    state = row["state"] + ("" if row["enabled"] else " (disabled: enabled: false)")
    failures = row["failures"]
    fields = [
        ("url", row["url"]),
        ("state", state),
        ("last fetch", when("last_fetched", "never")),
        ("result", row["last_result"]),
        ("last error", row["last_error"] or "-"),
        ("failures", f"{failures} in a row" if failures else "0"),
        ("items", str(row["items"])),
        ("next due", when("next_due", "-")),
        (
            "interval",
            f"{format_duration(timedelta(seconds=row['interval_seconds']))}"
            f" ({row['interval_reason']})",
        ),
    ]
    if row["moved_to"]:
        fields.append(("moved to", f"{row['moved_to']} (permanent redirect: update feeds.yaml)"))
    lines = [display_name(row)]
    lines += [f"  {label + ':':<12}{single_line(str(value))}" for label, value in fields]
    lines.append("")
    if not history:
        lines.append("no fetches recorded yet")
        return lines
    lines.append(f"last {len(history)} fetches, newest first:")
    headers = ["WHEN", "TOOK", "RESULT", "NEW", "UPDATED", "ERROR"]
    cells = [
        [
            relative_time(from_iso(h["fetched_at"]), now),
            f"{h['duration_seconds']:.2f}s",
            _history_result(h),
            str(h["new"]),
            str(h["updated"]),
            single_line(h["error"]) if h["error"] else "",
        ]
        for h in history
    ]
    widths = [max([len(headers[i])] + [len(c[i]) for c in cells]) for i in range(len(headers))]
    others = sum(widths[:-1]) + len(GAP) * (len(headers) - 1) + 2
    widths[-1] = max(width - others, MIN_NAME_WIDTH)
    right = {1, 3, 4}
    for line_cells in [headers, *cells]:
        line_cells = [*line_cells[:-1], cut(line_cells[-1], widths[-1])]
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line_cells, widths, strict=True))
        ]
        lines.append(("  " + GAP.join(padded)).rstrip())
    return lines


def _history_result(fetch: Row) -> str:
    if fetch["outcome"] == "unchanged":  # the same body as last time: not parsed again
        return f"{fetch['status']} unchanged" if fetch["status"] else "unchanged"
    return result_text(fetch["status"], fetch["error_kind"], "fetched")
