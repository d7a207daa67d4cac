"""progress.py: a live status line on a terminal, plain lines elsewhere; and `poll --once`
and `import` using it, run as a user runs them: on a pseudo-terminal and into a pipe."""

from __future__ import annotations

import io
import logging
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aggregator.progress import Progress, format_elapsed
from tests.commands import ROOT, aggregator
from tests.feedserver import FeedServer

RSS = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>
<item><title>One</title><link>https://x.example/1</link></item></channel></rss>"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_on_a_terminal_the_status_line_is_rewritten_and_lines_go_above_it() -> None:
    stream, clock = io.StringIO(), FakeClock()
    with Progress(3, "polling", "feeds", stream=stream, live=True, clock=clock) as progress:
        clock.now += 1
        progress.advance()
        clock.now += 1
        progress.print("B: error: refused")
        progress.advance(failed=True)
        clock.now += 12
        progress.advance()
    assert stream.getvalue() == (
        "\r\x1b[Kpolling: 0/3 feeds, 0.0s"
        "\r\x1b[Kpolling: 1/3 feeds, 1.0s"
        "\r\x1b[KB: error: refused\n"
        "\r\x1b[Kpolling: 1/3 feeds, 2.0s"
        # the second step came within 0.1 s of the last drawing: not drawn
        "\r\x1b[Kpolling: 3/3 feeds, 1 failed, 14s"
        "\r\x1b[K"
    )


def test_elsewhere_only_the_lines_are_written() -> None:
    stream = io.StringIO()
    with Progress(2, "polling", "feeds", stream=stream, live=False) as progress:
        progress.print("A: HTTP 200, 1 new, 0 updated, 0.01s")
        progress.advance()
        progress.advance(failed=True)
    assert stream.getvalue() == "A: HTTP 200, 1 new, 0 updated, 0.01s\n"


def test_a_stream_that_is_no_terminal_is_not_live(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Progress(1, "x", "y", stream=io.StringIO()).live
    reader, writer = os.pipe()
    with os.fdopen(writer, "w") as pipe:
        assert not Progress(1, "x", "y", stream=pipe).live
    os.close(reader)
    main, secondary = pty.openpty()
    with os.fdopen(secondary, "w") as terminal:
        monkeypatch.setenv("TERM", "xterm")
        assert Progress(1, "x", "y", stream=terminal).live
        monkeypatch.setenv("TERM", "dumb")
        assert not Progress(1, "x", "y", stream=terminal).live
    os.close(main)


def test_log_records_are_printed_above_the_status_line() -> None:
    stream, clock = io.StringIO(), FakeClock()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger()
    logger.addHandler(handler)
    try:
        with Progress(2, "polling", "feeds", stream=stream, live=True, clock=clock) as progress:
            with progress.above_logging():
                logging.getLogger("aggregator.test").warning("disk nearly full")
            assert handler.stream is stream
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == (
        "\r\x1b[Kpolling: 0/2 feeds, 0.0s"
        "\r\x1b[Kdisk nearly full\n"
        "\r\x1b[Kpolling: 0/2 feeds, 0.0s"
        "\r\x1b[K"
    )


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.04, "0.0s"), (9.95, "9.9s"), (42.7, "42s"), (125, "2m05s"), (3720, "1h02m")],
)
def test_format_elapsed(seconds: float, shown: str) -> None:
    assert format_elapsed(seconds) == shown


# --- poll --once as the user sees it ---------------------------------------------------------


def poll_config(tmp_path: Path, server: FeedServer) -> Path:
    server.set("/good.xml", RSS)
    path = tmp_path / "feeds.yaml"
    path.write_text(
        'settings:\n  listen: ""\nfeeds:\n'
        f"  - url: {server.url('/good.xml')}\n    name: Good\n"
        f"  - url: {server.url('/missing.xml')}\n    name: Missing\n",
        encoding="utf-8",
    )
    return path


def run_on_a_terminal(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """`python -m aggregator ARGS` with stdout and stderr on a pseudo-terminal: its exit
    status and everything it wrote there."""
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "aggregator", *args],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"},
    )
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    code = process.wait(timeout=10)
    os.close(main)
    return code, output.decode("utf-8", "replace").replace("\r\n", "\n")


def test_poll_on_a_terminal_shows_a_status_line_and_the_failures(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    config = poll_config(tmp_path, feed_server)
    code, output = run_on_a_terminal(["-c", str(config), "poll", "--once"])
    assert code == 0, output
    assert "\r\x1b[Kpolling: 0/2 feeds" in output
    assert "\r\x1b[Kpolling: 2/2 feeds, 1 failed, " in output
    # the failure on a line of its own, the success only counted
    assert f"\x1b[KMissing: error: HTTP 404 Not Found [{feed_server.url('/missing.xml')}]\n" in (
        output
    )
    assert "Good: HTTP 200" not in output
    # the summary starts on a clean line
    assert "\r\x1b[Kpolled 2 of 2 feeds: 1 failed, 0 skipped; 1 new items" in output


def test_poll_into_a_pipe_prints_one_plain_line_per_feed(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    config = poll_config(tmp_path, feed_server)
    result = aggregator(config, "poll", "--once")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert sorted(line.split(":")[0] for line in lines[:2]) == ["Good", "Missing"]
    assert any(line.startswith("Good: HTTP 200, 1 new, 0 updated, ") for line in lines)
    assert lines[-1].startswith("polled 2 of 2 feeds: 1 failed, 0 skipped; 1 new items")


def test_import_on_a_terminal_counts_and_names_the_invalid(tmp_path: Path) -> None:
    opml = tmp_path / "list.opml"
    opml.write_text(
        "<opml><body><outline text='A' xmlUrl='https://a.example/f'/>"
        "<outline text='B' xmlUrl='mailto:b@example.org'/></body></opml>"
    )
    config = tmp_path / "feeds.yaml"
    code, output = run_on_a_terminal(["-c", str(config), "import", str(opml)])
    assert code == 0, output
    assert "\r\x1b[Kimporting: 0/2 feeds" in output
    assert "\x1b[Kinvalid: 'B': not an http(s) URL: 'mailto:b@example.org'\n" in output
    assert "\r\x1b[Kimporting: 2/2 feeds, 1 failed, " in output
    assert output.endswith("added 1, skipped 0 (already present), invalid 1\n")
