"""Peer: the feed poller one writes in an afternoon. Fetch each feed in turn, parse, upsert.

httpx fetch (gzip, keep-alive, no conditional GET), `feedparser.parse` with its defaults,
sqlite-utils upserts keyed by entry id (else link). No deduplication across feeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import feedparser
import httpx
import sqlite_utils


def entry_row(entry: feedparser.FeedParserDict, feed_url: str) -> dict[str, object]:
    content = entry.get("content") or [{}]
    return {
        "id": entry.get("id") or entry.get("link"),
        "feed_url": feed_url,
        "link": entry.get("link"),
        "title": entry.get("title"),
        "author": entry.get("author"),
        "published": entry.get("published") or entry.get("updated"),
        "summary": entry.get("summary"),
        "content": content[0].get("value"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    args = parser.parse_args()
    urls = [f["url"] for f in json.loads(args.manifest.read_text())["files"]]
    args.db.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(args.db)
    failed = stored = 0
    with httpx.Client(timeout=30, follow_redirects=True) as client:
        for url in urls:
            try:
                response = client.get(url)
                response.raise_for_status()
            except httpx.HTTPError as error:
                print(f"{url}: {error}", file=sys.stderr)
                failed += 1
                continue
            headers = {
                "content-type": response.headers.get("content-type", ""),
                "content-location": url,
            }
            parsed = feedparser.parse(response.content, response_headers=headers)
            rows = [entry_row(e, url) for e in parsed.entries if e.get("id") or e.get("link")]
            if rows:
                db.table("entries").upsert_all(rows, pk="id")
            stored += len(rows)
    print(
        json.dumps({"feeds": len(urls), "failed": failed, "entries_seen": stored}), file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
