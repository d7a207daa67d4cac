"""An hour of polling at scale (issue 17): the daemon on N feeds polled hourly, in steady state.

    .venv/bin/python bench/hourly.py [--feeds 100000] [--minutes 10] [--seed 1]

One instance is to poll 100,000 feeds an hour: 27.8 polls a second, sustained. This runs the
real daemon (`aggregator -c … run`, the console script, as a process) for a fixed wall time
against a loopback feed server of its own, starting from a steady state, and reports:
polls a second against the N/3600 needed, how late polls ran after their due time, CPU
seconds of the daemon's process tree per wall second, peak memory (main process and tree),
the database (and WAL) at start and end, start-up time and memory, errors, and what `status
--json` and /metrics cost at that size.

The pieces (all under bench/out/hourly/n<N>-s<seed>-w<window>/):

- **feeds.yaml**: N feeds over `--hosts` loopback addresses (127.0.1.x, port `--port`),
  every feed polled every hour (`interval`, `min_interval` and `max_interval` all 1h, so
  the adaptive interval cannot stretch or shrink it), `per_host_spacing: 0` (all loopback),
  four topics (everything, two by words, one by tag), the HTTP server on 127.0.2.1.
- **The feed server** (`serve`, a process of its own, measured apart): asyncio on uvloop,
  keep-alive, gzip. Each feed has a format (corpus.FORMATS), 10-30 entries rendered by
  bench/corpus.py (its story text, links, trailers, WordPress boilerplate) and a server kind
  (SERVER_KINDS): validators honoured (ETag and/or Last-Modified: 304) or ignored (200, same
  bytes). What each poll of a feed meets is drawn per (feed, poll) (POLL_OUTCOMES): 1-3 new
  entries, one entry edited, the body rebuilt with the same entries (a new lastBuildDate),
  a 500, a reset connection, a server that never answers (the read timeout), else nothing
  new. DEAD_SHARE of the feeds answer 404 to every poll.
- **The steady state** (built once per N, seed and window, then copied for each run): the
  database as an hour of polling leaves it. Every feed's row has its validators, last
  result and failures (dead feeds 8 in a row, so backed off to a day), 20 rows of fetch
  history, and a due time spread uniformly over the coming hour (dead feeds: over a day).
  The feeds whose body changes during the window (new, edited or rebuilt) were stored
  through aggregator's own path: the server's body at version 0, `ingest.process_body`
  (parse, clean, dedupe keys, entry chunks for partial parsing) in worker processes, then
  `update.decide` and `Store.save`, exactly as a poll would; so their stored entries, raw
  hashes and chunks are what the run's polls compare with. The feeds not due in the window
  are never polled, and their rows carry a placeholder body hash (no body is rendered).
- **The run**: the base database copied, due times moved to start `--lead` seconds after
  the daemon is launched, the daemon run for `--minutes` after it is ready, SIGTERM. A
  sampler reads /proc every second (CPU of every process of the daemon's session, RSS,
  the main process's VmHWM, PSS every 5 s) and the database and WAL sizes. Then the new
  rows of the fetches table give the polls: outcome, status, duration, and their lag
  (`fetched_at` against the due time set).

Results: a Markdown summary on stdout and JSON in results-<stamp>.json beside the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import corpus  # noqa: E402

OUT = ROOT / "bench" / "out" / "hourly"
BIN = ROOT / ".venv" / "bin"
HOUR = 3600.0
#: entries a feed lists (WordPress lists 10 by default, Blogger 25, news sites 20-50)
ENTRIES_SHOWN = (10, 30)
#: how a feed's server answers a conditional GET: (kind, weight)
SERVER_KINDS = (
    ("etag+lm", 60),  # nginx/Apache static files, WordPress: both validators, both honoured
    ("lm", 17),  # Last-Modified only
    ("etag", 8),  # ETag only
    ("ignores", 15),  # no validators honoured: every poll a 200 (dynamic pages, some CDNs)
)
#: what one poll of a healthy feed meets: (outcome, share); the rest is "nothing new"
POLL_OUTCOMES = (
    ("new", 0.05),  # 1-3 new entries (bench/run.py's mutated round: ~5% of feeds)
    ("edit", 0.02),  # one listed entry's text edited (the mutated round: ~2%)
    ("rebuilt", 0.03),  # same entries, a new lastBuildDate / <updated> (new validators)
    ("e500", 0.005),  # a transient server error
    ("reset", 0.003),  # the connection closed without an answer
    ("hang", 0.002),  # no answer at all: the fetch's read timeout (20 s)
)
#: feeds that answer 404 to every poll (dead or moved without a redirect)
DEAD_SHARE = 0.02
#: consecutive failures a dead feed has in the steady state: backed off to a day
DEAD_FAILURES = 8
HISTORY_ROWS = 20
CONTENT_TYPES = {
    "wordpress": "application/rss+xml; charset=UTF-8",
    "atom": "application/atom+xml",
    "rss1": "application/rdf+xml",
    "jsonfeed": "application/feed+json",
}
TOPICS = """topics:
  all:
    title: Everything
  elections:
    title: Elections
    include: [election, vote, "polling station", /re-?elect(ed|ion)/]
  coast:
    title: The coast
    include: [Southport, Fairhaven, harbour, coast]
    exclude: [football]
  local:
    title: Local sources
    feeds: [local]
    max_per_feed: 5
