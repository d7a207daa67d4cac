"""What an operator meets running the daemon and editing feeds.yaml by hand: whatever lands
in the file's place, the daemon keeps serving, says what is wrong once, and picks up the
next valid save.

The real daemon runs as a process (tests/test_daemon.py's helpers).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_daemon import (  # noqa: F401 - site and launch are fixtures
    DaemonProcess,
    Site,
    Story,
    launch,
    make_story,
    published_links,
    site,
    try_request,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow  # end to end: real processes and servers


def serving_one_story(
    site: Site,  # noqa: F811
    launch: Callable[..., DaemonProcess],  # noqa: F811
    story: Story,
) -> tuple[DaemonProcess, str]:
    """The daemon on one feed holding `story`, once it publishes it; and the feed's URL."""
    url = site.feed("alpha", [story])
    write_config(site.config, site.port, [url], interval="30s")
    daemon = launch(site.config, site.port)
    daemon.wait_serving()
    wait_until(lambda: story.link in published_links(daemon), 20, "the first publish")
    return daemon, url


def test_a_huge_invalid_save_stalls_neither_serving_nor_the_watchdog(
    site: Site,  # noqa: F811 - the fixture imported above
    launch: Callable[..., DaemonProcess],  # noqa: F811
) -> None:
    story = make_story("kept")
    daemon, _ = serving_one_story(site, launch, story)

    good = site.config.read_text()
    # a few MB of feeds (seconds of parsing) with a mistake at the end: the file was read
    # and validated in the event loop, and a 50 MB one stalled it past WatchdogSec
    entries = "".join(
        f"  - url: http://127.0.0.1:9/feed{i}\n    name: Feed {i}\n    tags: [x]\n"
        for i in range(40_000)
    )
    site.config.write_text(good + entries + "  - bogus: 1\n")
    line = (good + entries).count("\n") + 1
    worst = 0.0
    deadline = time.monotonic() + 90
    while True:
        started = time.monotonic()
        reply = try_request(site.port, "/healthz")
        worst = max(worst, time.monotonic() - started)
        assert reply is not None, "/healthz did not answer"
        if reply.json()["config_error"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    health = reply.json()
    assert f":{line}: feeds[40001].bogus: unknown key" in health["config_error"]
    assert worst < 1.5, f"/healthz took {worst:.1f} s while the file was read"
    assert story.link in published_links(daemon)  # the last good config still serves
    assert daemon.process.poll() is None


def _in_place(what: str, path: Path) -> None:
    """Put `what` where feeds.yaml was."""
    path.unlink()
    if what == "a folder":
        path.mkdir()
    elif what == "a FIFO":
        os.mkfifo(path)


@pytest.mark.parametrize(
    ("what", "problem"),
    [
        ("nothing", "No such file or directory"),
        ("a folder", "Is a directory"),
        ("a FIFO", "not a regular file"),
    ],
)
def test_whatever_replaces_the_config_is_reported_once_and_a_valid_save_applied(
    site: Site,  # noqa: F811
    launch: Callable[..., DaemonProcess],  # noqa: F811
    what: str,
    problem: str,
) -> None:
    first = make_story("first")
    daemon, url = serving_one_story(site, launch, first)

    _in_place(what, site.config)
    health = wait_until(
        lambda: (h := daemon.health())["config_error"] and h, 10, "the problem in /healthz"
    )
    assert problem in health["config_error"] and str(site.config) in health["config_error"]
    assert health["config_valid"] is False and health["status"] == "degraded"
    before = daemon.log.count("changed: reloading")
    time.sleep(3)  # six checks of the file: the problem is logged once, not at each
    assert daemon.log.count("changed: reloading") == before
    assert daemon.health()["config_error"] == health["config_error"]
    assert first.link in published_links(daemon)

    if site.config.is_dir():
        shutil.rmtree(site.config)
    else:
        site.config.unlink(missing_ok=True)
    second = make_story("second")
    url_b = site.feed("beta", [second])
    write_config(site.config, site.port, [url, url_b], interval="30s")
    wait_until(lambda: second.link in published_links(daemon), 20, "the added feed")
    assert daemon.health()["config_valid"] is True
    assert daemon.process.poll() is None
    assert "Traceback" not in daemon.log
