"""The daemon's signal handling, in process: SIGHUP reloads, SIGTERM drains and returns 0.

The end-to-end tests (test_daemon.py) run the real daemon as a process; this one runs
`Daemon.run` on this process's own event loop and signals, so a failure points at the
handler rather than at a subprocess's log.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from aggregator.daemon import Daemon
from aggregator.pipeline import run_loop
from tests.feedserver import FeedServer
from tests.test_daemon import free_port, make_story, rss, write_config

TOPIC = "  all:\n    title: {title}\n"


async def wait_for(condition: object, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_sighup_reloads_and_sigterm_stops_with_exit_0(tmp_path: Path) -> None:
    config_path = tmp_path / "feeds.yaml"
    port = free_port()
    with FeedServer() as server:
        server.set("/a.rss", rss("A", [make_story("a")]))
        feed = server.url("/a.rss")

        def configure(title: str) -> None:
            write_config(config_path, port, [feed], interval="1h", topics=TOPIC.format(title=title))

        configure("First")
        daemon = Daemon(config_path)
        seen: dict[str, object] = {}

        async def drive() -> None:
            await wait_for(lambda: daemon.config is not None and daemon.health.last_poll)
            assert daemon.config is not None
            seen["before"] = daemon.config.topics[0].title
            configure("Second")
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(
                lambda: daemon.config is not None and daemon.config.topics[0].title == "Second"
            )
            seen["served"] = daemon.publisher.outputs.get("all.atom") is not None
            os.kill(os.getpid(), signal.SIGTERM)

        async def drive_then_stop() -> None:
            try:
                await drive()
            finally:  # a failed check must not leave the daemon running
                daemon.stop.set()

        async def main() -> int:
            driver = asyncio.create_task(drive_then_stop())
            code = await daemon.run()
            await driver
            return code

        previous = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
        try:
            code = run_loop(main())
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    assert code == 0
    assert seen == {"before": "First", "served": True}
    assert daemon.poller is None  # closed: store, fetcher and workers
    assert b"Second" in (tmp_path / "public" / "all.atom").read_bytes()