"""
#: every LOCAL_EVERY-th feed is tagged `local`
LOCAL_EVERY = 10


# --- the population: deterministic per (seed, feed) ------------------------------------


@dataclass(frozen=True)
class FeedSpec:
    index: int
    fmt: str
    kind: str
    dead: bool
    shown: int
    #: hours between entries (the feed's rhythm, for its stored dates)
    gap_hours: float
    #: hours between the newest entry and the reference time
    age_hours: float
    #: seconds into the measured window (after the lead) at which the feed is first due
    due_offset: float

    @property
    def honours(self) -> bool:
        return self.kind != "ignores"


def feed_spec(seed: int, index: int) -> FeedSpec:
    rng = random.Random(f"{seed}:hourly:{index}")
    fmt = rng.choices([k for k, _ in corpus.FORMATS], [w for _, w in corpus.FORMATS])[0]
    kind = rng.choices([k for k, _ in SERVER_KINDS], [w for _, w in SERVER_KINDS])[0]
    dead = rng.random() < DEAD_SHARE
    shown = rng.randint(*ENTRIES_SHOWN)
    # from several a day to one a week
    gap = math.exp(rng.uniform(math.log(1), math.log(168)))
    age = rng.uniform(0, gap)
    due = rng.random() * (24 * HOUR if dead else HOUR)
    return FeedSpec(index, fmt, kind, dead, shown, gap, age, due)


def poll_outcome(seed: int, spec: FeedSpec, poll: int) -> tuple[str, int]:
    """What the feed's `poll`-th request (1 = first of the run) meets, and a count (new
    entries, or which listed entry is edited)."""
    if spec.dead:
        return "e404", 0
    rng = random.Random(f"{seed}:poll:{spec.index}:{poll}")
    roll = rng.random()
    for outcome, share in POLL_OUTCOMES:
        if roll < share:
            return outcome, rng.randint(1, 3) if outcome == "new" else rng.randrange(spec.shown)
        roll -= share
    return "same", 0


def polls_in_window(spec: FeedSpec, window: float) -> int:
    """How many times the feed is due within `window` seconds of the start (roughly: the
    next interval is an hour ± 10% jitter, so 0.9 h is the shortest)."""
    if spec.due_offset > window:
        return 0
    return 1 + int((window - spec.due_offset) // (0.9 * HOUR))


def changes_in_window(seed: int, spec: FeedSpec, window: float) -> bool:
    return any(
        poll_outcome(seed, spec, k)[0] in ("new", "edit", "rebuilt")
        for k in range(1, polls_in_window(spec, window) + 1)
    )


def feed_url(index: int, fmt: str, hosts: int, port: int) -> str:
    return f"http://127.0.1.{1 + index % hosts}:{port}/feeds/f{index:06d}.{corpus.EXTENSIONS[fmt]}"


def corpus_feed(seed: int, spec: FeedSpec) -> corpus.Feed:
    rng = random.Random(f"{seed}:outlet:{spec.index}")
    place, outlet = rng.choice(corpus.PLACES), rng.choice(corpus.OUTLET_WORDS)
    feed = corpus.Feed(
        spec.index,
        spec.fmt,
        f"{place}{outlet}{spec.index}".lower(),
        f"{place} {outlet} {spec.index}",
        rng.choice(["en-US", "en-GB", "en"]),
    )
    feed.trailer = corpus._trailer(seed, feed)
    return feed


# --- a feed's content, version by version ----------------------------------------------


@dataclass
class Content:
    """A feed's content as the server has it now: its base entries (dated before the
    reference time), those added during the run, edits, and its validators."""

    spec: FeedSpec
    ref: datetime
    polls: int = 0
    version: int = 0
    #: dates of the entries added during the run, oldest first
    added: list[datetime] = field(default_factory=list)
    #: post number → (edits, when last edited)
    edits: dict[int, tuple[int, datetime]] = field(default_factory=dict)
    built: datetime | None = None
    modified: datetime | None = None

    @property
    def etag(self) -> str:
        return f'"{self.spec.index:x}-{self.version}"'

    @property
    def last_modified(self) -> datetime:
        return self.modified or self.ref - timedelta(hours=self.spec.age_hours)

    def copies(self) -> list[corpus.Copy]:
        """The listed entries, newest first."""
        spec = self.spec
        total = spec.shown + len(self.added)
        copies = []
        for post in range(total - 1, total - 1 - spec.shown, -1):
            if post >= spec.shown:
                date = self.added[post - spec.shown]
            else:
                back = spec.age_hours + (spec.shown - 1 - post) * spec.gap_hours
                date = self.ref - timedelta(hours=back)
            date = date.replace(microsecond=0)
            edits, edited = self.edits.get(post, (0, None))
            copies.append(
                corpus.Copy(
                    spec.index * 1000 + post,
                    "origin",
                    spec.index,
                    1000 + post,
                    post=1000 + post,
                    date=date,
                    edits=edits,
                    updated=edited,
                    origin_date=date,
                )
            )
        return copies

    def apply(self, outcome: str, count: int, now: datetime) -> None:
        now = now.replace(microsecond=0)
        if outcome == "new":
            self.added += [now - timedelta(minutes=7 * n) for n in range(count - 1, -1, -1)]
        elif outcome == "edit":
            post = self.spec.shown + len(self.added) - 1 - count
            self.edits[post] = (self.edits.get(post, (0, now))[0] + 1, now)
        elif outcome == "rebuilt":
            self.built = now
        else:
            return
        self.version += 1
        self.modified = now

    def body(self, seed: int, url: str) -> bytes:
        feed = corpus_feed(seed, self.spec)
        entries = [corpus.render_entry(seed, feed, c, feed) for c in self.copies()]
        text = corpus.RENDERERS[self.spec.fmt](feed, entries, url)
        if self.built is not None:
            text = _rebuilt(text, self.spec.fmt, self.built)
        return text.encode()


def _rebuilt(text: str, fmt: str, when: datetime) -> str:
    """The feed-level date set to `when` (RSS 1.0 and JSON Feed have none: their bytes
    stay, only their validators change)."""
    if fmt == "wordpress":
        head, _, rest = text.partition("<lastBuildDate>")
        _, _, tail = rest.partition("</lastBuildDate>")
        return f"{head}<lastBuildDate>{corpus._rfc822(when)}</lastBuildDate>{tail}"
    if fmt == "atom":
        head, _, rest = text.partition("<updated>")
        _, _, tail = rest.partition("</updated>")
        return f"{head}<updated>{corpus._iso(when)}</updated>{tail}"
    return text


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def response_headers(content: Content) -> dict[str, str]:
    """The validators the feed's server sends with a 200 (none when it ignores them)."""
    kind = content.spec.kind
    headers = {"content-type": CONTENT_TYPES[content.spec.fmt]}
    if kind in ("etag+lm", "etag"):
        headers["etag"] = content.etag
    if kind in ("etag+lm", "lm"):
        headers["last-modified"] = http_date(content.last_modified)
    return headers


