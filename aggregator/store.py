"""The SQLite store: feeds' fetch state, items, their copies, search. The only sqlite_utils user.

The current schema, in one place (the migrations below build it; tests/test_store.py
checks this list against the database):

  feeds(url, fetch_url, title, site_url, etag, last_modified, body_hash, last_fetched,
        last_status, last_error, next_due, retry_after, gone, gone_fingerprint, failures,
        moved_to, hint_seconds, entry_chunks, entries_per_day, websub_hub, websub_topic,
        icon_url)
      one row per configured feed URL: validators, schedule, last result, the WebSub hub
      it declares (FeedState)
  items(id, link, canonical_link, title, content_html, summary_html, excerpt, text, author,
        categories, published, updated, first_seen, content_hash, first_feed_url,
        fts_indexed, first_round, image_url)
      one row per story, however many feeds carried it; `id` is its published id;
      `first_feed_url` is the outlet that leads (dedupe.merge); `image_url` its lead's
      image ("" for none), outside `content_hash`
  entries(feed_url, entry_key, item_id, link, canonical_link, content_hash, raw_hash, seen_at,
          title, text)
      one row per (feed, entry): which item it became, its content hash; a copy merged
      into another outlet's story keeps its own title and text, for matching
  item_keys(key, item)
      near-duplicate index: dedupe.index_keys of the story's text and its copies' → the
      item's rowid (a trigger drops an item's keys with it). Like items_fts, it relies on
      items' rowids staying put: a dump reloaded elsewhere must keep them (sqlite3's
      `.dump --preserve-rowids`)
  pruned(feed_url, entry_key, pruned_at)
      entries whose story was pruned (or that a feed's max_items_per_round left out): a
      feed that still lists one does not bring it back; kept TOMBSTONE_LIFE × retention
      and at most MAX_TOMBSTONES per feed
  meta(name, value)
      the dedupe key scheme the item_keys were made with (dedupe.KEY_SCHEME); the config
      every topic was last rendered with (publish.config_fingerprint)
  items_fts(title, text)
      FTS5 over items; new items are added in batches (index_for_search)
  fetches(id, feed_url, fetched_at, duration, status, outcome, error_kind, error, new,
          updated)
      each feed's last HISTORY_LENGTH fetches, for `status --feed`: written by `save` in
      the poll's transaction, trimmed by a trigger (fetches_trim)
  websub(id, feed_url, hub, topic, secret, state, lease_expires, requested_at, error)
      the daemon's WebSub subscriptions, one per feed (model.Subscription): `id` names the
      callback, `secret` signs what the hub pushes (never shown)

Sections: opening and migrating; a feed's state; items, where dedupe's decisions
(dedupe.match, merge, edit) are applied; reading for publishing; maintenance.

Every poll of one feed is written in one IMMEDIATE transaction (`save`), so a crash
loses at most the feeds in flight and a concurrent writer (the daemon and a hand-run
`poll --once`) waits on the busy timeout instead of failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from aggregator import dedupe
from aggregator.errors import StoreError
from aggregator.memory import return_free_memory
from aggregator.model import PRUNED, FeedState, Item, PublishedItem, SourceRef, Subscription
from aggregator.timeutil import from_iso, to_iso, utcnow
from aggregator.update import FeedUpdate

#: seconds a writer waits for another process's transaction before giving up
BUSY_TIMEOUT = 30.0
#: candidate items checked in full when looking for a near-duplicate
MAX_CANDIDATES = 5
#: index keys a candidate must share with a new item, unless it shares the headline
MIN_SHARED_KEYS = 3
#: newest dated stories of a feed read for its entry rate
RATE_SAMPLE = 50
#: tombstones of pruned entries are kept this many times the retention
TOMBSTONE_LIFE = 4
#: and at most this many per feed, the newest
MAX_TOMBSTONES = 5000
#: the watchdog's write probe waits this long for another process's lock, not BUSY_TIMEOUT
PING_TIMEOUT = 1.0
#: fetches kept per feed in its history (`status --feed`)
HISTORY_LENGTH = 20
#: bm25 weight of a story's title against its text (1.0) when searching
TITLE_WEIGHT = 10.0
#: a search narrowed by a topic's include/exclude terms looks at this many best matches
SEARCH_SCAN = 2000
#: a search that takes longer than this is stopped (SQLite's progress handler)
SEARCH_SECONDS = 5.0
#: a search that matches more stories than this ranks only the newest this many
RANK_WINDOW = 10_000

P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger("aggregator")

migrations = Migrations("aggregator")


@migrations(name="001_initial")
def _initial_schema(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE feeds (
            url TEXT PRIMARY KEY,
            fetch_url TEXT NOT NULL,
            title TEXT,
            site_url TEXT,
            etag TEXT,
            last_modified TEXT,
            body_hash TEXT,
            last_fetched TEXT,
            last_status INTEGER,
            last_error TEXT,
            next_due TEXT,
            retry_after TEXT,
            gone INTEGER NOT NULL DEFAULT 0,
            gone_fingerprint TEXT,
            failures INTEGER NOT NULL DEFAULT 0,
            moved_to TEXT,
            hint_seconds INTEGER
        );
        CREATE TABLE items (
            id TEXT PRIMARY KEY,
            link TEXT NOT NULL,
            canonical_link TEXT NOT NULL,
            title TEXT NOT NULL,
            content_html TEXT NOT NULL,
            summary_html TEXT NOT NULL,
            excerpt TEXT NOT NULL,
            text TEXT NOT NULL,
            author TEXT,
            categories TEXT NOT NULL,
            published TEXT NOT NULL,
            updated TEXT NOT NULL,
            first_seen TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            first_feed_url TEXT NOT NULL
        );
        CREATE INDEX items_published ON items (published DESC, id);
        CREATE TABLE entries (
            feed_url TEXT NOT NULL,
            entry_key TEXT NOT NULL,
            item_id TEXT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
            link TEXT NOT NULL,
            canonical_link TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            raw_hash TEXT,
            seen_at TEXT NOT NULL,
            PRIMARY KEY (feed_url, entry_key)
        ) WITHOUT ROWID;
        CREATE INDEX entries_item ON entries (item_id, feed_url);
        CREATE INDEX entries_canonical ON entries (canonical_link) WHERE canonical_link != '';
        CREATE TABLE item_keys (
            key INTEGER NOT NULL,
            item_id TEXT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
            PRIMARY KEY (key, item_id)
        ) WITHOUT ROWID;
        CREATE INDEX item_keys_item ON item_keys (item_id);
        """
    )
    db.table("items").enable_fts(["title", "text"], fts_version="FTS5", create_triggers=True)


@migrations(name="002_batched_search_index")
def _batched_search_index(db: Database) -> None:
    # Indexing each item as it is inserted (sqlite-utils' triggers) flushed a new FTS5
    # segment per feed transaction and re-indexed on every UPDATE, even of dates: over
    # half the cost of storing an item. New items now wait with fts_indexed = 0 until
    # index_for_search() adds them in one batch after a round.
    db.executescript(
        """
        DROP TRIGGER IF EXISTS items_ai;
        DROP TRIGGER IF EXISTS items_ad;
        DROP TRIGGER IF EXISTS items_au;
        ALTER TABLE items ADD COLUMN fts_indexed INTEGER NOT NULL DEFAULT 0;
        UPDATE items SET fts_indexed = 1;
        CREATE INDEX items_unindexed ON items (fts_indexed) WHERE fts_indexed = 0;
        CREATE TRIGGER items_fts_delete AFTER DELETE ON items WHEN old.fts_indexed BEGIN
            INSERT INTO items_fts (items_fts, rowid, title, text)
                VALUES ('delete', old.rowid, old.title, old.text);
        END;
        CREATE TRIGGER items_fts_update AFTER UPDATE OF title, text ON items
        WHEN old.fts_indexed BEGIN
            INSERT INTO items_fts (items_fts, rowid, title, text)
                VALUES ('delete', old.rowid, old.title, old.text);
            INSERT INTO items_fts (rowid, title, text) VALUES (new.rowid, new.title, new.text);
        END;
        """
    )


@migrations(name="003_dedupe_keys_v2")
def _recompute_dedupe_keys(db: Database) -> None:
    # Superseded by the key scheme check (Store._index_current_scheme), which re-indexes
    # whenever dedupe.KEY_SCHEME changes; kept so that its name stays applied.
    pass


