"""What `status` reports is true: a feed we could not read is an error, and stays one.

Served from a real server on 127.0.0.1 and polled by the real `aggregator poll --once`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.commands import aggregator, status_rows
from tests.feedserver import FeedServer

GOOD = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>Good</title><link>http://good.example/</link>
<item><title>Fine</title><link>http://good.example/1</link><description>ok</description></item>
</channel></rss>"""
#: cut off before its first item is complete: feedparser names a version, but no entry
TRUNCATED = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>Broken</title><link>http://broken.example/</link>
<item><title>Half an ite"""


def poll(config: Path) -> dict[str, dict[str, Any]]:
    run = aggregator(config, "poll", "--once", timeout=60)
    assert run.returncode == 0, run.stderr
    return status_rows(config, key="name")


def test_a_malformed_feed_without_entries_is_an_error_and_a_304_does_not_clear_it(
    tmp_path: Path,
) -> None:
    with FeedServer() as server:
        server.set("/good.xml", GOOD)
        server.set("/broken.xml", TRUNCATED)  # with an ETag: the next poll gets a 304
        config = tmp_path / "feeds.yaml"
        config.write_text(
            'settings:\n  per_host_spacing: 0\n  listen: ""\n  database: agg.db\n'
            f"feeds:\n  - url: {server.url('/good.xml')}\n    name: good\n"
            f"  - url: {server.url('/broken.xml')}\n    name: broken\n"
        )
        first = poll(config)
        assert first["good"]["state"] == "ok"
        assert first["broken"]["state"] == "error"
        assert "malformed" in str(first["broken"]["last_error"])

        second = poll(config)
        broken = second["broken"]
        assert broken["state"] == "error", broken
        assert "malformed" in str(broken["last_error"])
        # the second request was a full GET again, not a conditional one confirming it
        requests = server.requests_to("/broken.xml")
        assert len(requests) == 2
        assert "if-none-match" not in requests[1].headers
        assert second["good"]["state"] == "ok"


def test_a_bug_met_on_one_feed_fails_that_feed_not_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No input is known to reach a bug any more (the last one, an IDNA host name, is now a
    config error); the bug is planted in the fetcher for one feed's URL."""
    import asyncio

    from aggregator import pipeline
    from aggregator.config import load_config
    from aggregator.fetch import Fetcher

    real_fetch = Fetcher.fetch

    async def fetch_with_a_bug(
        self: Fetcher, state: Any, now: Any, *args: Any, **options: Any
    ) -> Any:
        if state.url.endswith("/buggy.xml"):
            raise RuntimeError("a bug")
        return await real_fetch(self, state, now, *args, **options)

    monkeypatch.setattr(Fetcher, "fetch", fetch_with_a_bug)
    with FeedServer() as server:
        server.set("/good.xml", GOOD)
        server.set("/buggy.xml", GOOD)
        config_path = tmp_path / "feeds.yaml"
        config_path.write_text(
            'settings:\n  per_host_spacing: 0\n  listen: ""\n  database: agg.db\n'
            f"feeds:\n  - url: {server.url('/buggy.xml')}\n    name: buggy\n"
            f"  - url: {server.url('/good.xml')}\n    name: good\n"
        )
        config = load_config(config_path)
        results, _, changed = asyncio.run(pipeline.poll_and_publish(config))
    buggy, good = results
    assert buggy.error is not None and "internal error (RuntimeError)" in buggy.error.message
    assert good.error is None and good.new == 1
    assert "all.atom" in changed
    rows = status_rows(config_path, key="name")
    assert rows["buggy"]["state"] == "error" and rows["good"]["state"] == "ok"