# --- the feed server --------------------------------------------------------------------


class FeedServer:
    def __init__(self, seed: int, feeds: int, ref: datetime, lead: float) -> None:
        self.seed, self.feeds, self.ref, self.lead = seed, feeds, ref, lead
        self.contents: dict[int, Content] = {}
        self.counts: dict[str, int] = {}
        self.hanging: set[asyncio.Transport] = set()

    def content(self, index: int) -> Content:
        found = self.contents.get(index)
        if found is None:
            found = self.contents[index] = Content(feed_spec(self.seed, index), self.ref)
        return found

    def answer(self, path: str, headers: dict[str, str]) -> tuple[str, bytes | None]:
        """(what it was, the response bytes; None: hang, b"": reset)."""
        name = path.rsplit("/", 1)[-1]
        try:
            index = int(name[1:].split(".", 1)[0])
        except ValueError:
            index = -1
        if not 0 <= index < self.feeds:
            return "404", _plain(404, "Not Found")
        content = self.content(index)
        content.polls += 1
        outcome, count = poll_outcome(self.seed, content.spec, content.polls)
        if outcome == "e404":
            return "404 dead", _plain(404, "Not Found")
        if outcome == "e500":
            return "500", _plain(500, "Internal Server Error")
        if outcome == "reset":
            return "reset", b""
        if outcome == "hang":
            return "hang", None
        content.apply(outcome, count, datetime.now(UTC))
        spec = content.spec
        sent = response_headers(content)
        if spec.honours and outcome == "same":
            match = headers.get("if-none-match")
            since = headers.get("if-modified-since")
            if ("etag" in sent and match == sent["etag"]) or (
                match is None and "last-modified" in sent and since == sent["last-modified"]
            ):
                head = "HTTP/1.1 304 Not Modified\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in sent.items() if k != "content-type"
                )
                return "304", (head + "content-length: 0\r\n\r\n").encode()
        url = f"http://{headers.get('host', '')}{path}"
        body = content.body(self.seed, url)
        if "gzip" in headers.get("accept-encoding", ""):
            body = gzip.compress(body, compresslevel=5, mtime=0)
            sent["content-encoding"] = "gzip"
        kind = outcome if outcome != "same" else "200 same"
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items())
        return kind, (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


def _plain(status: int, reason: str) -> bytes:
    body = f"{status} {reason}\n".encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class _Protocol(asyncio.Protocol):
    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.hanging.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer and self.transport is not None:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            path = parts[1] if len(parts) > 1 else "/"
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            kind, data_out = self.server.answer(path, headers)
            self.server.counts[kind] = self.server.counts.get(kind, 0) + 1
            if data_out is None:  # never answered: the client's read timeout ends it
                self.server.hanging.add(self.transport)
                self.buffer = b""
                return
            if not data_out:
                self.transport.abort()
                return
            self.transport.write(data_out)


async def _serve(args: argparse.Namespace) -> None:
    ref = datetime.fromisoformat(args.ref)
    server = FeedServer(args.seed, args.feeds, ref, args.lead)
    loop = asyncio.get_running_loop()
    listeners = [
        await loop.create_server(
            lambda: _Protocol(server), f"127.0.1.{1 + h}", args.port, reuse_address=True
        )
        for h in range(args.hosts)
    ]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for listener in listeners:
        listener.close()
    Path(args.stats).write_text(json.dumps(server.counts, indent=1, sort_keys=True))


def serve(args: argparse.Namespace) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(args))
    return 0


# --- the steady state -------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    feeds: int
    seed: int
    window: float
    lead: float
    hosts: int
    port: int

    @property
    def dir(self) -> Path:
        return OUT / f"n{self.feeds}-s{self.seed}-w{int(self.window)}"

    @property
    def config(self) -> Path:
        return self.dir / "feeds.yaml"

    @property
    def base(self) -> Path:
        return self.dir / "base.db"

    @property
    def manifest(self) -> Path:
        return self.dir / "base.json"


def config_text(layout: Layout) -> str:
    lines = [
        "# generated by bench/hourly.py: every feed polled hourly from a loopback server",
        "settings:",
        "  database: run/aggregator.db",
        "  output_dir: run/public",
        "  listen: 127.0.2.1:8990",
        "  base_url: http://127.0.2.1:8990/",
        "  per_host_spacing: 0  # a few loopback addresses serve every feed",
        "  interval: 1h",
        "  min_interval: 1h",
        "  max_interval: 1h",
        "  max_items: 50",
        "  retention: 365d",
    ]
    lines += TOPICS.rstrip("\n").split("\n")
    lines.append("feeds:")
    for index in range(layout.feeds):
        spec = feed_spec(layout.seed, index)
        lines.append(f"  - url: {feed_url(index, spec.fmt, layout.hosts, layout.port)}")
        if index % LOCAL_EVERY == 0:
            lines.append("    tags: [local]")
    return "\n".join(lines) + "\n"


