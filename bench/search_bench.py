"""Search latency at 100,000 stored stories: p50/p95/max over a mix of 100 queries.

    .venv/bin/python bench/search_bench.py [--items 100000] [--queries 100]

Builds a fresh database under bench/out/search/ (the Store's own schema and migrations;
stories inserted directly, one entry each, as `save` leaves them), fills the full-text
index in one batch (`index_for_search`, timed), then runs the queries through the same
path as `aggregator search` and /search (`publish.search_items`: parse, match, rank,
narrow, build the published items) and prints a Markdown report.

Texts are drawn from a Zipf-distributed vocabulary (bench/corpus.py's English words as the
frequent head, then places, then generated words as the long tail), so some words are in
most stories and most are rare, as in news. The query mix: one word, two words, a phrase
taken from a stored title, a prefix, a word with a topic's feeds, a word with a topic's
include terms, a word with --since, and the most common words (the worst case: nearly every
story matches and must be ranked).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import PLACES, WORDS  # noqa: E402

from aggregator import publish  # noqa: E402
from aggregator import store as store_module  # noqa: E402
from aggregator.config import parse_config  # noqa: E402
from aggregator.search import make_request  # noqa: E402
from aggregator.store import Store  # noqa: E402
from aggregator.timeutil import to_iso  # noqa: E402

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FEEDS = 200
#: every TECH_EVERY-th feed is tagged `tech` (a topic selects them)
TECH_EVERY = 4
SYLLABLES = "ka ro mi ten sul va dor pe lin qua zo ber nat is ul fem gra ho tis mar".split()


def vocabulary(rng: random.Random, size: int) -> list[str]:
    """Frequent English words first, then places, then made-up words: rank order."""
    words = list(dict.fromkeys(w.lower() for w in [*WORDS, *PLACES]))
    seen = set(words)
    while len(words) < size:
        word = "".join(rng.choices(SYLLABLES, k=rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def zipf_weights(size: int, exponent: float = 1.05) -> list[float]:
    return list(itertools.accumulate(1 / (rank**exponent) for rank in range(1, size + 1)))


def build(path: Path, items: int, seed: int) -> tuple[list[str], list[str], float]:
    """A fresh database of `items` stories; returns (vocabulary, titles, seconds to index)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    rng = random.Random(seed)
    vocab = vocabulary(rng, 30_000)
    weights = zipf_weights(len(vocab))
    titles: list[str] = []
    with Store.open(path) as store:
        conn = store.db.conn
        conn.execute("BEGIN")
        feed_rows = [
            (f"https://f{n:03d}.example/feed", f"https://f{n:03d}.example/feed", f"Outlet {n}")
            for n in range(FEEDS)
        ]
        conn.executemany("INSERT INTO feeds (url, fetch_url, title) VALUES (?, ?, ?)", feed_rows)
        batch_items: list[tuple[object, ...]] = []
        batch_entries: list[tuple[object, ...]] = []
        for n in range(items):
            title_words = rng.choices(vocab, cum_weights=weights, k=rng.randint(5, 12))
            title = " ".join(title_words).capitalize()
            text = " ".join(rng.choices(vocab, cum_weights=weights, k=rng.randint(80, 320)))
            text = text.capitalize() + "."
            titles.append(title)
            feed = feed_rows[n % FEEDS][0]
            link = f"https://f{n % FEEDS:03d}.example/{n}"
            published = to_iso(NOW - timedelta(minutes=5 * (items - n)))
            item_id = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}"
            digest = hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()
            batch_items.append(
                (item_id, link, link, title, f"<p>{text}</p>", "", text[:300], text, None,
                 "[]", published, published, published, digest, feed, "bench")
            )  # fmt: skip
            batch_entries.append((feed, link, item_id, link, link, digest, published))
            if len(batch_items) == 5000:
                _insert(conn, batch_items, batch_entries)
                batch_items, batch_entries = [], []
        _insert(conn, batch_items, batch_entries)
        conn.execute("COMMIT")
        started = time.perf_counter()
        indexed = store.index_for_search()
        index_seconds = time.perf_counter() - started
        assert indexed == items, indexed
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return vocab, titles, index_seconds


def _insert(
    conn: object, items: list[tuple[object, ...]], entries: list[tuple[object, ...]]
) -> None:
    conn.executemany(  # type: ignore[attr-defined]
        "INSERT INTO items (id, link, canonical_link, title, content_html, summary_html,"
        " excerpt, text, author, categories, published, updated, first_seen, content_hash,"
        " first_feed_url, first_round) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        items,
    )
    conn.executemany(  # type: ignore[attr-defined]
        "INSERT INTO entries (feed_url, entry_key, item_id, link, canonical_link,"
        " content_hash, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        entries,
    )


