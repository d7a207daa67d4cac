"""`aggregator status` as a person reads it: the table, one feed's history, the JSON.

Feeds are served from real servers on 127.0.0.1 (tests/feedserver.py) and polled by the
real `aggregator poll --once`; `status` runs as the user runs it (tests/commands.py). The
words for values (relative times, intervals, results, error kinds) are pure and tested
here as tables.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator import status
from aggregator.errors import ERROR_KINDS, error_kind
from aggregator.store import Store
from aggregator.timeutil import format_duration
from tests.commands import aggregator
from tests.feedserver import FeedServer, HostileServer

COLUMNS = {"COLUMNS": "100"}

GOOD = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>Good</title><link>http://good.example/</link>
<item><title>Fine</title><link>http://good.example/1</link><description>ok</description></item>
<item><title>Also fine</title><link>http://good.example/2</link><description>ok</description>
</item></channel></rss>"""
#: another outlet's stories (GOOD's would be merged into the first outlet's: not new)
PRIVATE = (
    GOOD.replace(b"good.example", b"private.example")
    .replace(b"Also fine", b"Members only")
    .replace(b"Fine", b"Subscribers")
    .replace(b">ok<", b">for members<")
)
#: cut off in its first item: no entry can be read
BROKEN = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>Broken</title><item><title>Half an ite"""

SECRETS = ("hunter2", "s3cret")


def closed_port() -> int:
    """A port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Site:
    server: FeedServer
    config: Path

    def run(self, *args: str) -> str:
        result = aggregator(self.config, *args, env=_env())
        assert result.returncode == 0, result.stderr
        return result.stdout

    def poll(self) -> None:
        result = aggregator(self.config, "poll", "--once", env=_env(), timeout=60)
        assert result.returncode == 0, result.stderr

    def rows(self) -> dict[str, dict[str, Any]]:
        return {row["name"] or row["url"]: row for row in json.loads(self.run("status", "--json"))}


def _env() -> dict[str, str]:
    """The test's environment, with a terminal of 100 columns."""
    return {**os.environ, **COLUMNS}


def table(out: str) -> list[dict[str, str]]:
    """The rows of `status`'s table, each cell by its column's header."""
    lines = out.splitlines()
    header = lines[0]
    starts = [header.index(name) for name in status.HEADERS]
    rows = []
    for line in lines[1 : lines.index("")]:
        bounds = zip(starts, [*starts[1:], None], strict=True)
        cells = [line[start:end].strip() for start, end in bounds]
        rows.append(dict(zip(status.HEADERS, cells, strict=True)))
    return rows


def feed_lines(site: Site, entries: list[tuple[str, str | None]], extra: str = "") -> None:
    lines = [
        "settings:",
        '  listen: ""',
        "  database: agg.db",
        "  output_dir: public",
        "  interval: 30m",
        "  timeout: 1s",
        "feeds:",
    ]
    for url, name in entries:
        lines.append(f"  - url: {url}")
        if name:
            lines.append(f"    name: {name}")
    site.config.write_text("\n".join(lines) + "\n" + extra)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with FeedServer() as server:
        yield Site(server, tmp_path / "feeds.yaml")