@migrations(name="004_entry_chunks")
def _entry_chunks(db: Database) -> None:
    # "chunk:key" hashes of the entries in the feed's last parsed body (partial.py), so
    # that the next changed body parses only its new or edited entries
    db.execute("ALTER TABLE feeds ADD COLUMN entry_chunks TEXT")


@migrations(name="005_rounds_and_key_scheme")
def _rounds_and_key_scheme(db: Database) -> None:
    # items.first_round: the poll round that stored the story first (dedupe.merge); meta
    # holds the scheme the stored dedupe keys were made with (the one of 003: "2")
    db.executescript(
        """
        ALTER TABLE items ADD COLUMN first_round TEXT;
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta (name, value) VALUES ('dedupe_key_scheme', '2');
        """
    )


@migrations(name="006_copy_texts")
def _copy_texts(db: Database) -> None:
    # the title and text of each copy merged into a story (not only the lead's, in items):
    # a new copy is compared with every version of the story, so which one leads does not
    # decide what matches (dedupe.match)
    db.executescript(
        """
        ALTER TABLE entries ADD COLUMN title TEXT;
        ALTER TABLE entries ADD COLUMN text TEXT;
        """
    )


@migrations(name="007_pruned_entries")
def _pruned_entries(db: Database) -> None:
    # tombstones, so that what was pruned stays pruned; and the feed's observed rate of
    # new entries, which its adaptive interval follows (update.interval_for)
    db.executescript(
        """
        CREATE TABLE pruned (
            feed_url TEXT NOT NULL,
            entry_key TEXT NOT NULL,
            pruned_at TEXT NOT NULL,
            PRIMARY KEY (feed_url, entry_key)
        ) WITHOUT ROWID;
        CREATE INDEX pruned_at ON pruned (pruned_at);
        ALTER TABLE feeds ADD COLUMN entries_per_day REAL;
        """
    )


@migrations(name="008_fetch_history")
def _fetch_history(db: Database) -> None:
    # each feed's last fetches (HISTORY_LENGTH), for `status --feed`: one INSERT and one
    # DELETE of at most a row per poll, both on the (feed_url, id) index. (008: main's
    # 007_pruned_entries was written beside it; migrations are applied by name.)
    db.executescript(
        """
        CREATE TABLE fetches (
            id INTEGER PRIMARY KEY,
            feed_url TEXT NOT NULL,
            fetched_at TEXT NOT NULL,
            duration REAL NOT NULL,
            status INTEGER,
            outcome TEXT NOT NULL,
            error_kind TEXT,
            error TEXT,
            new INTEGER NOT NULL DEFAULT 0,
            updated INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX fetches_feed ON fetches (feed_url, id);
        """
    )


@migrations(name="009_websub")
def _websub(db: Database) -> None:
    # the hub each feed declares (update.decide), and the daemon's subscriptions (websub.py)
    db.executescript(
        """
        ALTER TABLE feeds ADD COLUMN websub_hub TEXT;
        ALTER TABLE feeds ADD COLUMN websub_topic TEXT;
        CREATE TABLE websub (
            id TEXT PRIMARY KEY,
            feed_url TEXT NOT NULL UNIQUE,
            hub TEXT NOT NULL,
            topic TEXT NOT NULL,
            secret TEXT NOT NULL,
            state TEXT NOT NULL,
            lease_expires TEXT,
            requested_at TEXT,
            error TEXT
        );
        """
    )


@migrations(name="010_feed_icon")
def _feed_icon(db: Database) -> None:
    # the feed's icon (Atom icon/logo, RSS image, JSON Feed favicon/icon), shown beside
    # the outlet's name on the HTML page. (010: 009 is left to a branch written beside it;
    # migrations are applied by name.)
    db.execute("ALTER TABLE feeds ADD COLUMN icon_url TEXT")


@migrations(name="010_item_image")
def _item_image(db: Database) -> None:
    # a story's lead image (media:thumbnail, an image enclosure, the content's first
    # <img>), for the HTML page; stories stored before fill theirs in when their feed next
    # lists them (a changed entry is cleaned again), and keep "" otherwise
    db.execute("ALTER TABLE items ADD COLUMN image_url TEXT NOT NULL DEFAULT ''")


@migrations(name="011_item_keys_by_rowid")
def _item_keys_by_rowid(db: Database) -> None:
    # The key rows named their item by its 45-character id: ~26 rows an item, at random
    # places of the key index and of the item index beside it, made the two the largest
    # B-trees after items (158 MB at N = 2,000) and most of a cold round's page writes
    # (strace: 2.7 of 3.3 million pwrites at 600 feeds). The item's rowid, which the
    # search index already names it by, makes a row 3x smaller. One statement at a time,
    # not executescript (which commits first): the migration's transaction holds them
    # all, so a crash half-way leaves the old table as it was.
    for statement in (
        """CREATE TABLE item_keys_by_rowid (
            key INTEGER NOT NULL,
            item INTEGER NOT NULL,
            PRIMARY KEY (key, item)
        ) WITHOUT ROWID""",
        """INSERT INTO item_keys_by_rowid (key, item)
            SELECT k.key, i.rowid FROM item_keys k JOIN items i ON i.id = k.item_id
            ORDER BY 1, 2""",
        "DROP TABLE item_keys",
        "ALTER TABLE item_keys_by_rowid RENAME TO item_keys",
        "CREATE INDEX item_keys_item ON item_keys (item)",
        """CREATE TRIGGER items_keys_delete AFTER DELETE ON items BEGIN
            DELETE FROM item_keys WHERE item = old.rowid;
        END""",
    ):
        db.execute(statement)


@migrations(name="012_fetches_trimmed_by_trigger")
def _fetches_trimmed_by_trigger(db: Database) -> None:
    # A feed's history is trimmed to HISTORY_LENGTH inside SQLite as each row goes in,
    # not by a DELETE of its own: one statement fewer on every poll's path, and the
    # sqlite3 module gives up and takes back the GIL around each one, from an event
    # loop that is busy. (The length is written into the trigger: changing
    # HISTORY_LENGTH takes a migration that makes it again.)
    db.execute(
        f"""CREATE TRIGGER fetches_trim AFTER INSERT ON fetches BEGIN
            DELETE FROM fetches WHERE feed_url = new.feed_url AND id <= (
                SELECT id FROM fetches WHERE feed_url = new.feed_url
                ORDER BY id DESC LIMIT 1 OFFSET {int(HISTORY_LENGTH)}
            );
        END"""
    )


@dataclass(frozen=True)
class FetchRecord:
    """One fetch of a feed as its history keeps it: `Store.save` writes it with the poll,
    `Store.fetch_history` reads it back (`status --feed`)."""

    fetched_at: datetime
    #: seconds from the poll's start until its results were ready to store
    duration: float
    #: the HTTP status, None when the fetch failed without one (or the body did not parse)
    status: int | None
    #: "ok" (a body parsed), "not_modified" (304), "unchanged" (the same body), "error",
    #: or "pushed" (a body the feed's WebSub hub pushed, parsed)
    outcome: str
    #: with "error": errors.error_kind
    error_kind: str | None = None
    #: with "error": the message, as stored in the feed's state (redacted, one line)
    error: str | None = None
    #: items the poll stored new and updated (filled in by `save`)
    new: int = 0
    updated: int = 0


@dataclass(frozen=True)
class SaveOutcome:
    new: int = 0
    updated: int = 0
    #: copies that joined an existing story from another entry or feed
    merged: int = 0


@dataclass(frozen=True)
class StoredSource:
    feed_url: str
    link: str
    feed_title: str | None
    site_url: str | None
    icon_url: str | None = None
    #: when this copy was first stored (ISO 8601)
    seen_at: str | None = None


@dataclass(frozen=True)
class KnownEntries:
    """A feed's entries as stored (Store.known_entries)."""

    #: entry key → raw hash (ingest.raw_entry_hash) of what was stored
    raw_hashes: dict[str, str | None]
    #: entry chunk hash → entry key hash of the last parsed body (partial.py)
    chunks: dict[str, str]
    #: publication dates of the feed's newest dated stories (at most RATE_SAMPLE), for
    #: its entry rate (update.entry_rate)
    recent_dates: tuple[datetime, ...] = ()


