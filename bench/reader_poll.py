"""Peer: the `reader` library (PyPI) polling every benchmark feed once. Runs in venv-reader.

What a reader user would write: add the feeds (idempotent), then `update_feeds` with a
number of worker threads. `scheduled=False` makes every feed update now, as
`aggregator poll --once` does, instead of only the feeds reader thinks are due.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reader import make_reader  # type: ignore[import-not-found]  # lives in venv-reader


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    urls = [f["url"] for f in json.loads(args.manifest.read_text())["files"]]
    args.db.parent.mkdir(parents=True, exist_ok=True)
    reader = make_reader(str(args.db))
    for url in urls:
        reader.add_feed(url, exist_ok=True)
    reader.update_feeds(workers=args.workers, scheduled=False)
    reader.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
