"""Cross-outlet dedup on real news copies: ../shared/dedup-dev through the real pipeline.

Each outlet becomes one RSS feed on a loopback server, each item under its own URL (so
only the text can match); one `poll --once` round (pipeline.Poller.poll_round) stores
them. Scored pairwise as the data's README says: precision = true pairs merged / pairs
merged, recall = true pairs merged / true pairs, pairs inside one `family` but of
different stories not counted.

    .venv/bin/python bench/dedup_eval.py [--data ../shared/dedup-dev] [--misses]

The data is read where it lies, never copied; tests/test_dedup_dev.py runs this and
skips when the folder is absent.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sqlite3
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from html import escape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator.model import FeedSource, Settings  # noqa: E402
from aggregator.pipeline import Poller  # noqa: E402
from tests.feedserver import FeedServer  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "dedup-dev"


@dataclass
class Score:
    items: int
    stored_entries: int
    true_pairs: int
    merged_pairs: int
    right: int
    #: (a, b) items of pairs merged but of different stories
    wrong: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    #: (a, b) items of true pairs left apart
    missed: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.right / self.merged_pairs if self.merged_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.right / self.true_pairs if self.true_pairs else 1.0


def load(data: Path) -> list[dict[str, Any]]:
    with (data / "items.jsonl").open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


def feed_body(outlet: str, items: list[dict[str, Any]]) -> bytes:
    """One outlet's RSS: each item under its own URL, its text as HTML paragraphs."""
    entries = []
    for item in items:
        link = f"https://{outlet}/a/{item['id']}"
        paragraphs = "".join(
            f"<p>{escape(part)}</p>" for part in item["text"].split("\n") if part.strip()
        )
        entries.append(
            f"<item><title>{escape(item['title'])}</title><link>{escape(link)}</link>"
            f"<guid>{escape(link)}</guid><pubDate>{item['published']}</pubDate>"
            f"<description>{escape(paragraphs)}</description></item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{escape(outlet)}</title><link>https://{escape(outlet)}/</link>"
        f"{''.join(entries)}</channel></rss>"
    ).encode()


def run_pipeline(items: list[dict[str, Any]], workdir: Path) -> dict[str, str]:
    """Poll every outlet's feed in one round; returns item id → stored story id."""
    by_outlet: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_outlet[item["outlet"]].append(item)
    settings = Settings(
        database=workdir / "agg.db",
        retention=timedelta(days=36500),
        per_host_spacing=timedelta(0),  # 122 feeds on one loopback server
    )
    with FeedServer() as server:
        sources = []
        for number, (outlet, outlet_items) in enumerate(sorted(by_outlet.items())):
            server.set(f"/{number}.xml", feed_body(outlet, outlet_items))
            sources.append(FeedSource(url=server.url(f"/{number}.xml")))

        async def poll() -> None:
            async with await Poller.open(settings) as poller:
                results = await poller.poll_round(sources)
            failed = [r for r in results if r.error is not None]
            assert not failed, failed

        asyncio.run(poll())
    db = sqlite3.connect(workdir / "agg.db")
    try:
        rows = db.execute("SELECT link, item_id FROM entries").fetchall()
    finally:
        db.close()
    return {link.rsplit("/", 1)[1]: item_id for link, item_id in rows}


def score(items: list[dict[str, Any]], story_of: dict[str, str]) -> Score:
    result = Score(len(items), len(story_of), 0, 0, 0)
    for a, b in itertools.combinations(items, 2):
        same = a["story"] == b["story"]
        if not same and a["family"] and a["family"] == b["family"]:
            continue  # a judgment call either way (the data's README)
        merged = story_of.get(a["id"]) is not None and story_of.get(a["id"]) == story_of.get(
            b["id"]
        )
        result.true_pairs += same
        result.merged_pairs += merged
        result.right += same and merged
        if merged and not same:
            result.wrong.append((a, b))
        if same and not merged:
            result.missed.append((a, b))
    return result


def evaluate(data: Path = DEFAULT_DATA) -> Score:
    items = load(data)
    with tempfile.TemporaryDirectory(prefix="dedup-eval-") as workdir:
        return score(items, run_pipeline(items, Path(workdir)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--misses", action="store_true", help="list wrong and missed pairs")
    args = parser.parse_args()
    result = evaluate(args.data)
    print(
        f"{result.items} items, {result.stored_entries} stored; {result.merged_pairs} pairs"
        f" merged, {result.right} right, {len(result.wrong)} wrong; {result.true_pairs} true"
        f" pairs, {len(result.missed)} missed; precision {result.precision:.3f},"
        f" recall {result.recall:.3f}"
    )
    if args.misses:
        for kind, pairs in (("WRONG", result.wrong), ("MISSED", result.missed)):
            for a, b in pairs:
                print(f"{kind}: {a['outlet']}: {a['title']}\n   {b['outlet']}: {b['title']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
