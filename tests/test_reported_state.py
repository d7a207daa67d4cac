"""What `status` reports is true: a feed we could not read is an error, and stays one.

Served from a real server on 127.0.0.1 and polled by the real `aggregator poll --once`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
            'settings:\n  listen: ""\n  database: agg.db\n'
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