@dataclass(frozen=True)
class PrunableItem:
    """A story `prune` removes (Store.prunable)."""

    title: str
    published: datetime
    feed_urls: tuple[str, ...]


class Store:
    """A handle on the database file. Not thread-safe: use it from one thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- life cycle -------------------------------------------------------------------

    @classmethod
    def open_readonly(cls, path: Path | str) -> Store | None:
        """The database for reading only (`status`), even on a read-only file system or
        where this user may not write; None when there is none yet. Never migrates."""
        path = Path(path)
        if not path.exists():
            return None
        uri = "file:" + urllib.parse.quote(str(path.absolute())) + "?mode=ro"
        try:
            try:
                conn = _checked_connection(uri)
            except sqlite3.OperationalError:
                conn = _readonly_fallback(path, uri)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot read the database: {e}") from e
        return cls(Database(conn))

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open (creating and migrating if needed) the database in WAL mode."""
        try:
            if str(path) != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT)
            db = Database(conn)
            db.execute("PRAGMA foreign_keys = ON")
            if str(path) != ":memory:":
                db.enable_wal()
            # WAL + NORMAL: a commit survives a process crash; only power loss may
            # lose the last transactions, never the file's integrity.
            db.execute("PRAGMA synchronous = NORMAL")
            # A round touches index pages all over the file: an 8 MB page cache (default
            # 2 MB) cuts the reads by more than half, and checkpointing every 16 MB of WAL
            # instead of 4 MB writes a page changed by several feeds once. The WAL file is
            # cut back to 16 MB after a checkpoint.
            db.execute("PRAGMA cache_size = -8192")
            db.execute("PRAGMA wal_autocheckpoint = 4096")
            db.execute("PRAGMA journal_size_limit = 16777216")
            with _immediate(db):
                pass  # takes the write lock briefly: fails fast on a read-only file
            migrations.apply(db)
            store = cls(db)
            store._index_current_scheme()
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open database: {e}") from e
        return store

    def close(self) -> None:
        with suppress(sqlite3.Error):
            self.optimize()
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- feed state -------------------------------------------------------------------

    def feed_state(self, url: str) -> FeedState:
        row = self._one("SELECT * FROM feeds WHERE url = ?", [url])
        return _state_from_row(row) if row else FeedState(url=url, fetch_url=url)

    def feed_states(self) -> dict[str, FeedState]:
        return {row["url"]: _state_from_row(row) for row in self._rows("SELECT * FROM feeds")}

    def known_entries(self, feed_url: str) -> KnownEntries:
        """What the feed's last polls stored of its entries: read once a changed body is to
        be parsed, so that entries stored already are neither parsed nor cleaned again,
        and entries pruned are not stored again (their raw hash is PRUNED)."""
        row = self._one("SELECT entry_chunks FROM feeds WHERE url = ?", [feed_url])
        tokens = (row["entry_chunks"] or "").split() if row else []
        raw_hashes: dict[str, str | None] = dict(
            self.db.execute(
                "SELECT entry_key, ? FROM pruned WHERE feed_url = ?", [PRUNED, feed_url]
            ).fetchall()
        )
        raw_hashes.update(
            self.db.execute(
                "SELECT entry_key, raw_hash FROM entries WHERE feed_url = ?", [feed_url]
            ).fetchall()
        )
        # a story dated later than it was first seen had no date of its own (or a future
        # one): it says nothing of the feed's rhythm
        dates = self.db.execute(
            "SELECT i.published FROM entries e JOIN items i ON i.id = e.item_id"
            " WHERE e.feed_url = ? AND i.published < i.first_seen"
            " ORDER BY i.published DESC LIMIT ?",
            [feed_url, RATE_SAMPLE],
        ).fetchall()
        return KnownEntries(
            raw_hashes=raw_hashes,
            # a token without ":" was written before keys were kept: it never matches again
            chunks={chunk: key for chunk, _, key in (t.partition(":") for t in tokens) if key},
            recent_dates=tuple(d for (text,) in dates if (d := from_iso(text)) is not None),
        )

    def save(
        self,
        update: FeedUpdate,
        items: Sequence[tuple[Item, str | None]] = (),
        *,
        now: datetime,
        round_id: str,
        left_out: Sequence[str] = (),
        fetch: FetchRecord | None = None,
    ) -> SaveOutcome:
        """Write one poll in one transaction: the feed's new state (`update.decide`) and its
        (item, raw hash) pairs, each deduplicated against the stored stories; with `fetch`,
        the poll's row of the feed's history (its counts set here). `round_id` names the
        poll's round (pipeline.Poller), which dedupe.merge asks. `left_out` are keys of new
        entries not to store, now or later (max_items_per_round)."""
        new = updated = merged = 0
        if not items and not left_out and self.db.conn.in_transaction:
            # A poll that brought no entries (a 304, an error) in a group commit: two
            # writes, and no savepoint around them (two statements fewer, each a GIL
            # hand-over with a busy event loop). The feed's row goes first: if it fails,
            # for whatever reason, nothing of the poll is written; if the history's row
            # then fails, the feed's new state stands without its line of history.
            try:
                self._write_state(update)
                if fetch is not None:
                    self._record_fetch(update.state.url, fetch, 0, 0)
            except sqlite3.Error as e:
                raise StoreError(f"cannot write the database: {e}") from e
            return SaveOutcome(new=0, updated=0, merged=0)
        with _immediate(self.db):
            self._write_state(update)
            if left_out:
                self.db.conn.executemany(
                    "INSERT OR IGNORE INTO pruned (feed_url, entry_key, pruned_at)"
                    " VALUES (?, ?, ?)",
                    [(update.state.url, key, to_iso(now)) for key in left_out],
                )
            for item, raw_hash in items:
                outcome = self._save_item(item, raw_hash, now, round_id)
                new += outcome == "new"
                updated += outcome == "updated"
                merged += outcome == "merged"
            if fetch is not None:
                self._record_fetch(update.state.url, fetch, new, updated)
        return SaveOutcome(new=new, updated=updated, merged=merged)

    def _record_fetch(self, feed_url: str, fetch: FetchRecord, new: int, updated: int) -> None:
        """The fetch's row in the feed's history; the row that falls out of it goes in the
        same statement (the fetches_trim trigger, walking at most HISTORY_LENGTH + 1
        index entries): on every poll's path."""
        self.db.execute(
            "INSERT INTO fetches (feed_url, fetched_at, duration, status, outcome, error_kind,"
            " error, new, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                feed_url,
                to_iso(fetch.fetched_at),
                round(fetch.duration, 3),
                fetch.status,
                fetch.outcome,
                fetch.error_kind,
                fetch.error,
                new,
                updated,
            ],
        )

    def fetch_history(self, feed_url: str, limit: int = HISTORY_LENGTH) -> list[FetchRecord]:
        """The feed's last `limit` fetches, newest first; none from a database made before
        the history was kept (`status` reads without migrating)."""
        try:
            rows = list(
                self._rows(
                    "SELECT * FROM fetches WHERE feed_url = ? ORDER BY id DESC LIMIT ?",
                    [feed_url, limit],
                )
            )
        except sqlite3.OperationalError:  # no such table: an older database
            return []
        records = []
        for row in rows:
            fetched_at = from_iso(row["fetched_at"])
            assert fetched_at is not None
            records.append(
                FetchRecord(
                    fetched_at=fetched_at,
                    duration=row["duration"],
                    status=row["status"],
                    outcome=row["outcome"],
                    error_kind=row["error_kind"],
                    error=row["error"],
                    new=row["new"],
                    updated=row["updated"],
                )
            )
        return records

    def _write_state(self, update: FeedUpdate) -> None:
        state = update.state
        row: dict[str, Any] = {
            "url": state.url,
            "fetch_url": state.fetch_url,
            "title": state.title,
            "site_url": state.site_url,
            "etag": state.etag,
            "last_modified": state.last_modified,
            "body_hash": state.body_hash,
            "last_fetched": _iso_or_none(state.last_fetched),
            "last_status": state.last_status,
            "last_error": state.last_error,
            "next_due": _iso_or_none(state.next_due),
            "retry_after": _iso_or_none(state.retry_after),
            "gone": int(state.gone),
            "gone_fingerprint": state.gone_fingerprint,
            "failures": state.failures,
            "moved_to": state.moved_to,
            "hint_seconds": state.hint_seconds,
            "entries_per_day": state.entries_per_day,
            "icon_url": state.icon_url,
            "websub_hub": state.websub_hub,
            "websub_topic": state.websub_topic,
        }
        if update.entry_chunks is not None:
            row["entry_chunks"] = " ".join(f"{chunk}:{key}" for chunk, key in update.entry_chunks)
        # One INSERT … ON CONFLICT, not sqlite-utils' Table.upsert: that reads the table's
        # schema on every call (0.33 ms a feed, a fifth of a warm round of 2,000 feeds)
        columns = ", ".join(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in row if c != "url")
        self.db.execute(
            f"INSERT INTO feeds ({columns}) VALUES ({', '.join('?' for _ in row)})"
            f" ON CONFLICT (url) DO UPDATE SET {updates}",
            list(row.values()),
        )

    # --- items: dedupe's decisions applied ---------------------------------------------

    def _save_item(self, item: Item, raw_hash: str | None, now: datetime, round_id: str) -> str:
        entry = self._one(
            "SELECT item_id, content_hash FROM entries WHERE feed_url = ? AND entry_key = ?",
            [item.feed_url, item.entry_key],
        )
        if entry is not None:
            self.db.execute(
                "UPDATE entries SET raw_hash = ?, content_hash = ?"
                " WHERE feed_url = ? AND entry_key = ?",
                [raw_hash, item.content_hash, item.feed_url, item.entry_key],
            )
            if item.content_hash == entry["content_hash"]:
                # no edit, but the lead's image may be new (one stored before images were)
                self.db.execute(
                    "UPDATE items SET image_url = ?"
                    " WHERE id = ? AND first_feed_url = ? AND image_url != ?",
                    [item.image_url, entry["item_id"], item.feed_url, item.image_url],
                )
                return "unchanged"
            self.db.execute(  # a merged copy's own version, kept for matching, follows it
                "UPDATE entries SET title = ?, text = ?"
                " WHERE feed_url = ? AND entry_key = ? AND text IS NOT NULL",
                [item.title, item.text, item.feed_url, item.entry_key],
            )
            story = self._story(entry["item_id"])
            change = dedupe.edit(story, item, now) if story else dedupe.StoryChange()
            return "updated" if self._apply(entry["item_id"], change) else "unchanged"
        matches = dedupe.match(item, self._candidates(item))
        if matches:
            match, *apart = matches
            self._insert_entry(item, match, raw_hash, now, own_text=True)
            self._index_keys(match, item)
            if apart:
                feeds = self._feeds_of(match)
                for other in apart:
                    # Stories one feed gave as distinct entries were judged two stories by
                    # the same-feed rules: a copy matching both (their shared footer) does
                    # not make them one
                    other_feeds = self._feeds_of(other)
                    if feeds.isdisjoint(other_feeds):
                        self._absorb(match, other)
                        feeds |= other_feeds
            story = self._story(match)
            assert story is not None
            self._apply(match, dedupe.merge(story, item, round_id), story)
            return "merged"
        item_id = "urn:uuid:" + str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{item.feed_url}\n{item.entry_key}")
        )
        if self._one("SELECT 1 FROM items WHERE id = ?", [item_id]):
            # The same entry key came back after its item was pruned; keep ids unique.
            item_id = "urn:uuid:" + str(uuid.uuid4())
        row = {
            "id": item_id,
            **_story_columns(item, max(item.updated, item.published)),
            "published": to_iso(item.published),
            "first_seen": to_iso(now),
            "first_feed_url": item.feed_url,
            "first_round": round_id,
        }
        inserted = self.db.execute(
            f"INSERT INTO items ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
            list(row.values()),
        )
        self._index_keys(item_id, item, inserted.lastrowid)
        self._insert_entry(item, item_id, raw_hash, now)
        return "new"

    def _candidates(self, item: Item) -> Iterator[dedupe.Candidate]:
        """Stored stories `item` may be a copy of, cheapest first, read as they are asked
        for: the story that has its link, then those sharing most of its index keys."""
        link = dedupe.lookup_link(item)
        if link is not None:
            row = self._one(
                # the second condition lets SQLite use the partial index
                "SELECT item_id FROM entries WHERE canonical_link = ? AND canonical_link != ''"
                " LIMIT 1",
                [link],
            )
            # asked only when some entry has the link (most new items have none): the
            # titles of the item's own feed's other entries with it
            if row is not None and not dedupe.is_page_of_several(
                item,
                (
                    str(same["title"])
                    for same in self._rows(
                        "SELECT coalesce(e.title, i.title) AS title FROM entries e"
                        " JOIN items i ON i.id = e.item_id WHERE e.canonical_link = ?"
                        " AND e.canonical_link != '' AND e.feed_url = ?",
                        [link, item.feed_url],
                    )
                ),
            ):
                yield dedupe.Candidate(str(row["item_id"]), same_link=True)
        keys = _keys_of(item)
        if not keys:
            return
        # A copy the matcher accepts shares a run of text at least 34 words long near its
        # top, hence at least 3 winnowed keys (dedupe.index_keys), or its headline. One or
        # two keys in common are an outlet's trailer or byline on all its items: no
        # candidate, and no comparison of whole texts.
        title_key = dedupe.title_key(item.title)
        found = self.db.execute(
            "SELECT i.rowid, i.id FROM (SELECT item, count(*) AS shared, max(key = ?) AS"
            f" same_title FROM item_keys WHERE key IN {_JSON_LIST}"
            " GROUP BY item HAVING shared >= ? OR same_title) AS c"
            " JOIN items i ON i.rowid = c.item ORDER BY c.shared DESC, i.id LIMIT ?",
            [title_key, _json_list(keys), min(MIN_SHARED_KEYS, len(keys)), MAX_CANDIDATES],
        ).fetchall()
        for rowid, item_id in found:
            row = self._one(
                "SELECT title, text, first_feed_url FROM items WHERE rowid = ?", [rowid]
            )
            if row is not None:
                yield dedupe.Candidate(
                    item_id, row["title"], row["text"], feed_url=row["first_feed_url"]
                )
            copies = self.db.execute(
                "SELECT title, text, feed_url FROM entries WHERE item_id = ? AND text IS NOT NULL",
                [item_id],
            ).fetchall()
            for title, text, feed_url in copies:
                yield dedupe.Candidate(item_id, title, text, feed_url=feed_url)

    def _feeds_of(self, item_id: str) -> set[str]:
        """The feeds that have an entry in the story."""
        rows = self.db.execute("SELECT feed_url FROM entries WHERE item_id = ?", [item_id])
        return {str(feed_url) for (feed_url,) in rows.fetchall()}

    def _absorb(self, item_id: str, other_id: str) -> None:
        """Join story `other_id`, found to be the same story as `item_id`, to it: its
        copies (the lead's text kept with its entry), keys and earliest date move; its
        item goes."""
        other = self._story(other_id)
        if other is None:
            return
        self.db.execute(
            "UPDATE entries SET (title, text) = (SELECT title, text FROM items WHERE id = ?)"
            " WHERE item_id = ? AND feed_url = ? AND text IS NULL",
            [other_id, other_id, other.lead_feed_url],
        )
        self.db.execute("UPDATE entries SET item_id = ? WHERE item_id = ?", [item_id, other_id])
        self.db.execute(
            "INSERT OR IGNORE INTO item_keys (key, item)"
            " SELECT key, (SELECT rowid FROM items WHERE id = ?) FROM item_keys"
            " WHERE item = (SELECT rowid FROM items WHERE id = ?)",
            [item_id, other_id],
        )
        self.db.execute(
            "UPDATE items SET published = min(published, ?) WHERE id = ?",
            [to_iso(other.published), item_id],
        )
        self.db.execute("DELETE FROM items WHERE id = ?", [other_id])

    def _story(self, item_id: str) -> dedupe.StoredStory | None:
        row = self._one(
            "SELECT published, updated, first_feed_url, first_round FROM items WHERE id = ?",
            [item_id],
        )
        if row is None:
            return None
        published, updated = from_iso(row["published"]), from_iso(row["updated"])
        assert published is not None and updated is not None
        return dedupe.StoredStory(
            item_id, published, updated, row["first_feed_url"], row["first_round"]
        )

    def _apply(
        self,
        item_id: str,
        change: dedupe.StoryChange,
        story: dedupe.StoredStory | None = None,
    ) -> bool:
        """Write a story change; False when there was nothing to change. A new lead's
        text replaces the story's: the previous lead's (`story`) stays with its entry."""
        columns: dict[str, Any] = {}
        if change.lead_feed_url is not None and story is not None:
            self.db.execute(
                "UPDATE entries SET (title, text) = (SELECT title, text FROM items WHERE id = ?)"
                " WHERE item_id = ? AND feed_url = ? AND text IS NULL",
                [item_id, item_id, story.lead_feed_url],
            )
        if change.text_from is not None:
            columns.update(_story_columns(change.text_from))
        if change.lead_feed_url is not None:
            columns["first_feed_url"] = change.lead_feed_url
        if change.published is not None:
            columns["published"] = to_iso(change.published)
        if change.updated is not None:
            columns["updated"] = to_iso(change.updated)
        if not columns:
            return False
        self.db.execute(
            f"UPDATE items SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
            [*columns.values(), item_id],
        )
        if change.text_from is not None:
            # the new text's keys join the story's; those of the text it replaces stay, as
            # they would for a copy (a few extra candidates, no keys recomputed)
            self._index_keys(item_id, change.text_from)
        return True

    def _index_keys(self, item_id: str, item: Item, rowid: int | None = None) -> None:
        """`item`'s keys to the story `item_id` (whose rowid the caller may know)."""
        if rowid is None:
            row = self._one("SELECT rowid AS ref FROM items WHERE id = ?", [item_id])
            if row is None:
                return
            rowid = row["ref"]
        self.db.execute(
            "INSERT OR IGNORE INTO item_keys (key, item) SELECT value, ? FROM json_each(?)",
            [rowid, _json_list(_keys_of(item))],
        )

    def get_meta(self, name: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE name = ?", [name])
        return row["value"] if row else None

    def set_meta(self, name: str, value: str) -> None:
        with _immediate(self.db):
            self.db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", [name, value]
            )

    def _index_current_scheme(self) -> None:
        """Re-index every stored story when dedupe.KEY_SCHEME changed since its keys were
        made: keys of an old scheme would never match new copies of old stories."""
        if self.get_meta("dedupe_key_scheme") == dedupe.KEY_SCHEME:
            return
        with _immediate(self.db):
            self.db.execute("DELETE FROM item_keys")
            # streamed, not fetched whole: a large database's texts need not fit in memory
            rows = self.db.conn.execute(
                "SELECT rowid, title, text FROM items UNION ALL"
                " SELECT i.rowid, e.title, e.text FROM entries e JOIN items i ON i.id = e.item_id"
                " WHERE e.text IS NOT NULL"
            )
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO item_keys (key, item) VALUES (?, ?)",
                (
                    (key, rowid)
                    for rowid, title, text in rows
                    for key in dedupe.index_keys(title, text)
                ),
            )
            self.db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('dedupe_key_scheme', ?)",
                [dedupe.KEY_SCHEME],
            )

    def _insert_entry(
        self,
        item: Item,
        item_id: str,
        raw_hash: str | None,
        now: datetime,
        own_text: bool = False,
    ) -> None:
        """The entry's row; with `own_text` (a copy merged into another's story) its title
        and text too."""
        self.db.execute(
            "INSERT INTO entries (feed_url, entry_key, item_id, link, canonical_link,"
            " content_hash, raw_hash, seen_at, title, text)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                item.feed_url,
                item.entry_key,
                item_id,
                item.link,
                item.canonical_link,
                item.content_hash,
                raw_hash,
                to_iso(now),
                item.title if own_text else None,
                item.text if own_text else None,
            ],
        )

    # --- reading for publishing -------------------------------------------------------

    def newest_items(
        self,
        feed_urls: Sequence[str],
        limit: int,
        accept: Callable[[PublishedItem, str], bool],
        display_names: Mapping[str, str],
        before: tuple[datetime, str] | None = None,
    ) -> list[PublishedItem]:
        """The newest `limit` items carried by any of `feed_urls` that `accept(item, text)`,
        in the published order (newest first, then by id); with `before` (published, id),
        only the items after it in that order: an archive page (paging.py)."""
        if not feed_urls or limit <= 0:
            return []
        params: list[Any] = [_json_list(feed_urls)]
        older = ""
        if before is not None:
            # published <= ? first, so that the items_published index bounds the scan
            older = " AND published <= ? AND (published < ? OR id > ?)"
            moment = to_iso(before[0])
            params += [moment, moment, before[1]]
        query = (
            "SELECT * FROM items WHERE EXISTS (SELECT 1 FROM entries e WHERE e.item_id = items.id"
            f" AND e.feed_url IN {_JSON_LIST}){older} ORDER BY published DESC, id"
        )
        chosen: list[PublishedItem] = []
        for row in self._rows(query, params):
            item = self._published_item(row, display_names)
            if accept(item, row["text"]):
                chosen.append(item)
                if len(chosen) >= limit:
                    break
        return chosen

    def _published_item(self, row: Mapping[str, Any], names: Mapping[str, str]) -> PublishedItem:
        stored = self.item_sources(row["id"])
        sources = tuple(
            SourceRef(
                title=names.get(s.feed_url) or s.feed_title or s.feed_url,
                url=s.site_url or s.link or s.feed_url,
                feed_url=s.feed_url,
                icon_url=s.icon_url,
            )
            for s in stored
        )
        published = from_iso(row["published"])
        updated = from_iso(row["updated"])
        assert published is not None and updated is not None
        # the story last changed when its newest copy arrived or it was edited
        arrivals = [moment for s in stored if (moment := from_iso(s.seen_at))]
        changed_at = max([updated, published, *arrivals])
        return PublishedItem(
            id=row["id"],
            link=row["link"],
            title=row["title"],
            content_html=row["content_html"],
            summary_html=row["summary_html"],
            excerpt=row["excerpt"],
            author=row["author"],
            categories=tuple(json.loads(row["categories"])),
            published=published,
            updated=max(updated, published),
            sources=sources,
            image_url=row["image_url"] or "",
            changed_at=changed_at,
        )

    def item_sources(self, item_id: str) -> list[StoredSource]:
        """The feeds an item came through, first outlet first."""
        return [
            StoredSource(
                r["feed_url"], r["link"], r["title"], r["site_url"], r["icon_url"], r["seen_at"]
            )
            for r in self._rows(
                "SELECT e.feed_url, e.link, e.seen_at, f.title, f.site_url, f.icon_url,"
                " (e.feed_url = i.first_feed_url) AS first"
                " FROM entries e JOIN items i ON i.id = e.item_id"
                " LEFT JOIN feeds f ON f.url = e.feed_url"
                " WHERE e.item_id = ? ORDER BY first DESC, e.seen_at, e.feed_url",
                [item_id],
            )
        ]

    def item_counts(self) -> dict[str, int]:
        """Stored items per feed URL."""
        return {
            r["feed_url"]: r["n"]
            for r in self._rows(
                "SELECT feed_url, count(DISTINCT item_id) AS n FROM entries GROUP BY feed_url"
            )
        }

    def index_for_search(self) -> int:
        """Add items stored since the last call to the full-text index; returns how many."""
        with _immediate(self.db):
            cursor = self.db.execute(
                "INSERT INTO items_fts (rowid, title, text)"
                " SELECT rowid, title, text FROM items WHERE fts_indexed = 0"
            )
            self.db.execute("UPDATE items SET fts_indexed = 1 WHERE fts_indexed = 0")
        return cursor.rowcount

    def index_pending(self) -> int:
        """`index_for_search`, only if some stored item waits for it: a read (one row of a
        partial index) when none does, so a search takes the write lock only when needed."""
        if self._one("SELECT 1 AS x FROM items WHERE fts_indexed = 0 LIMIT 1") is None:
            return 0
        return self.index_for_search()

    def search_items(
        self,
        match: str,
        *,
        limit: int,
        display_names: Mapping[str, str],
        feed_urls: Sequence[str] | None = None,
        since: datetime | None = None,
        accept: Callable[[PublishedItem, str], bool] | None = None,
        seconds: float = SEARCH_SECONDS,
    ) -> list[tuple[PublishedItem, float]]:
        """Indexed stories matching `match`, an FTS5 expression made by search.Query.match
        (never a user's text), best first: (item, relevance), relevance being -bm25 with
        the title weighted TITLE_WEIGHT times the text. Only stories carried by one of
        `feed_urls` (when given), published at or after `since`, and that `accept(item,
        text)`; of those at most `limit`. Only the newest RANK_WINDOW matches are ranked, and
        with `accept` the best SEARCH_SCAN of them looked at. StoreError when it takes
        longer than `seconds`."""
        if limit <= 0 or (feed_urls is not None and not feed_urls):
            return []
        sql = (
            "SELECT items.*, items_fts.rank AS score FROM items_fts"
            " JOIN items ON items.rowid = items_fts.rowid"
            " WHERE items_fts MATCH ? AND items_fts.rank MATCH ? AND items_fts.rowid >= ?"
        )
        params: list[Any] = [match, f"bm25({TITLE_WEIGHT}, 1.0)"]
        if since is not None:
            sql += " AND items.published >= ?"
            params.append(to_iso(since))
        if feed_urls is not None:
            sql += (
                " AND EXISTS (SELECT 1 FROM entries e WHERE e.item_id = items.id"
                f" AND e.feed_url IN {_JSON_LIST})"
            )
            params.append(_json_list(feed_urls))
        # ORDER BY rank: FTS5 ranks the matches itself (the rank MATCH above sets bm25's
        # weights), cheaper than sorting on a bm25() call
        sql += " ORDER BY items_fts.rank LIMIT ?"
        params.append(limit if accept is None else max(limit, SEARCH_SCAN))
        stop_at = time.monotonic() + seconds
        conn = self.db.conn
        # SQLite calls this every 10,000 virtual machine steps; non-zero aborts the query
        conn.set_progress_handler(lambda: time.monotonic() > stop_at, 10_000)
        found: list[tuple[PublishedItem, float]] = []
        try:
            # Ranking costs per matching story (bm25 over all of them, FTS5 has no top-k):
            # a query that matches most of the archive ("the", "said") is ranked among its
            # newest RANK_WINDOW matches. Rowids grow with storing, and FTS5 walks a rowid
            # range without reading the rest, so the probe and the ranking stay bounded.
            window = self._one(
                "SELECT rowid FROM items_fts WHERE items_fts MATCH ?"
                " ORDER BY rowid DESC LIMIT 1 OFFSET ?",
                [match, RANK_WINDOW - 1],
            )
            params.insert(2, window["rowid"] if window else 0)
            for row in self._rows(sql, params):
                item = self._published_item(row, display_names)
                if accept is None or accept(item, row["text"]):
                    found.append((item, -row["score"]))
                    if len(found) >= limit:
                        break
                if time.monotonic() > stop_at:
                    raise sqlite3.OperationalError("interrupted")
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                raise StoreError(
                    f"the search took longer than {seconds:g} s; narrow it down"
                ) from e
            raise StoreError(f"cannot search the database: {e}") from e
        finally:
            conn.set_progress_handler(None, 0)
        return found

    def search(self, query: str, limit: int = 20) -> list[str]:
        """Item ids matching an FTS5 query (raw FTS5 syntax: for tests and tools, not for
        users' text, which goes through search.parse_query and search_items), best first."""
        self.index_for_search()
        return [
            r["id"]
            for r in self._rows(
                "SELECT items.id FROM items_fts JOIN items ON items.rowid = items_fts.rowid"
                " WHERE items_fts MATCH ? ORDER BY rank LIMIT ?",
                [query, limit],
            )
        ]

    # --- WebSub subscriptions ----------------------------------------------------------

    def subscriptions(self) -> list[Subscription]:
        """Every WebSub subscription; none in a database made before them (`status`)."""
        try:
            rows = list(self._rows("SELECT * FROM websub ORDER BY feed_url"))
        except sqlite3.OperationalError:  # no such table: an older database
            return []
        return [
            Subscription(
                id=row["id"],
                feed_url=row["feed_url"],
                hub=row["hub"],
                topic=row["topic"],
                secret=row["secret"],
                state=row["state"],
                lease_expires=from_iso(row["lease_expires"]),
                requested_at=from_iso(row["requested_at"]),
                error=row["error"],
            )
            for row in rows
        ]

    def put_subscription(self, subscription: Subscription) -> None:
        """Write a subscription, replacing the feed's previous one (another id)."""
        with _immediate(self.db):
            self.db.execute(
                "DELETE FROM websub WHERE feed_url = ? AND id != ?",
                [subscription.feed_url, subscription.id],
            )
            self.db.execute(
                "INSERT OR REPLACE INTO websub (id, feed_url, hub, topic, secret, state,"
                " lease_expires, requested_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    subscription.id,
                    subscription.feed_url,
                    subscription.hub,
                    subscription.topic,
                    subscription.secret,
                    subscription.state,
                    _iso_or_none(subscription.lease_expires),
                    _iso_or_none(subscription.requested_at),
                    subscription.error,
                ],
            )

    def delete_subscription(self, subscription_id: str) -> None:
        with _immediate(self.db):
            self.db.execute("DELETE FROM websub WHERE id = ?", [subscription_id])

    # --- maintenance ------------------------------------------------------------------

    def prunable(self, older_than: datetime, limit: int) -> tuple[list[PrunableItem], int]:
        """The first `limit` stories `prune(older_than)` would delete, oldest first, and how
        many it would delete in all."""
        cutoff = to_iso(older_than)
        rows = self._rows(
            "SELECT i.title, i.published, group_concat(e.feed_url, char(10)) AS feeds"
            " FROM items i JOIN entries e ON e.item_id = i.id WHERE i.published < ?"
            " GROUP BY i.id ORDER BY i.published, i.id LIMIT ?",
            [cutoff, limit],
        )
        listed = [
            PrunableItem(r["title"], published, tuple(r["feeds"].split("\n")))
            for r in rows
            if (published := from_iso(r["published"])) is not None
        ]
        count = self._one("SELECT count(*) AS n FROM items WHERE published < ?", [cutoff])
        return listed, count["n"] if count else 0

    def prune(self, older_than: datetime, now: datetime | None = None) -> int:
        """Delete items published before `older_than` with their copies and index keys,
        leaving a tombstone of each copy's (feed, entry key) so that a feed that still
        lists the entry does not bring it back. Tombstones older than TOMBSTONE_LIFE times
        the retention (`now - older_than`), or past MAX_TOMBSTONES a feed, go."""
        now = now or utcnow()
        cutoff = to_iso(older_than)
        keep_since = to_iso(now - max(now - older_than, timedelta(days=1)) * TOMBSTONE_LIFE)
        with _immediate(self.db):
            self.db.execute(
                "INSERT OR REPLACE INTO pruned (feed_url, entry_key, pruned_at)"
                " SELECT e.feed_url, e.entry_key, ? FROM entries e"
                " JOIN items i ON i.id = e.item_id WHERE i.published < ?",
                [to_iso(now), cutoff],
            )
            cursor = self.db.execute("DELETE FROM items WHERE published < ?", [cutoff])
            removed = cursor.rowcount
            self.db.execute("DELETE FROM pruned WHERE pruned_at < ?", [keep_since])
            self.db.execute(
                "DELETE FROM pruned WHERE (feed_url, entry_key) IN (SELECT feed_url, entry_key"
                " FROM (SELECT feed_url, entry_key, row_number() OVER (PARTITION BY feed_url"
                " ORDER BY pruned_at DESC) AS n FROM pruned) WHERE n > ?)",
                [MAX_TOMBSTONES],
            )
        return removed

    def optimize(self) -> None:
        self.db.execute("PRAGMA optimize")

    def probe(self) -> str | None:
        """None when the database can take a write lock within PING_TIMEOUT; "locked"
        when another process holds it; else what is wrong (read-only, I/O error)."""
        conn = self.db.conn
        conn.execute(f"PRAGMA busy_timeout = {int(PING_TIMEOUT * 1000)}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            with suppress(sqlite3.Error):
                conn.rollback()
            return lock_problem(e)
        except sqlite3.Error as e:
            return str(e)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        return None

    def integrity_ok(self) -> bool:
        row = self._one("PRAGMA integrity_check")
        return row is not None and row["integrity_check"] == "ok"

    # --- helpers ----------------------------------------------------------------------

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        return next(self._rows(sql, params), None)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """A read's rows as dicts. Not sqlite-utils' `query`, which guards each statement
        with a savepoint in case it writes: three statements and three hand-overs of the
        GIL for every read, where ours only read."""
        cursor = self.db.conn.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return (dict(zip(names, row, strict=True)) for row in cursor)


class StoreThread:
    """The Store on a thread of its own, so the event loop never waits on SQLite: not on
    its I/O, and not on another process's write lock (up to BUSY_TIMEOUT per write).
    Calls run one at a time, in order, on the thread that opened the connection.

        db = await StoreThread.open(path)
        state = await db.run(Store.feed_state, url)

    Hand-over in bulk: the calls made in one turn of the event loop go to the thread as
    one message, and their results come back as one. Each message crossing between the
    threads costs a wake-up and a turn of the GIL on each side, and a round of 2,000 304s
    spent more wall time on those (1.3 s) than on its SQL (30 ms).

    Group commit: the per-poll calls (`_BATCHED_WRITES`, `_BATCHED_READS`) that follow one
    another share one transaction, each write with entries in a savepoint of its own
    (`_immediate`; one without, a 304 say, writes the feed's row and then its history
    row, see `Store.save`), so a round writes a changed index page once per batch rather
    than once per feed. The batch commits when the thread has had nothing to do for
    `BATCH_LINGER` seconds, after `BATCH_SECONDS` or `BATCH_CALLS` writes, and before any
    other call (a render, a prune) runs. A crash loses no poll: a feed's new state and
    its items are in the same transaction, so a poll that was not committed left the
    feed's stored state as it was, and the feed is fetched again. A failed COMMIT fails
    the next call, so the round stops with the error.
    """

    BATCH_LINGER = 0.05
    BATCH_SECONDS = 0.5
    BATCH_CALLS = 100
    #: a message's finished calls get their results before its next call runs once the
    #: first has waited this long (seconds); and always before anything that may take
    #: long: a call that is not a poll's (a render), a BEGIN that may wait on another
    #: process's lock, a COMMIT
    DELIVERY_DELAY = 0.01

    def __init__(self, path: Path | str) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[list[_Call] | None] = queue.SimpleQueue()
        #: each event loop's calls made since it last sent a message (`_send_outbox`)
        self._outboxes: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        #: monotonic submit time of each call not yet finished
        self._pending: dict[int, float] = {}
        self._lock = threading.Lock()
        self._serial = 0
        self._closed = False
        #: the thread has stopped serving (closed, or failed outside any call)
        self._stopped = False
        #: a batch's COMMIT failed: the next call raises it
        self._failed: StoreError | None = None
        self._store: Store | None = None
        self._thread: threading.Thread | None = None
        # the group commit's state, touched by the store's thread only
        self._in_batch = 0
        self._batch_started = 0.0

    @classmethod
    async def open(cls, path: Path | str) -> StoreThread:
        db = cls(path)
        opened: Future[Store] = Future()
        # the connection is opened on the thread that uses it (sqlite3's rule)
        db._thread = threading.Thread(target=db._serve, args=(opened,), name="store", daemon=True)
        db._thread.start()
        db._store = await asyncio.wrap_future(opened)
        return db

    async def run(
        self, fn: Callable[Concatenate[Store, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`fn(store, *args, **kwargs)` on the store's thread."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise StoreError("the database is closed")
            self._serial += 1
            serial = self._serial
            self._pending[serial] = time.monotonic()
            outbox = self._outboxes.setdefault(loop, [])
            outbox.append(_Call(fn, args, kwargs, future, serial, waiter))
            if len(outbox) == 1:
                loop.call_soon(self._send_outbox, loop)
        try:
            return await waiter
        except asyncio.CancelledError:
            # the call may be running (it cannot be stopped half-way) or still queued
            if future.cancel():
                self._done(serial)
            raise

    def _send_outbox(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            calls = self._outboxes.pop(loop, [])
            if not calls:
                return
            if not self._stopped:
                self._queue.put(calls)
                return
        self._fail_unrun(calls, StoreError("the database is closed"))  # nobody would run them

    def _fail_unrun(self, calls: Sequence[_Call], error: StoreError) -> None:
        """Fail those of `calls` that have not run (none of them will now) and hand every
        result back."""
        for call in calls:
            future = call.future
            if not future.done() and (future.running() or future.set_running_or_notify_cancel()):
                future.set_exception(error)
            self._done(call.serial)
        _deliver(calls)

    def _done(self, serial: int) -> None:
        with self._lock:
            self._pending.pop(serial, None)

    def _serve(self, opened: Future[Store]) -> None:
        try:
            store = Store.open(self._path)
        except BaseException as error:
            opened.set_exception(error)
            return
        opened.set_result(store)
        try:
            self._serve_calls(store)
        except Exception:  # a bug outside any call: said once, and the thread stops
            log.exception("the database's thread failed; the database is closed")
        finally:
            with self._lock:  # no call is queued from now on (`run`, `_send_outbox`)
                self._stopped = self._closed = True
            with suppress(sqlite3.Error):
                store.db.close()
            while True:  # calls queued behind the close
                try:
                    calls = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._fail_unrun(calls or [], StoreError("the database is closed"))

    def _serve_calls(self, store: Store) -> None:
        while True:
            if self._in_batch:
                try:
                    calls = self._queue.get(timeout=self.BATCH_LINGER)
                except queue.Empty:
                    self._commit(store)
                    continue
            else:
                calls = self._queue.get()
            if calls is None:
                if self._in_batch:
                    self._commit(store)
                return
            try:
                self._serve_message(store, calls)
            except BaseException:
                # not a call's own error (a bug here): its callers are answered, not left
                # waiting, and the thread stops (`_serve`), so later calls fail at once
                self._fail_unrun(calls, StoreError("the database's thread failed"))
                raise
            if not self._in_batch:  # not while holding the write lock: a trim takes milliseconds
                return_free_memory()  # what the calls and their rows left free

    def _serve_message(self, store: Store, calls: list[_Call]) -> None:
        """Run a message's calls in order, each result sent once it is not worth holding."""
        undelivered = 0  # calls[undelivered:index] are finished, their results not sent
        first_done = 0.0  # when calls[undelivered] finished
        for index, call in enumerate(calls):
            step = self._batch_step(call)
            if index > undelivered and (
                call.fn not in _PER_POLL
                or step in ("begin", "commit")  # may wait on another process's lock
                or time.monotonic() - first_done > self.DELIVERY_DELAY
            ):
                _deliver(calls[undelivered:index])
                undelivered = index
            if step == "begin":
                self._batch_started = time.monotonic()
                self._begin(store)
            elif step == "commit":
                self._commit(store)
            if step in ("begin", "join"):
                self._in_batch += 1
            self._call(store, call)
            if index == undelivered:
                first_done = time.monotonic()
            if self._in_batch >= self.BATCH_CALLS or (
                self._in_batch and time.monotonic() - self._batch_started > self.BATCH_SECONDS
            ):
                _deliver(calls[undelivered : index + 1])
                undelivered = index + 1
                self._commit(store)
        _deliver(calls[undelivered:])

    def _batch_step(self, call: _Call) -> Literal["begin", "join", "commit", "none"]:
        """What `call` does to the group commit's batch: a write opens one (reads alone
        take no lock) or joins it; any call but a poll's read commits it first."""
        if call.fn in _BATCHED_WRITES and self._failed is None:
            return "join" if self._in_batch else "begin"
        if self._in_batch and call.fn not in _BATCHED_READS:
            return "commit"
        return "none"

    def _begin(self, store: Store) -> None:
        try:
            _begin_immediate(store.db)
        except StoreError as e:
            self._failed = e

    def _commit(self, store: Store) -> None:
        self._in_batch = 0
        if not store.db.conn.in_transaction:
            return
        try:
            _commit_or_roll_back(store.db)
        except StoreError as e:
            self._failed = e

    def _call(self, store: Store, call: _Call) -> None:
        try:
            if not call.future.set_running_or_notify_cancel():
                return
            if self._failed is not None:
                error, self._failed = self._failed, None
                call.future.set_exception(error)
                return
            try:
                result = call.fn(store, *call.args, **call.kwargs)
            except BaseException as error:
                # in a batch, the call's savepoint is rolled back; the others' writes stand
                call.future.set_exception(error)
            else:
                call.future.set_result(result)
        finally:
            self._done(call.serial)

    def stalled_for(self) -> float:
        """Seconds the oldest unfinished call has waited: 0 when the thread keeps up."""
        with self._lock:
            oldest = min(self._pending.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    async def close(self, timeout: float) -> None:
        """Close the database after the calls queued before (the open batch committed);
        a call stuck on another process's lock is interrupted once `timeout` has passed,
        so shutdown is bounded."""
        with self._lock:
            self._closed = True
            loops = list(self._outboxes)
        for loop in loops:  # the calls made before the close go first
            self._send_outbox(loop)
        if self._stopped:  # the thread failed and closed the database already
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join, timeout)
            return
        closing: Future[None] = Future()
        self._queue.put([_Call(Store.close, (), {}, closing, 0)])
        self._queue.put(None)
        assert self._store is not None
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(closing)), timeout)
        except TimeoutError:
            self._store.db.conn.interrupt()  # the one call that may come from another thread
            with suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(closing), timeout)
        except (StoreError, sqlite3.Error):
            pass
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)


@dataclass(frozen=True)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: Future[Any]
    serial: int
    #: where the caller awaits the result, on its event loop (none for `close`'s call,
    #: which is awaited through `future`)
    waiter: asyncio.Future[Any] | None = None


def _deliver(calls: Sequence[_Call]) -> None:
    """From the store's thread: hand the finished `calls`' results to their callers, one
    wake-up of each caller's event loop for all of them."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
    for call in calls:
        if call.waiter is not None:
            by_loop.setdefault(call.waiter.get_loop(), []).append(call)
    for loop, waiting in by_loop.items():
        with suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, waiting)


def _settle(calls: Sequence[_Call]) -> None:
    """On the caller's event loop: each call's outcome to its waiter."""
    for call in calls:
        waiter, future = call.waiter, call.future
        if waiter is None or waiter.done():  # the caller gave up (cancelled)
            continue
        if future.cancelled():
            waiter.cancel()
        elif (error := future.exception()) is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(future.result())


#: the per-poll calls that share a group commit's transaction (StoreThread): a write
#: opens one, and the reads a poll makes between two writes run inside it
_BATCHED_WRITES = frozenset({Store.save})
_BATCHED_READS = frozenset({Store.known_entries, Store.feed_state})
_PER_POLL = _BATCHED_WRITES | _BATCHED_READS


#: a list of values bound as one JSON parameter (`_json_list`): one `?` per feed would
#: stop at SQLite's limit on parameters (32,766 by default) in a topic of more feeds
_JSON_LIST = "(SELECT value FROM json_each(?))"


def _json_list(values: Iterable[str] | Iterable[int]) -> str:
    """`values` as one JSON array for json_each (`_JSON_LIST`): one statement of fixed
    text for any number of them, so one prepared statement, and one step where a row
    each would take one each (a story's ~28 keys)."""
    return json.dumps(list(values))


def lock_problem(error: BaseException) -> str:
    """ "locked" when `error` (or the SQLite error it wraps) says another process holds
    the write lock, else the error's text."""
    cause = str(error.__cause__ or error)
    return "locked" if "locked" in cause or "busy" in cause else str(error)


def _checked_connection(uri: str) -> sqlite3.Connection:
    """A read-only connection to a database that has our tables (not any SQLite file, nor
    /dev/null)."""
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
    try:
        conn.execute("SELECT url FROM feeds LIMIT 0").fetchall()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _readonly_fallback(path: Path, uri: str) -> sqlite3.Connection:
    """A WAL database SQLite cannot open read-only in place: its -shm file is missing and
    the directory is not writable (a read-only mount, a backup). Without a write-ahead log
    to read, `immutable` is exact; with one, the two files are read from a private copy,
    so what the log holds is not silently left out."""
    wal = path.with_name(path.name + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return _checked_connection(uri + "&immutable=1")
    copy = Path(tempfile.mkdtemp(prefix="aggregator-status-"))
    try:
        shutil.copyfile(path, copy / path.name)
        shutil.copyfile(wal, copy / wal.name)
        conn = sqlite3.connect(str(copy / path.name), timeout=BUSY_TIMEOUT)
        conn.execute("SELECT url FROM feeds LIMIT 0").fetchall()
        # everything is read into this connection's view at once, then the copy can go
        memory = sqlite3.connect(":memory:")
        conn.backup(memory)
        conn.close()
        return memory
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@contextmanager
def _immediate(db: Database) -> Iterator[None]:
    """A write transaction that takes the lock at BEGIN, so it waits (busy timeout)
    rather than failing when another process writes (a deferred one cannot wait).
    Inside an open transaction (StoreThread's group commit) it is a savepoint: an error
    undoes this block's writes and leaves the others to the outer COMMIT."""
    if db.conn.in_transaction:
        with _savepoint(db):
            yield
        return
    _begin_immediate(db)
    try:
        yield
    except sqlite3.Error as e:
        db.rollback()
        raise StoreError(f"cannot write the database: {e}") from e
    except BaseException:
        db.rollback()
        raise
    else:
        _commit_or_roll_back(db)


def _begin_immediate(db: Database) -> None:
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        raise StoreError(f"database is busy or read-only: {e}") from e


def _commit_or_roll_back(db: Database) -> None:
    """COMMIT; on failure the transaction is rolled back and StoreError raised."""
    try:
        db.execute("COMMIT")
    except sqlite3.Error as e:
        with suppress(sqlite3.Error):
            db.rollback()
        raise StoreError(f"cannot write the database: {e}") from e


@contextmanager
def _savepoint(db: Database) -> Iterator[None]:
    db.execute("SAVEPOINT nested")
    try:
        yield
    except BaseException as error:
        try:
            db.execute("ROLLBACK TO nested")
            db.execute("RELEASE nested")
        except sqlite3.Error as e:
            raise StoreError(f"cannot write the database: {e}") from e
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"cannot write the database: {error}") from error
        raise
    else:
        db.execute("RELEASE nested")


def _keys_of(item: Item) -> frozenset[int]:
    if item.index_keys is not None:
        return item.index_keys
    return frozenset(dedupe.index_keys(item.title, item.text))


def _story_columns(item: Item, updated: datetime | None = None) -> dict[str, Any]:
    """The items columns an entry's text and metadata set, on insert and on edit; the
    updated time with them when given."""
    columns = {
        "link": item.link,
        "canonical_link": item.canonical_link,
        "title": item.title,
        "content_html": item.content_html,
        "summary_html": item.summary_html,
        "excerpt": item.excerpt,
        "text": item.text,
        "author": item.author,
        "categories": json.dumps(list(item.categories)),
        "content_hash": item.content_hash,
        "image_url": item.image_url,
    }
    if updated is not None:
        columns["updated"] = to_iso(updated)
    return columns


def _iso_or_none(moment: datetime | None) -> str | None:
    return to_iso(moment) if moment else None


def _state_from_row(row: Mapping[str, Any]) -> FeedState:
    return FeedState(
        url=row["url"],
        fetch_url=row["fetch_url"],
        etag=row["etag"],
        last_modified=row["last_modified"],
        body_hash=row["body_hash"],
        last_fetched=from_iso(row["last_fetched"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        next_due=from_iso(row["next_due"]),
        retry_after=from_iso(row["retry_after"]),
        gone=bool(row["gone"]),
        gone_fingerprint=row["gone_fingerprint"],
        failures=row["failures"],
        moved_to=row["moved_to"],
        title=row["title"],
        site_url=row["site_url"],
        hint_seconds=row["hint_seconds"],
        # .get for the columns added since 006: `status` reads a database it does not
        # migrate (an older daemon's, or one on a read-only file system)
        entries_per_day=row.get("entries_per_day"),
        icon_url=row.get("icon_url"),
        websub_hub=row.get("websub_hub"),
        websub_topic=row.get("websub_topic"),
    )
