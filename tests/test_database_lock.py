"""Another process holding the database's write lock never stalls the daemon.

The real daemon runs as a process with a systemd notify socket and a watchdog; this test
process takes the database's write lock (as `sqlite3 agg.db 'BEGIN EXCLUSIVE;'` would)
for longer than a watchdog period, while a feed gains a story. Serving, /healthz and the
watchdog must keep their pace; /healthz says degraded while the lock is held; once it is
released, the story is stored and published: nothing is lost.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest

from tests.test_daemon import (  # noqa: F401 - site and launch are fixtures
    DaemonProcess,
    Site,
    launch,
    make_story,
    notify_socket,
    published_links,
    request,
    site,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow  # end to end: real processes and servers

#: the issue measured 45 s; the suite holds it 12 s (set AGGREGATOR_LOCK_SECONDS to change)
LOCK_SECONDS = float(os.environ.get("AGGREGATOR_LOCK_SECONDS", "12"))
WATCHDOG_USEC = 2_000_000  # WatchdogSec=2: pinged every second


def test_a_write_lock_held_elsewhere_stalls_neither_serving_nor_health_nor_watchdog(
    site: Site,  # noqa: F811 - the fixture imported above
    launch: Callable[..., DaemonProcess],  # noqa: F811
) -> None:
    first = make_story("first")
    url = site.feed("alpha", [first])
    write_config(site.config, site.port, [url], interval="2s")
    with notify_socket(site.root) as (path, sock):
        daemon = launch(
            site.config, site.port, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        )
        daemon.wait_serving()
        wait_until(lambda: first.link in published_links(daemon), 20, "the first publish")

        pings: list[float] = []
        listening = threading.Event()
        listening.set()

        def listen() -> None:
            sock.settimeout(0.2)
            while listening.is_set():
                try:
                    data = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                if "WATCHDOG=1" in data.splitlines():
                    pings.append(time.monotonic())

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        try:
            holder = sqlite3.connect(site.root / "agg.db", isolation_level=None, timeout=30)
            holder.execute("BEGIN EXCLUSIVE")
            locked_at = time.monotonic()
            second = make_story("second")
            site.feed("alpha", [second, first])  # a poll during the lock has something to write
            latencies: list[float] = []
            health_during: list[str] = []
            try:
                while time.monotonic() - locked_at < LOCK_SECONDS:
                    started = time.monotonic()
                    reply = request(site.port, "/all.atom")
                    latencies.append(time.monotonic() - started)
                    assert reply.status == 200
                    started = time.monotonic()
                    health = request(site.port, "/healthz")
                    latencies.append(time.monotonic() - started)
                    health_during.append(health.json()["status"])
                    time.sleep(0.2)
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            lock_window = (locked_at, time.monotonic())

            # released: the poll that waited, or its retry, stores the story; health recovers
            wait_until(
                lambda: second.link in published_links(daemon), 90, "the story after release"
            )
            wait_until(lambda: daemon.health()["status"] == "ok", 20, "healthz ok again")
        finally:
            listening.clear()
            listener.join(5)

    in_window = [t for t in pings if lock_window[0] - 2 <= t <= lock_window[1] + 2]
    gaps = [b - a for a, b in zip(in_window, in_window[1:], strict=False)]
    assert len(in_window) >= LOCK_SECONDS - 2, pings
    assert max(gaps) < 1.6, gaps  # a ping per second, whatever the database does
    assert max(latencies) < 1.0, max(latencies)
    assert "degraded" in health_during, health_during
    log = daemon.log
    assert "Traceback" not in log
    print(
        f"lock held {lock_window[1] - lock_window[0]:.1f} s: slowest request "
        f"{max(latencies) * 1000:.0f} ms, largest watchdog gap {max(gaps):.2f} s"
    )
