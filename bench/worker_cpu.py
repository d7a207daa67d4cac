"""CPU of the parse workers' side of a cold round, in one process, and a digest of its output.

Runs `aggregator.ingest.process_body` over feed files on disk as a cold `poll --once`
gives them to the parse workers: nothing stored (`known={}`, no chunks), partial parsing
on (so the entry-chunk bookkeeping runs too), a `Fetched` as the pipeline builds it (the
content type from the file's extension, or the headers MANIFEST.tsv gives). Prints the
CPU seconds (`time.process_time`) of process_body over all files, and with `--stages` a
breakdown by stage (exclusive time of wrapped functions: a stage's time excludes the
stages called inside it).

    .venv/bin/python bench/worker_cpu.py [--limit N] [--repeat R] [--stages]
        [--digest OUT] [--compare OLD_DIGEST] [--realworld] [--profile OUT.prof]

Sources: the benchmark corpus (bench/out/corpus/manifest.json under the main checkout or
this one; `python bench/corpus.py` makes it), or with `--realworld`
../shared/realworld-feeds (its MANIFEST.tsv; read where it lies, never copied).

The digest (JSON lines) holds, per file, the feed's fields or the parse error, the entry
chunks, and per item every field of the Item (index keys sorted), its raw hash and its
entry key: `--compare OLD` says whether any output changed and shows the first
differences. The parser identity inside the chunk hashes (which changes with the source
of parse.py, dedupe.py and urls.py by design, see `partial._parser_identity`) is fixed
here so that digests compare the hashing, not the code's bytes.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator import ingest, partial  # noqa: E402
from aggregator.errors import ParseError  # noqa: E402
from aggregator.model import Fetched  # noqa: E402

REALWORLD = ROOT.parent / "shared" / "realworld-feeds"
#: as bench/run.py's nginx serves them
CONTENT_TYPES = {
    ".xml": "application/rss+xml",
    ".rss": "application/rss+xml",
    ".atom": "application/atom+xml",
    ".rdf": "application/rdf+xml",
    ".json": "application/feed+json",
}
#: the corpus is dated around 2026-06-01 (bench/corpus.py BASE_DATE, round 1 an hour on)
NOW = datetime(2026, 6, 2, 0, 0, tzinfo=UTC)
RETENTION = timedelta(days=36500)


def corpus_manifest() -> Path:
    for base in (ROOT, ROOT.parent / "main"):
        path = base / "bench" / "out" / "corpus" / "manifest.json"
        if path.exists():
            return path
    raise SystemExit("no corpus: run bench/corpus.py")


def corpus_files(limit: int | None) -> list[tuple[str, Path, str, dict[str, str]]]:
    """(name, path, url, headers) of each corpus file, in manifest order."""
    manifest_path = corpus_manifest()
    manifest = json.loads(manifest_path.read_text())
    rows = []
    for spec in manifest["files"][:limit]:
        path = manifest_path.parent / spec["path"]
        headers = {"content-type": CONTENT_TYPES.get(path.suffix, "application/octet-stream")}
        rows.append((spec["path"], path, spec["url"], headers))
    return rows


def realworld_files(limit: int | None) -> list[tuple[str, Path, str, dict[str, str]]]:
    rows = []
    for line in (REALWORLD / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or line.startswith("file\t"):
            continue
        fields = line.split("\t")
        name = fields[0]
        given = {} if fields[5] == "-" else json.loads(fields[5])
        headers = {key.lower(): value for key, value in given.items()}
        path = REALWORLD / name
        headers.setdefault(
            "content-type", CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        )
        rows.append((name, path, f"http://127.0.0.1:8731/{name}", headers))
    return rows[:limit]


# --- stages ------------------------------------------------------------------------

#: (module, attribute, stage name): wrapped with `--stages`; missing ones are skipped, so
#: the list can name functions that a later version fuses away
STAGES = [
    ("aggregator.ingest", "parse_changed_entries", "parse: partial bookkeeping"),
    ("aggregator.parse", "parse_feed", "parse: our mapping"),
    ("feedparser", "parse", "parse: feedparser"),
    ("aggregator.parse", "_parse_json_feed", "parse: JSON Feed"),
    ("aggregator.dedupe", "entry_key", "identify: entry_key"),
    ("aggregator.ingest", "raw_entry_hash", "identify: raw_entry_hash"),
    ("aggregator.clean", "clean_entry", "clean: entry fields, dates, links"),
    ("aggregator.clean", "remove_unusable_characters", "clean: unusable characters"),
    ("aggregator.clean", "exceeds_limits", "clean: exceeds_limits"),
    ("aggregator.clean", "_may_hold_boilerplate", "clean: boilerplate prefilter"),
    ("aggregator.clean", "strip_boilerplate", "clean: boilerplate lxml pass"),
    ("aggregator.clean", "_sanitize", "clean: sanitize (nh3 + callback)"),
    ("aggregator.clean", "sanitized_html_to_text", "clean: text"),
    ("aggregator.clean", "make_excerpt", "clean: excerpt"),
    ("aggregator.clean", "lead_image", "clean: lead image"),
    ("aggregator.ingest", "with_dedupe_keys", "keys: other"),
    ("aggregator.dedupe", "content_hash", "keys: content_hash"),
    ("aggregator.dedupe", "index_keys", "keys: index_keys shingles"),
    ("aggregator.dedupe", "words", "keys: words"),
    ("aggregator.dedupe", "title_key", "keys: title_key"),
]


class StageClock:
    """Exclusive CPU time per stage: entering a stage stops its caller's clock."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[str] = []
        self.mark = 0.0

    def wrap(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.process_time

        def timed(*args: Any, **kwargs: Any) -> Any:
            now = clock()
            if self.stack:
                self.totals[self.stack[-1]] += now - self.mark
            self.stack.append(stage)
            self.calls[stage] += 1
            self.mark = now
            try:
                return function(*args, **kwargs)
            finally:
                now = clock()
                self.totals[self.stack.pop()] += now - self.mark
                self.mark = now

        return timed

    def install(self) -> None:
        import importlib

        import aggregator.clean  # noqa: F401  loaded before wrapping
        import aggregator.parse  # noqa: F401

        for module_name, attribute, stage in STAGES:
            module = importlib.import_module(module_name)
            if hasattr(module, attribute):
                setattr(module, attribute, self.wrap(stage, getattr(module, attribute)))


# --- running -----------------------------------------------------------------------


def fixed_parser_identity() -> bytes:
    return b"worker_cpu"


def run(
    files: list[tuple[str, Path, str, dict[str, str]]], profile: cProfile.Profile | None = None
) -> tuple[float, int, list[tuple[str, Any]]]:
    """CPU seconds of process_body over `files`, items made, and the results."""
    results: list[tuple[str, Any]] = []
    cpu = 0.0
    items = 0
    oldest = NOW - RETENTION
    for name, path, url, headers in files:
        body = path.read_bytes()
        fetched = Fetched(url=url, status=200, body=body, headers=headers)
        started = time.process_time()
        if profile is not None:
            profile.enable()
        try:
            outcome: Any = ingest.process_body(fetched, url, {}, NOW, oldest, None)
        except ParseError as error:
            outcome = error
        if profile is not None:
            profile.disable()
        cpu += time.process_time() - started
        if not isinstance(outcome, ParseError):
            items += len(outcome.items)
        results.append((name, outcome))
    return cpu, items, results


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def digest_lines(results: list[tuple[str, Any]]) -> Iterator[str]:
    for name, outcome in results:
        if isinstance(outcome, ParseError):
            yield json.dumps({"file": name, "error": str(outcome)}, ensure_ascii=False)
            continue
        feed = {
            field.name: _plain(getattr(outcome.feed, field.name))
            for field in dataclasses.fields(outcome.feed)
        }
        yield json.dumps(
            {"file": name, "feed": feed, "entry_chunks": _plain(outcome.entry_chunks)},
            ensure_ascii=False,
        )
        for index, (item, raw) in enumerate(outcome.items):
            record = {"file": name, "item": index, "raw_hash": raw}
            for field in dataclasses.fields(item):
                record[field.name] = _plain(getattr(item, field.name))
            yield json.dumps(record, ensure_ascii=False)


def compare(old_path: Path, new_lines: list[str], show: int = 5) -> int:
    old_lines = old_path.read_text(encoding="utf-8").splitlines()
    # with --limit, the files this run did not read are not compared
    files = {json.loads(line)["file"] for line in new_lines}
    kept = [line for line in old_lines if json.loads(line)["file"] in files]
    if len(kept) < len(old_lines):
        print(f"comparing the {len(files)} files of this run only")
        old_lines = kept
    differing = 0
    for index in range(max(len(old_lines), len(new_lines))):
        old = old_lines[index] if index < len(old_lines) else None
        new = new_lines[index] if index < len(new_lines) else None
        if old == new:
            continue
        differing += 1
        if differing > show:
            continue
        if old is None or new is None:
            print(f"line {index + 1}: only in {'new' if old is None else 'old'}")
            continue
        old_record, new_record = json.loads(old), json.loads(new)
        where = f"{new_record.get('file')} item {new_record.get('item', '-')}"
        for key in sorted(set(old_record) | set(new_record)):
            if old_record.get(key) != new_record.get(key):
                print(f"line {index + 1} ({where}) {key}:")
                print(f"  old: {str(old_record.get(key))[:400]}")
                print(f"  new: {str(new_record.get(key))[:400]}")
    print(
        f"digest: {differing} of {max(len(old_lines), len(new_lines))} lines differ"
        + (" (identical)" if not differing else "")
    )
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realworld", action="store_true", help="../shared/realworld-feeds")
    parser.add_argument("--limit", type=int, help="the first N files only")
    parser.add_argument("--repeat", type=int, default=1, help="runs (CPU: each, and min)")
    parser.add_argument("--stages", action="store_true", help="CPU by stage (adds overhead)")
    parser.add_argument("--digest", type=Path, help="write the digest here")
    parser.add_argument("--compare", type=Path, help="compare with this digest")
    parser.add_argument("--profile", type=Path, help="cProfile of the last run to this file")
    args = parser.parse_args()

    partial._parser_identity = fixed_parser_identity  # type: ignore[assignment]
    files = realworld_files(args.limit) if args.realworld else corpus_files(args.limit)
    clock = StageClock() if args.stages else None
    if clock is not None:
        clock.install()
    runs = []
    results: list[tuple[str, Any]] = []
    for number in range(args.repeat):
        last = number == args.repeat - 1
        profile = cProfile.Profile() if args.profile and last else None
        if clock is not None:
            clock.totals.clear()
            clock.calls.clear()
        cpu, items, results = run(files, profile)
        runs.append(cpu)
        print(f"run {number + 1}: {cpu:.2f} CPU-s, {len(files)} files, {items} items", flush=True)
        if profile is not None:
            profile.dump_stats(args.profile)
    import aggregator

    print(f"aggregator from {Path(aggregator.__file__).parent}")
    print(f"CPU-s: min {min(runs):.2f}, runs {' '.join(f'{r:.2f}' for r in runs)}")
    if clock is not None:
        total = sum(clock.totals.values())
        print(f"by stage (last run, exclusive; {total:.2f} CPU-s with the clock's overhead):")
        for stage, seconds in sorted(clock.totals.items(), key=lambda kv: -kv[1]):
            share = 100 * seconds / total
            print(f"  {stage:40s} {seconds:7.2f}  {share:5.1f}%  {clock.calls[stage]}")
    lines = list(digest_lines(results))
    if args.digest:
        args.digest.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"digest: {len(lines)} lines to {args.digest}")
    if args.compare:
        return compare(args.compare, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