def config_text(path: Path) -> str:
    feeds = "".join(
        f"  - url: https://f{n:03d}.example/feed\n"
        + ("    tags: [tech]\n" if n % TECH_EVERY == 0 else "")
        for n in range(FEEDS)
    )
    return (
        f"settings:\n  database: {path}\n  listen: ''\n"
        "topics:\n  all:\n    title: Everything\n"
        "  tech:\n    title: Tech\n    feeds: [tech]\n"
        "  places:\n    title: Places\n    include: [northfield, riverton, lakeside]\n"
        f"feeds:\n{feeds}"
    )


def queries(
    vocab: list[str], titles: list[str], count: int, seed: int
) -> list[tuple[str, dict[str, str]]]:
    """(kind, make_request keywords) for `count` queries in a fixed mix."""
    rng = random.Random(seed + 1)

    def mid() -> str:
        return vocab[rng.randint(100, 5000)]

    def pair() -> str:
        # two words of one stored title, in any order: at least that story matches
        first, second = rng.sample(rng.choice(titles).lower().split(), 2)
        return f"{first} {second}"

    def phrase() -> str:
        words = rng.choice(titles).lower().split()
        start = rng.randrange(len(words) - 1)
        return f'"{words[start]} {words[start + 1]}"'

    def prefix() -> str:
        word = next(w for w in iter(mid, None) if len(w) >= 6)
        return word[:4] + "*"

    makers: list[tuple[str, int, Callable[[], dict[str, str]]]] = [
        ("one word", 25, lambda: {"query": mid()}),
        ("two words", 20, lambda: {"query": pair()}),
        ("phrase", 15, lambda: {"query": phrase()}),
        ("prefix", 10, lambda: {"query": prefix()}),
        ("word, --topic (feeds)", 10, lambda: {"query": mid(), "topic": "tech"}),
        ("word, --topic (include terms)", 5, lambda: {"query": mid(), "topic": "places"}),
        ("word, --since 7d", 5, lambda: {"query": mid(), "since": "7d"}),
        ("common word (worst case)", 10, lambda: {"query": vocab[rng.randint(0, 20)]}),
    ]
    total = sum(share for _, share, _ in makers)
    mix = []
    for kind, share, make in makers:
        mix += [(kind, make()) for _ in range(round(share * count / total))]
    return mix[:count]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sqlite3

    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "search")
    parser.add_argument("--reuse", action="store_true", help="keep an existing database")
    parser.add_argument(
        "--rank-window",
        type=int,
        default=store_module.RANK_WINDOW,
        help="rank at most this many newest matches (a huge value: every match, as before)",
    )
    args = parser.parse_args(argv)
    store_module.RANK_WINDOW = args.rank_window
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "search.db"
    started = time.perf_counter()
    meta = args.out / "search.json"
    if args.reuse and path.exists() and meta.exists():
        vocab, titles, index_seconds = json.loads(meta.read_text())
    else:
        vocab, titles, index_seconds = build(path, args.items, args.seed)
        meta.write_text(json.dumps([vocab, titles, index_seconds]))
    build_seconds = time.perf_counter() - started
    config = parse_config(config_text(path), args.out / "feeds.yaml")
    mix = queries(vocab, titles, args.queries, args.seed)
    load_before = os.getloadavg()[0]
    timings: dict[str, list[float]] = {}
    results: dict[str, list[int]] = {}
    with Store.open(path) as store:
        for _, options in mix[:5]:  # warm the page cache
            publish.search_items(store, config, make_request(config.topics, **options), NOW)
        for kind, options in mix:
            request = make_request(config.topics, **options)
            begun = time.perf_counter()
            hits = publish.search_items(store, config, request, NOW)
            timings.setdefault(kind, []).append((time.perf_counter() - begun) * 1000)
            results.setdefault(kind, []).append(len(hits))
    load_after = os.getloadavg()[0]
    every = [t for ts in timings.values() for t in ts]
    size = sum(
        Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").exists()
    )
    print(
        f"# Search: {args.items:,} stories, {len(every)} queries, limit 20,"
        f" rank window {args.rank_window:,}\n"
    )
    print(f"Machine: {machine()}; load average {load_before:.1f} before, {load_after:.1f} after")
    print(
        f"Database {size / 1e6:.0f} MB; built in {build_seconds:.0f} s, of which the"
        f" full-text index (one `index_for_search` batch) {index_seconds:.1f} s\n"
    )
    print("| queries | n | p50 ms | p95 ms | max ms | results (median) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, values in [*timings.items(), ("**all**", every)]:
        counts = results.get(kind) or [n for ns in results.values() for n in ns]
        print(
            f"| {kind} | {len(values)} | {percentile(values, 0.5):.1f} |"
            f" {percentile(values, 0.95):.1f} | {max(values):.1f} |"
            f" {statistics.median(counts):.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