def _fetched(url: str, body: bytes, headers: dict[str, str]) -> Any:
    """A 200 of `body` as aggregator's fetcher gives it."""
    from aggregator.model import Fetched

    return Fetched(
        url=url,
        status=200,
        body=body,
        headers=headers,
        etag=headers.get("etag"),
        last_modified=headers.get("last-modified"),
    )


def _process(job: tuple[int, int, str, str]) -> tuple[int, bytes, dict[str, str], object]:
    """In a worker: the feed's version-0 body and what aggregator's parse workers make of it."""
    from aggregator.ingest import process_body

    seed, index, url, ref_text = job
    ref = datetime.fromisoformat(ref_text)
    content = Content(feed_spec(seed, index), ref)
    body = content.body(seed, url)
    headers = response_headers(content)
    fetched = _fetched(url, body, headers)
    processed = process_body(fetched, url, {}, ref, ref - timedelta(days=365), None)
    return index, body, headers, processed


def build_base(layout: Layout, workers: int) -> dict[str, object]:
    """The steady-state database (see the module docstring); returns its manifest."""
    from aggregator import update
    from aggregator.config import load_config
    from aggregator.model import FeedState
    from aggregator.store import FetchRecord, Store
    from aggregator.timeutil import to_iso

    layout.dir.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(config_text(layout))
    started = time.perf_counter()
    config = load_config(layout.config)
    parse_seconds = time.perf_counter() - started
    sources = {s.url: s for s in config.feeds}
    for suffix in ("", "-wal", "-shm"):
        Path(f"{layout.base}{suffix}").unlink(missing_ok=True)
    ref = datetime.now(UTC).replace(microsecond=0)
    specs = [feed_spec(layout.seed, i) for i in range(layout.feeds)]
    urls = [feed_url(s.index, s.fmt, layout.hosts, layout.port) for s in specs]
    full = [
        s.index for s in specs if not s.dead and changes_in_window(layout.seed, s, layout.window)
    ]
    print(
        f"building {layout.base}: {layout.feeds} feeds, {len(full)} stored in full", file=sys.stderr
    )
    store = Store.open(layout.base)
    conn = store.db.conn
    stored_items = 0
    # the feeds that change in the window: through aggregator's own parse, clean and store
    jobs = [(layout.seed, i, urls[i], ref.isoformat()) for i in full]
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=os.nice, initargs=(10,)) as pool:
        for done, (index, body, headers, processed) in enumerate(
            pool.imap_unordered(_process, jobs, chunksize=4), 1
        ):
            url = urls[index]
            fetched = _fetched(url, body, headers)
            items = processed.items  # type: ignore[attr-defined]
            answered = update.Answered(
                fetched,
                hashlib.sha256(body).hexdigest(),
                processed.feed,  # type: ignore[attr-defined]
                processed.entry_chunks,  # type: ignore[attr-defined]
                entries_per_day=update.entry_rate([item.published for item, _ in items], ref),
            )
            feed_update = update.decide(sources[url], FeedState(url, url), answered, ref)
            record = FetchRecord(fetched_at=ref, duration=0.2, status=200, outcome="ok")
            saved = store.save(feed_update, items, now=ref, round_id="seed", fetch=record)
            stored_items += saved.new
            if done % 500 == 0:
                print(f"  {done}/{len(full)} feeds stored", file=sys.stderr)
    # every other feed: its state as its last polls left it (Store's own row writer)
    full_set = set(full)
    conn.execute("BEGIN")
    history: list[tuple[object, ...]] = []
    for spec in specs:
        url = urls[spec.index]
        if spec.index not in full_set:
            state = _steady_state(layout, spec, url, ref)
            store._write_state(update.FeedUpdate(state))
        first = 1 if spec.index in full_set else 0
        for back in range(first, HISTORY_ROWS):
            history.append(_history_row(layout.seed, spec, url, ref, back))
        if len(history) >= 50_000:
            _insert_history(conn, history)
            history = []
    _insert_history(conn, history)
    conn.execute("COMMIT")
    store.index_for_search()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    manifest: dict[str, object] = {
        "feeds": layout.feeds,
        "seed": layout.seed,
        "window": layout.window,
        "hosts": layout.hosts,
        "port": layout.port,
        "ref": ref.isoformat(),
        "stored_in_full": len(full),
        "stored_items": stored_items,
        "config_bytes": layout.config.stat().st_size,
        "config_parse_seconds_in_builder": round(parse_seconds, 2),
        "build_seconds": round(time.perf_counter() - started, 1),
        "base_bytes": layout.base.stat().st_size,
        "built_at": to_iso(datetime.now(UTC)),
    }
    layout.manifest.write_text(json.dumps(manifest, indent=1))
    return manifest


def _steady_state(layout: Layout, spec: FeedSpec, url: str, ref: datetime) -> object:
    """The row of a feed stored without its items: its validators, last result, title."""
    from aggregator.model import FeedState

    feed = corpus_feed(layout.seed, spec)
    content = Content(spec, ref)
    if spec.dead:
        return FeedState(
            url,
            url,
            last_fetched=ref,
            last_status=404,
            last_error="HTTP 404 Not Found",
            failures=DEAD_FAILURES,
            next_due=ref,
        )
    headers = response_headers(content)
    if not spec.honours and spec.due_offset <= layout.window:
        # polled in the window: its 200 must be recognised as the same body
        body_hash = hashlib.sha256(content.body(layout.seed, url)).hexdigest()
    else:
        body_hash = hashlib.sha256(f"placeholder {spec.index}".encode()).hexdigest()
    return FeedState(
        url,
        url,
        etag=headers.get("etag"),
        last_modified=headers.get("last-modified"),
        body_hash=body_hash,
        last_fetched=ref,
        last_status=304 if spec.honours else 200,
        next_due=ref,
        title=feed.title,
        site_url=f"https://{feed.site}.example/",
        entries_per_day=round(24 / spec.gap_hours, 3),
    )


