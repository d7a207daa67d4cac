"""The required-work floor: the least CPU any poller built on our fixed parts must spend.

Each stage is the cheapest way we know to do one thing a cold round cannot skip, timed alone
in this one process over the same corpus the rounds poll:

- fetch: one plain GET per feed from the benchmark's nginx (httpx, one client, keep-alive,
  gzip), bodies read in full;
- parse: `feedparser.parse` with its sanitizer and relative-URI pass off, plus the cache of its
  URI joins that aggregator installs (JSON Feed files: `json.loads`);
- sanitize: `nh3.clean` with nh3's own defaults, no callbacks, on each entry's HTML;
- store: one row per entry (id, link, title, cleaned HTML) in a WAL-mode database made with
  sqlite-utils, one `executemany` and one transaction per feed, as a crash-safe poller must.

No boilerplate removal, cross-outlet dedupe, search index, dates or outputs: those are what
aggregator adds, and what the floor leaves out. The sum of the stages divided by the cores is
a lower bound on a cold round's wall time for any design that must fetch with httpx, parse
with feedparser and store in SQLite (perfect parallelism, no coordination). Prints one JSON
line on stdout: CPU seconds per stage, entries and bytes.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import feedparser
import httpx
import nh3
import sqlite_utils

import aggregator.parse  # noqa: F401  installs the cache of feedparser's URI joins


def _html_of(entry: Any) -> str:
    for content in entry.get("content") or []:
        if content.get("value"):
            return str(content["value"])
    return str(entry.get("summary") or "")


def _parse(path: str, body: bytes) -> list[tuple[str, str, str, str]]:
    """(id, link, title, html) per entry."""
    if path.endswith(".json"):
        items = json.loads(body).get("items") or []
        return [
            (
                str(item.get("id") or ""),
                str(item.get("url") or ""),
                str(item.get("title") or ""),
                str(item.get("content_html") or item.get("summary") or ""),
            )
            for item in items
        ]
    parsed = feedparser.parse(
        io.BytesIO(body),
        sanitize_html=False,
        resolve_relative_uris=False,
        response_headers={"content-location": path},
    )
    return [
        (str(e.get("id") or ""), str(e.get("link") or ""), str(e.get("title") or ""), _html_of(e))
        for e in parsed.entries
    ]


def main() -> int:
    manifest = json.loads(Path(sys.argv[1]).read_text())
    files = manifest["files"]
    cpu: dict[str, float] = {}

    started = time.process_time()
    bodies: list[tuple[str, bytes]] = []
    with httpx.Client(headers={"accept-encoding": "gzip"}, timeout=30) as client:
        for spec in files:
            response = client.get(spec["url"])
            response.raise_for_status()
            bodies.append((spec["path"], response.content))
    cpu["fetch"] = time.process_time() - started

    started = time.process_time()
    feeds = [(path, _parse(path, body)) for path, body in bodies]
    cpu["parse"] = time.process_time() - started
    del bodies

    started = time.process_time()
    cleaned = [
        (path, [(id_, link, title, nh3.clean(html)) for id_, link, title, html in entries])
        for path, entries in feeds
    ]
    cpu["sanitize"] = time.process_time() - started
    del feeds

    with tempfile.TemporaryDirectory() as folder:
        db = sqlite_utils.Database(Path(folder) / "floor.db")
        db.enable_wal()
        db.table("items").create(
            {"id": str, "feed": str, "link": str, "title": str, "html": str}, pk=("feed", "id")
        )
        started = time.process_time()
        for path, entries in cleaned:
            with db.conn:
                db.conn.executemany(
                    "INSERT OR REPLACE INTO items (id, feed, link, title, html)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(id_, path, link, title, html) for id_, link, title, html in entries],
                )
        cpu["store"] = time.process_time() - started
        db.close()

    entry_count = sum(len(entries) for _, entries in cleaned)
    print(
        json.dumps(
            {
                "feeds": len(files),
                "entries": entry_count,
                "cpu": {stage: round(seconds, 2) for stage, seconds in cpu.items()},
                "total_cpu": round(sum(cpu.values()), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
