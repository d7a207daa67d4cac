"""The parse-only floor: `feedparser.parse`, its defaults, over every corpus file in one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import feedparser


def main() -> int:
    folder = Path(sys.argv[1])
    files = sorted(p for p in folder.iterdir() if p.suffix in {".xml", ".atom", ".rdf", ".json"})
    entries = 0
    for path in files:
        entries += len(feedparser.parse(str(path)).entries)
    print(json.dumps({"files": len(files), "entries": entries}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