def _history_row(seed: int, spec: FeedSpec, url: str, ref: datetime, back: int) -> tuple:
    from aggregator.timeutil import to_iso

    when = to_iso(ref - timedelta(hours=back * (24 if spec.dead else 1)))
    outcome, _ = poll_outcome(seed, spec, -back)
    if spec.dead:
        return (url, when, 0.01, 404, "error", "http", "HTTP 404 Not Found", 0, 0)
    if outcome in ("e500", "reset", "hang"):
        status = 500 if outcome == "e500" else None
        kind = {"e500": "http", "reset": "connection", "hang": "timeout"}[outcome]
        return (url, when, 0.05, status, "error", kind, f"simulated {outcome}", 0, 0)
    if outcome in ("new", "edit"):
        return (url, when, 0.3, 200, "ok", None, None, int(outcome == "new"), 0)
    if spec.honours:
        return (url, when, 0.01, 304, "not_modified", None, None, 0, 0)
    return (url, when, 0.05, 200, "unchanged", None, None, 0, 0)


def _insert_history(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    conn.executemany(
        "INSERT INTO fetches (feed_url, fetched_at, duration, status, outcome, error_kind,"
        " error, new, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


# --- the run ----------------------------------------------------------------------------


def _shift(db: Path, layout: Layout, start: datetime) -> None:
    """Due times from `start` on (each feed's offset), the last fetch an interval before,
    the history moved with it."""
    from aggregator.timeutil import to_iso

    manifest = json.loads(layout.manifest.read_text())
    ref = datetime.fromisoformat(manifest["ref"])
    conn = sqlite3.connect(db)
    conn.execute("BEGIN")
    feeds, history = [], []
    for index in range(layout.feeds):
        spec = feed_spec(layout.seed, index)
        url = feed_url(index, spec.fmt, layout.hosts, layout.port)
        due = start + timedelta(seconds=layout.lead + spec.due_offset)
        last = due - timedelta(hours=24 if spec.dead else 1)
        feeds.append((to_iso(due), to_iso(last), url))
        history.append((f"{(last - ref).total_seconds():+.0f} seconds", url))
    conn.executemany("UPDATE feeds SET next_due = ?, last_fetched = ? WHERE url = ?", feeds)
    conn.executemany(
        "UPDATE fetches SET fetched_at = strftime('%Y-%m-%dT%H:%M:%SZ', fetched_at, ?)"
        " WHERE feed_url = ?",
        history,
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(session id, CPU seconds) of a process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[3]), (int(fields[11]) + int(fields[12])) / tick


def _status_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _machine_busy() -> float:
    """CPU seconds every core spent busy since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Every second: CPU and memory of every process of the daemon's session (the main
    process and its parse workers), of the feed server and of this driver; the database's
    size. Every fifth second, PSS."""

    def __init__(self, daemon: int, server: int, db: Path) -> None:
        super().__init__(daemon=True)
        self.daemon_pid, self.server_pid, self.db = daemon, server, db
        self.cpu: dict[int, float] = {}
        self.samples: list[dict[str, float]] = []
        self.peak = {"main_hwm_mb": 0.0, "tree_rss_mb": 0.0, "tree_pss_mb": 0.0, "procs": 0}
        self.peak_wal = 0
        self.done = threading.Event()

    def tree(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _proc_stat(int(entry))
                if stat is not None and stat[0] == self.daemon_pid:
                    pids.append(int(entry))
                    self.cpu[int(entry)] = stat[1]
        return pids

    def run(self) -> None:
        n = 0
        while not self.done.is_set():
            now = time.time()
            pids = self.tree()
            rss = sum(_status_kb(p, ("VmRSS",)).get("VmRSS", 0) for p in pids) / 1024
            main = _status_kb(self.daemon_pid, ("VmRSS", "VmHWM"))
            server = _proc_stat(self.server_pid)
            sample = {
                "t": now,
                "tree_cpu": sum(self.cpu.values()),
                "main_cpu": self.cpu.get(self.daemon_pid, 0.0),
                "server_cpu": server[1] if server else 0.0,
                "driver_cpu": time.process_time(),
                "machine_busy": _machine_busy(),
                "main_rss_mb": main.get("VmRSS", 0) / 1024,
                "main_hwm_mb": main.get("VmHWM", 0) / 1024,
                "tree_rss_mb": rss,
                "procs": len(pids),
                "db": _size(self.db),
                "wal": _size(Path(f"{self.db}-wal")),
            }
            if n % 5 == 0 and pids:
                sample["tree_pss_mb"] = sum(_pss_kb(p) for p in pids) / 1024
                self.peak["tree_pss_mb"] = max(self.peak["tree_pss_mb"], sample["tree_pss_mb"])
            self.samples.append(sample)
            self.peak["main_hwm_mb"] = max(self.peak["main_hwm_mb"], sample["main_hwm_mb"])
            self.peak["tree_rss_mb"] = max(self.peak["tree_rss_mb"], rss)
            self.peak["procs"] = max(self.peak["procs"], len(pids))
            self.peak_wal = max(self.peak_wal, int(sample["wal"]))
            n += 1
            self.done.wait(max(0.0, 1.0 - (time.time() - now)))

    def at(self, moment: float) -> dict[str, float]:
        """The last sample taken at or before `moment`."""
        found = self.samples[0]
        for sample in self.samples:
            if sample["t"] > moment:
                break
            found = sample
        return found


class LogReader(threading.Thread):
    """The daemon's stderr, each line stamped with the time it arrived, into a file; notes
    when it said it serves, and counts renders and problems."""

    def __init__(self, stream: object, path: Path) -> None:
        super().__init__(daemon=True)
        self.stream, self.path = stream, path
        self.ready_at: float | None = None
        self.published: list[float] = []
        self.levels: dict[str, int] = {}
        self.problems: list[str] = []
        self.polls: list[float] = []
        #: polls started (waiting or fetching) when the daemon was told to stop
        self.in_flight_at_stop: int | None = None

    def run(self) -> None:
        with self.path.open("w") as out:
            for raw in self.stream:  # type: ignore[attr-defined]
                now = time.time()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                out.write(f"{now:.3f} {line}\n")
                level = line.split(" ", 1)[0]
                self.levels[level] = self.levels.get(level, 0) + 1
                if "; next at " in line:
                    self.polls.append(now)
                elif line.startswith("INFO serving on") and self.ready_at is None:
                    self.ready_at = now
                elif line.startswith("INFO stopping: waiting up to"):
                    self.in_flight_at_stop = int(line.split(" for ")[1].split()[0])
                elif line.startswith("INFO published"):
                    self.published.append(now)
                if (
                    level in ("ERROR", "CRITICAL", "Traceback")
                    or "internal error" in line
                    or "Traceback" in line
                ) and len(self.problems) < 50:
                    self.problems.append(line[:300])


def _get(url: str) -> tuple[float, int, int]:
    """(seconds, status, bytes) of one GET."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    return time.perf_counter() - started, status, len(body)


def _timed_command(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    """Wall seconds, CPU seconds, peak RSS (MB) and output bytes of a command (GNU time)."""
    report = OUT / ".time"
    argv = ["/usr/bin/time", "-o", str(report), "-f", "%e %U %S %M", *argv]
    process = subprocess.run(argv, env=env, capture_output=True, check=False)
    wall, user, system, peak_kb = report.read_text().split()[-4:]
    result: dict[str, object] = {
        "seconds": float(wall),
        "cpu_seconds": round(float(user) + float(system), 2),
        "peak_mb": round(int(peak_kb) / 1024, 1),
        "exit": process.returncode,
        "bytes": len(process.stdout),
    }
    if process.returncode:
        result["stderr"] = process.stderr.decode("utf-8", "replace")[-300:]
    return result


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(layout: Layout, minutes: float, profile: float = 0.0) -> dict[str, object]:
    from aggregator.timeutil import from_iso

    manifest = json.loads(layout.manifest.read_text())
    run_dir = layout.dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    db = run_dir / "aggregator.db"
    shutil.copyfile(layout.base, db)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's aggregator, not another
    stats = run_dir / "server-stats.json"
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "serve",
            f"--feeds={layout.feeds}",
            f"--seed={layout.seed}",
            f"--hosts={layout.hosts}",
            f"--port={layout.port}",
            f"--lead={layout.lead}",
            f"--ref={manifest['ref']}",
            f"--stats={stats}",
        ],
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert server.stdout is not None
    if server.stdout.readline().strip() != b"ready":
        raise SystemExit("the feed server did not start")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    _shift(db, layout, start)
    conn = sqlite3.connect(db)
    first_id = conn.execute("SELECT coalesce(max(id), 0) FROM fetches").fetchone()[0]
    items_before = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    conn.close()
    db_start = {"db": _size(db), "wal": _size(Path(f"{db}-wal"))}
    launched = time.time()
    daemon = subprocess.Popen(
        [str(BIN / "aggregator"), "-c", str(layout.config), "run"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    logs = LogReader(daemon.stderr, run_dir / "daemon.log")
    logs.start()
    sampler = Sampler(daemon.pid, server.pid, db)
    sampler.start()
    window_start = start.timestamp() + layout.lead
    end = window_start + minutes * 60
    print(
        f"daemon {daemon.pid} launched; polls due from {layout.lead:.0f} s on;"
        f" stopping at +{end - launched:.0f} s",
        file=sys.stderr,
    )
    probes: dict[str, object] = {}
    spy: subprocess.Popen[bytes] | None = None
    while time.time() < end and daemon.poll() is None:
        time.sleep(0.5)
        if profile and spy is None and time.time() > window_start + 30:
            # py-spy's collapsed stacks of the main process (the workers are niced apart)
            spy = subprocess.Popen(
                [str(BIN / "py-spy"), "record", "-p", str(daemon.pid), "-d", str(int(profile)),
                 "-r", "50", "--format", "raw", "-o", str(run_dir / "profile.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        if "metrics" not in probes and time.time() > end - 30 and logs.ready_at:
            probes["metrics"] = _get("http://127.0.2.1:8990/metrics")
            probes["healthz"] = _get("http://127.0.2.1:8990/healthz")
    if spy is not None:
        spy.wait()
    stop_sent = time.time()
    crashed = daemon.poll()
    daemon.send_signal(signal.SIGTERM)
    try:
        exit_code = daemon.wait(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        exit_code = daemon.wait()
    stopped = time.time()
    sampler.done.set()
    sampler.join()
    logs.join(timeout=10)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    served = json.loads(stats.read_text()) if stats.exists() else {}
    db_end = {"db": _size(db), "wal": _size(Path(f"{db}-wal"))}
    probes["status_json"] = _timed_command(
        [str(BIN / "aggregator"), "-c", str(layout.config), "status", "--json"], env
    )

    # --- the polls, from the fetch history
    due = {}
    for index in range(layout.feeds):
        spec = feed_spec(layout.seed, index)
        due[feed_url(index, spec.fmt, layout.hosts, layout.port)] = (
            start.timestamp() + layout.lead + spec.due_offset
        )
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT feed_url, fetched_at, duration, status, outcome, error_kind, new, updated"
        " FROM fetches WHERE id > ? ORDER BY id",
        [first_id],
    ).fetchall()
    items_after = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    counts = dict(
        conn.execute(
            "SELECT 'feeds', count(*) FROM feeds UNION ALL SELECT 'entries', count(*) FROM entries"
            " UNION ALL SELECT 'item_keys', count(*) FROM item_keys"
            " UNION ALL SELECT 'fetches', count(*) FROM fetches"
        ).fetchall()
    )
    conn.close()
    ready = logs.ready_at or stopped
    seen: set[str] = set()
    lags, durations, outcomes = [], {}, {}
    polled_at = []
    new = updated = 0
    for url, fetched_at, duration, status, outcome, error_kind, n_new, n_updated in rows:
        moment = from_iso(fetched_at).timestamp()  # type: ignore[union-attr]
        polled_at.append(moment)
        key = f"{outcome} {status or error_kind}"
        outcomes[key] = outcomes.get(key, 0) + 1
        durations.setdefault(outcome, []).append(duration)
        new += n_new
        updated += n_updated
        if url not in seen:
            seen.add(url)
            lags.append(moment - due[url])
    # feeds due in the window (but for its last minute) that were not polled by its end
    measured_until = min(end, stop_sent) - 60
    due_in_window = [u for u, t in due.items() if window_start <= t <= measured_until]
    missed = [u for u in due_in_window if u not in seen]
    window_polls = [t for t in polled_at if window_start <= t < min(end, stop_sent)]
    window_seconds = min(end, stop_sent) - window_start
    # the first minute (or tenth of the window) after the daemon is ready: catching up
    steady_from = max(window_start, ready) + min(60.0, window_seconds / 10)
    steady = [t for t in polled_at if steady_from <= t < min(end, stop_sent)]
    steady_seconds = max(1.0, min(end, stop_sent) - steady_from)
    per_minute = {}
    for moment in polled_at:
        minute = int((moment - window_start) // 60)
        per_minute[minute] = per_minute.get(minute, 0) + 1

    def cpu_between(a: float, b: float, key: str) -> float:
        return sampler.at(b)[key] - sampler.at(a)[key]

    cpu_from = max(window_start, ready)
    cpu_until = min(end, stop_sent)
    busy_wall = max(1.0, cpu_until - cpu_from)
    tree_cpu = cpu_between(cpu_from, cpu_until, "tree_cpu")
    main_cpu = cpu_between(cpu_from, cpu_until, "main_cpu")
    server_cpu = cpu_between(cpu_from, cpu_until, "server_cpu")
    driver_cpu = cpu_between(cpu_from, cpu_until, "driver_cpu")
    machine = cpu_between(cpu_from, cpu_until, "machine_busy")
    at_ready = sampler.at(ready)
    startup_cpu = at_ready["tree_cpu"]
    result: dict[str, object] = {
        "feeds": layout.feeds,
        "seed": layout.seed,
        "minutes": minutes,
        "lead_seconds": layout.lead,
        "needed_polls_per_second": round(layout.feeds / HOUR, 2),
        "base": manifest,
        "startup": {
            "ready_seconds": round(ready - launched, 1),
            "cpu_seconds": round(startup_cpu, 1),
            "main_rss_mb_at_ready": round(at_ready["main_rss_mb"], 1),
            "main_hwm_mb_at_ready": round(at_ready["main_hwm_mb"], 1),
        },
        "polls": {
            "total": len(rows),
            "in_window": len(window_polls),
            "per_second_window": round(len(window_polls) / window_seconds, 2),
            "per_second_steady": round(len(steady) / steady_seconds, 2),
            "steady_from_s": round(steady_from - window_start, 1),
            "per_minute": [per_minute.get(m, 0) for m in range(int(minutes) + 1)],
            "due_in_window": len(due_in_window),
            "due_not_polled": len(missed),
            "lag_seconds": {
                "p50": _percentile(lags, 0.5),
                "p95": _percentile(lags, 0.95),
                "p99": _percentile(lags, 0.99),
                "max": max(lags, default=float("nan")),
                "over_60s": sum(lag > 60 for lag in lags),
            },
            "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
            "duration_seconds": {
                k: {"n": len(v), "p50": _percentile(v, 0.5), "p95": _percentile(v, 0.95)}
                for k, v in durations.items()
            },
            "new_items": new,
            "updated_items": updated,
        },
        "cpu": {
            "window_seconds": round(busy_wall, 1),
            "daemon_tree_cpu_seconds": round(tree_cpu, 1),
            "daemon_cores": round(tree_cpu / busy_wall, 3),
            # one interpreter: its event loop and the store's thread share one GIL
            "main_process_cores": round(main_cpu / busy_wall, 3),
            "daemon_cpu_ms_per_poll": round(1000 * tree_cpu / max(1, len(window_polls)), 2),
            "feed_server_cores": round(server_cpu / busy_wall, 3),
            "driver_cores": round(driver_cpu / busy_wall, 3),
            "other_cores": round((machine - tree_cpu - server_cpu - driver_cpu) / busy_wall, 3),
        },
        "memory": {
            "main_peak_mb": round(sampler.peak["main_hwm_mb"], 1),
            "tree_peak_rss_mb": round(sampler.peak["tree_rss_mb"], 1),
            "tree_peak_pss_mb": round(sampler.peak["tree_pss_mb"], 1),
            "processes_peak": sampler.peak["procs"],
            "main_rss_mb_end": round(sampler.at(stop_sent)["main_rss_mb"], 1),
        },
        "database": {
            "start_bytes": db_start,
            "end_bytes": db_end,
            "wal_peak_bytes": sampler.peak_wal,
            "items_start": items_before,
            "items_end": items_after,
            "rows_end": counts,
        },
        "in_flight_at_stop": logs.in_flight_at_stop,
        "renders_logged": len(logs.published),
        "log_levels": logs.levels,
        "problems": logs.problems[:20],
        "probes": probes,
        "feed_server_answers": served,
        "daemon_exit": exit_code,
        "daemon_crashed_with": crashed,
        "stop_seconds": round(stopped - stop_sent, 1),
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = layout.dir / f"results-{stamp}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    samples = layout.dir / f"samples-{stamp}.json"
    samples.write_text(json.dumps(sampler.samples))
    print(f"results: {out}", file=sys.stderr)
    return result


def report(result: dict[str, object]) -> str:
    r = result
    polls, cpu, mem, db = r["polls"], r["cpu"], r["memory"], r["database"]  # type: ignore[index]
    start, probes = r["startup"], r["probes"]  # type: ignore[index]
    lag = polls["lag_seconds"]  # type: ignore[index]
    mb = 1024 * 1024
    lines = [
        f"N = {r['feeds']:,} feeds, {r['minutes']} min after a {r['lead_seconds']:.0f} s lead",
        f"- polls/s: {polls['per_second_window']} over the window,"  # type: ignore[index]
        f" {polls['per_second_steady']} from +{polls['steady_from_s']} s"  # type: ignore[index]
        f" (needed {r['needed_polls_per_second']})",
        f"- due in the window and not polled by its last minute:"
        f" {polls['due_not_polled']} of {polls['due_in_window']}",  # type: ignore[index]
        f"- lag after due, s: p50 {lag['p50']:.0f}, p95 {lag['p95']:.0f}, p99 {lag['p99']:.0f},"
        f" max {lag['max']:.0f}; {lag['over_60s']} polls over 60 s late",
        f"- CPU: daemon tree {cpu['daemon_cores']} cores, main process"
        f" {cpu['main_process_cores']} ({cpu['daemon_cpu_ms_per_poll']} ms a"  # type: ignore[index]
        f" poll); feed server {cpu['feed_server_cores']}, driver {cpu['driver_cores']},"  # type: ignore[index]
        f" other {cpu['other_cores']}",  # type: ignore[index]
        f"- memory: main peak {mem['main_peak_mb']} MB, tree peak RSS"  # type: ignore[index]
        f" {mem['tree_peak_rss_mb']} MB / PSS {mem['tree_peak_pss_mb']} MB"  # type: ignore[index]
        f" ({mem['processes_peak']} processes)",  # type: ignore[index]
        f"- start-up: ready after {start['ready_seconds']} s, {start['cpu_seconds']} CPU-s,"  # type: ignore[index]
        f" main {start['main_rss_mb_at_ready']} MB RSS at ready",  # type: ignore[index]
        f"- database: {db['start_bytes']['db'] / mb:.0f} MB at start,"  # type: ignore[index]
        f" {db['end_bytes']['db'] / mb:.0f} MB + WAL {db['end_bytes']['wal'] / mb:.0f} MB at"  # type: ignore[index]
        f" end (WAL peak {db['wal_peak_bytes'] / mb:.0f} MB); items"  # type: ignore[index]
        f" {db['items_start']:,} -> {db['items_end']:,}",  # type: ignore[index]
        f"- outcomes: {polls['outcomes']}",  # type: ignore[index]
        f"- new items {polls['new_items']}, updated {polls['updated_items']};"  # type: ignore[index]
        f" renders logged {r['renders_logged']}; log levels {r['log_levels']}",
        f"- probes: {json.dumps(probes)}",
        f"- daemon exit {r['daemon_exit']} after {r['stop_seconds']} s;"
        f" {r['in_flight_at_stop']} polls started and not done when told to stop",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "build", "serve"])
    parser.add_argument("--feeds", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0, help="measured wall time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hosts", type=int, default=100, help="loopback addresses 127.0.1.x")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument(
        "--lead", type=float, default=None, help="seconds before the first feed is due"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help="minutes the base database is built for (default: --minutes, at least 10);"
        " a shorter run reuses it",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes building the base")
    parser.add_argument("--rebuild", action="store_true", help="build the base database again")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy the daemon's main process for this long, 30 s into the window"
        " (run/profile.txt; not for measured runs)",
    )
    parser.add_argument("--ref", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lead is None:
        # the daemon reads the config and renders every topic before it polls
        args.lead = 15.0 + args.feeds / 1000
    if args.command == "serve":
        return serve(args)
    window = args.window or max(args.minutes, 10.0)
    if window < args.minutes:
        parser.error("--window must be at least --minutes")
    layout = Layout(args.feeds, args.seed, window * 60, args.lead, args.hosts, args.port)
    stale = (
        layout.manifest.exists()
        and json.loads(layout.manifest.read_text()).get("hosts") != layout.hosts
    )
    if args.rebuild or stale or not layout.manifest.exists():
        print(json.dumps(build_base(layout, args.workers)), file=sys.stderr)
    if args.command == "build":
        return 0
    print(report(run(layout, args.minutes, args.profile)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
