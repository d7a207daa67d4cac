"""A reload never takes the daemon down, and a reload that failed for want of resources
is retried rather than remembered until the next save.

The real daemon runs as a process; the config is edited on disk and SIGHUP is sent, as
an operator does.
"""

from __future__ import annotations

import resource
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from tests.test_daemon import (  # noqa: F401 - site and launch are fixtures
    DaemonProcess,
    Site,
    launch,
    make_story,
    published_links,
    site,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow  # end to end: real processes and servers


def test_a_reload_onto_a_file_that_would_crash_a_command_keeps_the_daemon_up(
    site: Site,  # noqa: F811 - the fixture imported above
    launch: Callable[..., DaemonProcess],  # noqa: F811
) -> None:
    story = make_story("kept")
    url = site.feed("alpha", [story])
    write_config(site.config, site.port, [url], interval="30s")
    daemon = launch(site.config, site.port)
    daemon.wait_serving()
    wait_until(lambda: story.link in published_links(daemon), 20, "the first publish")

    good = site.config.read_text()
    # a lone surrogate, as a YAML escape: used to pass `check` and kill the daemon on reload
    site.config.write_text(
        good + '  - url: "http://127.0.0.1:9/f?\\ud800"\n    name: "x \\udc80"\n'
    )
    daemon.send(signal.SIGHUP)
    health = wait_until(
        lambda: (h := daemon.health())["config_error"] and h, 10, "the error in /healthz"
    )
    assert health["status"] == "degraded"
    line = good.count("\n") + 1
    assert "U+D800" in health["config_error"] and f":{line}:" in health["config_error"]
    assert daemon.process.poll() is None
    assert story.link in published_links(daemon)  # still serving the last good config

    site.config.write_text(good)
    daemon.send(signal.SIGHUP)
    wait_until(lambda: daemon.health()["config_valid"], 10, "the fixed config")
    assert "Traceback" not in daemon.log


def test_a_reload_that_found_no_file_descriptor_is_retried_without_another_save(
    site: Site,  # noqa: F811
    launch: Callable[..., DaemonProcess],  # noqa: F811
) -> None:
    url = site.feed("alpha", [make_story("a")])
    write_config(site.config, site.port, [url], interval="30s")
    # the daemon gets few descriptors, so a crowd of connections can use them all up
    limit = 96
    previous = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, previous[1]))
    try:
        daemon = launch(site.config, site.port)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)
    daemon.wait_serving()
    wait_until(lambda: published_links(daemon), 20, "the first publish")

    crowd: list[socket.socket] = []
    try:
        for _ in range(limit):
            conn = socket.create_connection(("127.0.0.1", site.port), timeout=5)
            crowd.append(conn)
        time.sleep(1.0)  # the daemon accepts them all (and then fails to accept more)
        second = make_story("b")
        url_b = site.feed("beta", [second])
        write_config(site.config, site.port, [url, url_b], interval="30s")
        daemon.send(signal.SIGHUP)
        time.sleep(2.0)  # the reload runs now, and cannot open the file
    finally:
        for conn in crowd:
            conn.close()
    # descriptors are free again; the file was not saved again, yet the edit is applied
    wait_until(lambda: second.link in published_links(daemon), 30, "the added feed")
    assert daemon.health()["config_valid"] is True
    assert daemon.process.poll() is None


def test_a_catastrophic_topic_regex_does_not_freeze_the_daemon(
    site: Site,  # noqa: F811
    launch: Callable[..., DaemonProcess],  # noqa: F811
) -> None:
    ordinary = make_story("ordinary")
    url = site.feed("alpha", [ordinary])
    write_config(site.config, site.port, [url], interval="2s")
    daemon = launch(site.config, site.port)
    daemon.wait_serving()
    wait_until(lambda: ordinary.link in published_links(daemon), 20, "the first publish")

    # a regex that backtracks for hours on a title of 40 "a"s, and a feed that has one
    hostile = make_story("hostile")
    hostile = replace(hostile, title="a" * 40 + "!", text="a" * 40 + "!")
    site.feed("alpha", [hostile, ordinary])
    topics = "  nk:\n    include: ['/(a|aa)+$/', Story]\n"
    write_config(site.config, site.port, [url], interval="2s", topics=topics)
    daemon.send(signal.SIGHUP)
    worst = 0.0
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        started = time.monotonic()
        assert daemon.get("/healthz").status in (200, 503)
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.2)
    assert worst < 1.0, worst
    wait_until(lambda: ordinary.link in published_links(daemon, "nk"), 20, "the nk topic")
    assert "(a|aa)+$" in daemon.log and "simplify it" in daemon.log
    code, seconds = daemon.stop()
    assert code == 0 and seconds < 10
