"""One `poll --once` round over a good feed and every kind of hostile server.

Each bad feed must end in its own clear one-line error (or the right behaviour: a move
followed, a gone feed marked, a Retry-After honoured), the round must end in bounded
time, and the good feed in the same round must be published.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import feedparser
import pytest

from tests.commands import aggregator
from tests.feedserver import FeedServer, HostileServer, gzip_bomb

pytestmark = pytest.mark.slow  # end to end: real processes and servers

DATA = Path(__file__).parent / "data"
GOOD = (DATA / "e2e" / "wp.rss").read_bytes()
TIMEOUT_SECONDS = 5

#: feed name → (what the user must read in `status`, state)
EXPECTED = {
    "good": (None, "ok"),
    "slow-drip": ("timed out", "error"),
    "silent": ("timed out", "error"),
    "huge-body": ("larger than 1 MB", "error"),
    "endless-body": ("larger than 1 MB", "error"),
    "gzip-bomb": ("after decompression", "error"),
    "entity-bomb": (None, "ok"),
    "redirect-loop": ("redirect loop", "error"),
    "too-many-redirects": ("more than 5 redirects", "error"),
    "moved": (None, "ok"),
    "gone": ("gone (HTTP 410)", "gone"),
    "rate-limited": ("retry after", "error"),
    "html-page": ("not a feed", "error"),
    "wrong-charset": (None, "ok"),
    "empty-body": ("empty body", "error"),
    "reset": ("connection reset", "error"),
    "refused": ("connection refused", "error"),
}


@pytest.fixture
def servers():
    # the rate-limited feed has a server of its own: its Retry-After holds every feed of
    # its server (test_politeness), and these feeds must each meet their own trouble
    with FeedServer() as good, HostileServer() as bad, FeedServer() as limited:
        yield good, bad, limited


def write_config(tmp_path: Path, good: FeedServer, bad: HostileServer, limited: FeedServer) -> Path:
    gzip_bomb()  # built once per test process; not on the clock of the round
    good.set("/good.xml", GOOD)
    good.set("/entity-bomb.xml", (DATA / "feeds" / "entity-bomb.xml").read_bytes())
    good.set("/new-home.xml", GOOD.replace(b"Peninsula Watch", b"Peninsula Watch (moved)"))
    good.redirect("/moved.xml", "/moved-again.xml", status=301)
    good.redirect("/moved-again.xml", "/new-home.xml", status=308)
    for hop in range(7):
        good.redirect(f"/hop{hop}", f"/hop{hop + 1}", status=302)
    good.respond("/gone.xml", 410, b"gone")
    limited.respond("/limited.xml", 429, b"slow down", headers={"Retry-After": "3600"})
    # windows-1252 bytes served as UTF-8
    good.set(
        "/cp1252.xml",
        (DATA / "feeds" / "windows-1252.rss").read_bytes(),
        content_type="application/rss+xml; charset=utf-8",
    )
    with FeedServer() as closed:
        refused = closed.url("/feed.xml")  # the port is closed once this block ends
    urls = {
        "good": good.url("/good.xml"),
        "slow-drip": bad.url("/drip"),
        "silent": bad.url("/silent"),
        "huge-body": bad.url("/huge"),
        "endless-body": bad.url("/endless"),
        "gzip-bomb": bad.url("/gzip-bomb"),
        "entity-bomb": good.url("/entity-bomb.xml"),
        "redirect-loop": bad.url("/loop/a"),
        "too-many-redirects": good.url("/hop0"),
        "moved": good.url("/moved.xml"),
        "gone": good.url("/gone.xml"),
        "rate-limited": limited.url("/limited.xml"),
        "html-page": bad.url("/html"),
        "wrong-charset": good.url("/cp1252.xml"),
        "empty-body": bad.url("/empty"),
        "reset": bad.url("/reset"),
        "refused": refused,
    }
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "settings:\n  per_host_spacing: 0\n"
        f"  timeout: {TIMEOUT_SECONDS}s\n"
        "  max_feed_size: 1MB\n"
        "  database: agg.db\n"
        "  output_dir: public\n"
        "feeds:\n" + "".join(f"  - url: {urls[name]}\n    name: {name}\n" for name in EXPECTED)
    )
    return config


def status(config: Path) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(aggregator(config, "status", "--json").stdout)}


def test_hostile_feeds_fail_alone_in_bounded_time(tmp_path: Path, servers) -> None:
    good = servers[0]
    config = write_config(tmp_path, *servers)
    started = time.monotonic()
    run = aggregator(config, "poll", "--once")
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    # every slow server is cut off by the deadline; the round is not their sum
    assert elapsed < TIMEOUT_SECONDS + 15, elapsed

    rows = status(config)
    for name, (message, state) in EXPECTED.items():
        row = rows[name]
        assert row["state"] == state, (name, row)
        if message:
            assert message in (row["last_error"] or ""), (name, row)
        # one clear line per feed in the log
        lines = [line for line in run.stderr.splitlines() if line.startswith(f"{name}:")]
        assert len(lines) == 1, (name, run.stderr)

    assert rows["moved"]["moved_to"] == good.url("/new-home.xml")
    assert "moved permanently" in run.stderr

    published = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    titles = {entry.title for entry in published.entries}
    assert "North Korea tests new cruise missile off east coast" in titles
    assert all("lollol" not in t for t in titles)


def test_gone_and_rate_limited_feeds_are_skipped_until_forced(tmp_path: Path, servers) -> None:
    good, _, limited = servers
    config = write_config(tmp_path, *servers)
    assert aggregator(config, "poll", "--once").returncode == 0
    good.clear()
    limited.clear()

    again = aggregator(config, "poll", "--once")
    assert again.returncode == 0
    assert "gone: skipped: gone (HTTP 410)" in again.stderr
    assert "rate-limited: skipped: server asked to wait until" in again.stderr
    assert good.requests_to("/gone.xml") == [] and limited.requests_to("/limited.xml") == []
    # a moved feed is fetched at its new address directly
    assert good.requests_to("/moved.xml") == [] and good.requests_to("/new-home.xml")

    forced = aggregator(config, "poll", "--once", "--force")
    assert forced.returncode == 0
    assert len(good.requests_to("/gone.xml")) == 1
    assert len(limited.requests_to("/limited.xml")) == 1


def test_a_gzip_bomb_is_cut_off_without_using_the_memory_it_would_need(tmp_path: Path) -> None:
    with FeedServer() as server:
        bomb = gzip_of_spaces(512 * 1024 * 1024)
        server.respond(
            "/bomb.xml",
            200,
            bomb,
            headers={"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"},
        )
        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n  per_host_spacing: 0\n"
            "  max_feed_size: 1MB\n  database: agg.db\n  output_dir: public\n"
            f"feeds:\n  - url: {server.url('/bomb.xml')}\n"
        )
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                MEASURE_PEAK,
                sys.executable,
                "-m",
                "aggregator",
                "-c",
                str(config),
                "poll",
                "--once",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    assert "after decompression" in run.stderr
    peak_kib = int(run.stdout.strip().splitlines()[-1])
    assert peak_kib < 150 * 1024  # the body would expand to 512 MB


#: runs a command and prints its peak resident memory in KiB
MEASURE_PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def gzip_of_spaces(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    chunk = b" " * (1024 * 1024)
    parts = [compressor.compress(b"<rss>")]
    parts += [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + compressor.flush()


def test_a_poll_interval_hint_too_large_for_any_clock_fails_no_feed(tmp_path: Path) -> None:
    """A server's Cache-Control max-age and a feed's <ttl> are numbers of any size; one
    past what a timedelta or SQLite holds used to fail its poll and end the round."""
    item = "<item><title>One</title><link>https://a.example/1</link></item>"
    huge_ttl = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Ttl</title>'
        f"<link>https://t.example/</link><ttl>{'9' * 30}</ttl>{item}</channel></rss>"
    ).encode()
    with FeedServer() as server:
        server.set("/max-age.rss", GOOD, headers={"Cache-Control": f"max-age={'9' * 30}"})
        server.set("/ttl.rss", huge_ttl)
        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n  per_host_spacing: 0\n  database: agg.db\n  output_dir: public\n"
            '  listen: ""\ntopics:\n  all:\n    title: All\n'
            f"feeds:\n  - url: {server.url('/max-age.rss')}\n  - url: {server.url('/ttl.rss')}\n"
        )
        result = aggregator(config, "poll", "--once")
        assert result.returncode == 0, result.stderr
        assert "polled 2 of 2 feeds: 0 failed" in result.stdout + result.stderr
        status = json.loads(aggregator(config, "status", "--json").stdout)
    feeds = status["feeds"] if isinstance(status, dict) else status
    # each feed is due again within the day the hints are honoured up to
    assert all(feed["state"] == "ok" for feed in feeds), feeds