@pytest.fixture(scope="module")
def polled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Every kind of feed, polled twice: ok (then 304), 404, 410, timeout (a server that
    never answers), bad XML, refused, one behind credentials in its URL; and one added to
    the config after the polls. The tests only read it."""
    with FeedServer() as server, HostileServer() as hostile:
        site = Site(server, tmp_path_factory.mktemp("polled") / "feeds.yaml")
        yield _poll_everything(site, hostile)


def _poll_everything(site: Site, hostile: HostileServer) -> Site:
    server = site.server
    server.set("/good.rss", GOOD)
    server.respond("/gone.rss", 410)
    server.set("/broken.rss", BROKEN)
    server.set("/private.rss", PRIVATE)
    server.require_auth("/private.rss", "reader", "hunter2")
    private = server.url("/private.rss").replace("http://", "http://reader:hunter2@")
    feeds: list[tuple[str, str | None]] = [
        (server.url("/good.rss"), "Good Times"),
        (server.url("/missing.rss"), "Missing Gazette"),
        (server.url("/gone.rss"), "Gone Daily"),
        (hostile.url("/silent"), "Slow Herald"),
        (server.url("/broken.rss"), "Broken Weekly"),
        (f"http://127.0.0.1:{closed_port()}/feed.xml", "Closed Courier"),
        (private + "?token=s3cret", "Private Line"),
    ]
    feed_lines(site, feeds)
    site.poll()
    site.poll()
    server.set("/late.rss", GOOD)
    feed_lines(site, [*feeds, (server.url("/late.rss"), "Late Bloomer")])
    return site


def test_the_table_reads_at_a_glance_problems_first(polled: Site) -> None:
    out = polled.run("status")
    lines = out.splitlines()
    rows = table(out)
    assert all(len(line) <= 100 for line in lines[: len(rows) + 1])
    # error, gone, never, ok; by name within each
    assert [row["FEED"] for row in rows] == [
        "Broken Weekly",
        "Closed Courier",
        "Missing Gazette",
        "Slow Herald",
        "Gone Daily",
        "Late Bloomer",
        "Good Times",
        "Private Line",
    ]
    by_name = {row["FEED"]: row for row in rows}
    assert {name: (row["STATE"], row["RESULT"]) for name, row in by_name.items()} == {
        "Broken Weekly": ("error", "bad XML"),
        "Closed Courier": ("error", "refused"),
        "Missing Gazette": ("error", "404 not found"),
        "Slow Herald": ("error", "timeout"),
        "Gone Daily": ("gone", "410 gone"),
        "Late Bloomer": ("never", "-"),
        "Good Times": ("ok", "304 not modified"),
        "Private Line": ("ok", "304 not modified"),
    }
    good = by_name["Good Times"]
    assert good["LAST FETCH"].endswith(" s ago")
    # its entries are months apart: polled at max_interval, spread by up to a tenth
    # (update.JITTER)
    assert re.fullmatch(r"in 1[1-3] h", good["NEXT DUE"]), good["NEXT DUE"]
    assert good["INTERVAL"] == "12h rhythm" and good["ITEMS"] == "2"
    assert by_name["Late Bloomer"]["LAST FETCH"] == "never"
    assert by_name["Late Bloomer"]["NEXT DUE"] == "-"
    assert by_name["Gone Daily"]["NEXT DUE"] == "-"  # a gone feed is not due
    # failures back off: due later than the interval
    assert by_name["Slow Herald"]["NEXT DUE"].endswith(" h")
    summary = "8 feeds: 2 ok, 4 error, 1 gone, 1 never polled"
    assert lines[len(rows) + 2] == summary
    # the full errors under the table, one per problem feed, in the table's order
    assert lines[len(rows) + 3 :] == [
        "",
        "Broken Weekly: malformed feed, no entry could be read: malformed XML: no element found"
        " (2 failures in a row)",
        "Closed Courier: connection refused (2 failures in a row)",
        "Missing Gazette: HTTP 404 Not Found (2 failures in a row)",
        "Slow Herald: timed out after 1 s (total deadline) (2 failures in a row)",
        "Gone Daily: gone (HTTP 410)",
    ]
    assert "None" not in out
    assert not any(secret in out for secret in SECRETS)


def test_never_http_none_whatever_the_result(polled: Site) -> None:
    """A never-fetched feed, a timeout, a 404 and a 304 each read as words, in the table,
    one feed's view and the JSON's `last_result`."""
    rows = polled.rows()
    assert {name: row["last_result"] for name, row in rows.items()} == {
        "Good Times": "304 not modified",
        "Missing Gazette": "404 not found",
        "Gone Daily": "410 gone",
        "Slow Herald": "timeout",
        "Broken Weekly": "bad XML",
        "Closed Courier": "refused",
        "Private Line": "304 not modified",
        "Late Bloomer": "-",
    }
    for name in ("Late Bloomer", "Slow Herald", "Missing Gazette", "Good Times"):
        out = polled.run("status", "--feed", name)
        assert "None" not in out, out
    assert "None" not in polled.run("status")


def test_json_keeps_the_contract_and_adds_what_the_table_shows(polled: Site) -> None:
    rows = polled.rows()
    slow, good, late = rows["Slow Herald"], rows["Good Times"], rows["Late Bloomer"]
    assert (slow["state"], slow["last_status"], slow["last_error_kind"]) == (
        "error",
        None,
        "timeout",
    )
    assert slow["failures"] == 2 and slow["enabled"] is True
    assert slow["last_error"] == "timed out after 1 s (total deadline)"
    assert (good["state"], good["last_status"], good["last_error_kind"]) == ("ok", 304, None)
    assert good["interval_seconds"] == 12 * 3600
    assert good["interval_reason"].startswith("follows its rhythm: 0.")
    assert good["items"] == 2 and good["failures"] == 0
    assert rows["Missing Gazette"]["last_error_kind"] == "http"
    assert rows["Broken Weekly"]["last_error_kind"] == "bad_xml"
    assert rows["Closed Courier"]["last_error_kind"] == "refused"
    assert (late["state"], late["last_fetched"], late["next_due"]) == ("never", None, None)
    assert rows["Private Line"]["url"].startswith("http://***@127.0.0.1:")
    assert rows["Private Line"]["url"].endswith("/private.rss?token=***")


def test_one_feed_shows_its_last_fetches_newest_first(polled: Site) -> None:
    detail = json.loads(polled.run("status", "--feed", "good times", "--json"))
    assert detail["name"] == "Good Times" and detail["state"] == "ok"
    history = detail["history"]
    assert [(h["status"], h["outcome"], h["new"], h["updated"]) for h in history] == [
        (304, "not_modified", 0, 0),
        (200, "ok", 2, 0),
    ]
    assert history[0]["fetched_at"] >= history[1]["fetched_at"]
    assert all(h["duration_seconds"] >= 0 and h["error"] is None for h in history)

    slow = json.loads(polled.run("status", "--feed", "Slow Herald", "--json"))["history"]
    assert [(h["status"], h["outcome"], h["error_kind"]) for h in slow] == [
        (None, "error", "timeout"),
        (None, "error", "timeout"),
    ]
    assert all(h["duration_seconds"] >= 1 for h in slow)

    text = polled.run("status", "--feed", "Good Times")
    assert text.startswith("Good Times\n  url:")
    assert "  interval:   12h (follows its rhythm: 0." in text
    assert "last 2 fetches, newest first:" in text
    [newest, oldest] = text.splitlines()[-2:]
    assert "304 not modified" in newest and "200 OK" in oldest
    assert oldest.split()[-2:] == ["2", "0"]  # new, updated


def test_one_feed_by_url_and_its_credentials_stay_hidden(polled: Site) -> None:
    rows = polled.rows()
    shown_url = rows["Private Line"]["url"]
    # as status shows it (credentials hidden), or as configured
    for wanted in (shown_url, polled.server.url("/good.rss")):
        result = aggregator(polled.config, "status", "--feed", wanted, "--json", env=_env())
        assert result.returncode == 0, result.stderr
    text = polled.run("status", "--feed", shown_url)
    assert text.startswith("Private Line\n")
    assert not any(secret in text for secret in SECRETS)


def test_a_feed_never_fetched_has_no_history(polled: Site) -> None:
    text = polled.run("status", "--feed", "Late Bloomer")
    assert "  last fetch: never\n" in text and "  result:     -\n" in text
    assert text.rstrip().endswith("no fetches recorded yet")
    assert json.loads(polled.run("status", "--feed", "Late Bloomer", "--json"))["history"] == []


def test_an_unknown_feed_is_exit_1_with_a_message(site: Site) -> None:
    site.server.set("/good.rss", GOOD)
    feed_lines(site, [(site.server.url("/good.rss"), "Good Times")])
    for extra in ([], ["--json"]):
        result = aggregator(site.config, "status", "--feed", "Nope", *extra, env=_env())
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == f"aggregator: no feed named 'Nope' in {site.config}\n"


def test_a_disabled_feed_is_marked_off_and_not_due(site: Site) -> None:
    site.server.set("/good.rss", GOOD)
    feed_lines(
        site,
        [(site.server.url("/good.rss"), "Good Times")],
        extra=f"  - url: {site.server.url('/paused.rss')}\n    name: Paused\n    enabled: false\n",
    )
    site.poll()
    out = site.run("status")
    [paused] = [row for row in table(out) if row["FEED"] == "Paused"]
    assert (paused["STATE"], paused["NEXT DUE"]) == ("never, off", "-")
    assert "2 feeds: 1 ok, 1 never polled; 1 disabled" in out
    assert site.rows()["Paused"]["enabled"] is False


def test_long_names_are_cut_to_the_terminal(site: Site) -> None:
    long_name = "The Extremely Long Name of a Feed That Goes On " * 3
    site.server.set("/good.rss", GOOD)
    feed_lines(site, [(site.server.url("/good.rss"), long_name.strip())])
    for columns in (80, 120):
        env = {**_env(), "COLUMNS": str(columns)}
        out = aggregator(site.config, "status", env=env).stdout
        row = out.splitlines()[1]
        assert len(row) <= columns and "…" in row
        assert row.startswith("The Extremely Long Na")


# --- words for values (pure) ------------------------------------------------------------

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (timedelta(0), "now"),
        (timedelta(seconds=-5), "5 s ago"),
        (timedelta(seconds=-59), "59 s ago"),
        (timedelta(minutes=-3, seconds=-10), "3 min ago"),
        (timedelta(minutes=-59), "59 min ago"),
        (timedelta(hours=-2, minutes=-20), "2 h ago"),
        (timedelta(hours=-2, minutes=-40), "3 h ago"),
        (timedelta(hours=1, minutes=59, seconds=57), "in 2 h"),
        (timedelta(hours=-47), "47 h ago"),
        (timedelta(days=-3), "3 d ago"),
        (timedelta(minutes=12), "in 12 min"),
        (timedelta(seconds=30), "in 30 s"),
        (timedelta(hours=5), "in 5 h"),
    ],
)
def test_relative_times(offset: timedelta, expected: str) -> None:
    assert status.relative_time(NOW + offset, NOW) == expected


def test_a_missing_time_is_never_or_a_dash() -> None:
    assert status.relative_time(None, NOW) == "never"
    assert status.relative_time(None, NOW, missing="-") == "-"


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (timedelta(minutes=30), "30m"),
        (timedelta(hours=2), "2h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=1), "1d"),
        (timedelta(seconds=45), "45s"),
        # an adaptive interval shown to the minute: its two largest units
        (timedelta(hours=1, minutes=23, seconds=17), "1h23m"),
    ],
)
def test_intervals_in_the_configs_units(interval: timedelta, expected: str) -> None:
    assert format_duration(interval) == expected


@pytest.mark.parametrize(
    ("status_code", "kind", "state", "expected"),
    [
        (None, None, "never", "-"),
        (200, None, "ok", "200 OK"),
        (304, None, "ok", "304 not modified"),
        (404, "http", "error", "404 not found"),
        (410, "http", "gone", "410 gone"),
        (599, "http", "error", "HTTP 599"),
        (None, "timeout", "error", "timeout"),
        (None, "dns", "error", "DNS"),
        (None, "refused", "error", "refused"),
        (None, "bad_xml", "error", "bad XML"),
        (None, None, "ok", "ok"),
    ],
)
def test_results_in_a_few_words(
    status_code: int | None, kind: str | None, state: str, expected: str
) -> None:
    assert status.result_text(status_code, kind, state) == expected


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("timed out after 60 s (total deadline)", "timeout"),
        ("connect timed out after 10 s", "timeout"),
        ("no data for 20 s (read timeout)", "timeout"),
        ("host not found (DNS lookup failed)", "dns"),
        ("connection refused", "refused"),
        ("connection reset by peer", "connection"),
        ("server closed the connection without a response", "connection"),
        ("host unreachable", "unreachable"),
        ("TLS certificate not valid: certificate has expired", "tls"),
        ("redirect to a non-public address 10.0.0.1 refused", "blocked"),
        ("body larger than 10 MB after decompression", "too_large"),
        ("redirect loop (back to http://a.example/)", "redirects"),
        ("more than 5 redirects", "redirects"),
        ("empty body", "empty"),
        ("malformed feed, no entry could be read: malformed XML: no element found", "bad_xml"),
        ("not a feed: malformed XML: syntax error", "bad_xml"),
        ("not a feed (looks like an HTML page)", "not_a_feed"),
        ("invalid JSON Feed: items is not a list", "bad_json"),
        ("parsing took longer than 60 s; gave up", "parse_timeout"),
        ("internal error (RuntimeError); see the log", "internal"),
        ("something nobody foresaw", "other"),
    ],
)
def test_error_kinds_from_the_stored_message(message: str, kind: str) -> None:
    assert error_kind(None, message) == kind
    assert kind in ERROR_KINDS


def test_an_error_with_a_status_is_an_http_error() -> None:
    assert error_kind(503, "service unavailable (HTTP 503)") == "http"


def test_the_summary_line() -> None:
    def row(state: str, enabled: bool = True) -> dict[str, Any]:
        return {"state": state, "enabled": enabled}

    rows = [row("ok")] * 40 + [row("error"), row("never", enabled=False)]
    assert status.summary(rows) == "42 feeds: 40 ok, 1 error, 1 never polled; 1 disabled"
    assert status.summary([row("ok")]) == "1 feed: 1 ok"
    assert status.summary([]) == "no feeds configured"


def test_status_reads_a_database_an_older_version_wrote(tmp_path: Path) -> None:
    """`status` never migrates: a database without the columns and tables added since
    (an older daemon's, one on read-only media) is still shown, not a traceback."""
    config = tmp_path / "feeds.yaml"
    config.write_text(
        'settings:\n  database: agg.db\n  listen: ""\nfeeds:\n  - url: https://a.example/f\n'
    )
    with Store.open(tmp_path / "agg.db"):
        pass
    db = sqlite3.connect(tmp_path / "agg.db")
    db.execute(
        "INSERT INTO feeds (url, fetch_url, last_fetched, last_status)"
        " VALUES ('https://a.example/f', 'https://a.example/f', '2026-12-01T00:00:00Z', 200)"
    )
    for column in ("entries_per_day", "icon_url", "websub_hub", "websub_topic"):
        db.execute(f"ALTER TABLE feeds DROP COLUMN {column}")
    db.execute("DROP TABLE fetches")
    db.execute("DROP TABLE websub")
    db.commit()
    db.close()
    for args in ((), ("--json",), ("--feed", "https://a.example/f")):
        shown = aggregator(config, "status", *args)
        assert shown.returncode == 0, shown.stderr
        assert "Traceback" not in shown.stderr
        assert "200" in shown.stdout
