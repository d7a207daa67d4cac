"""One fetched body → cleaned items: the work the parse workers do. Pure.

    parse     parse.parse_feed; or, by default, partial.parse_changed_entries, which
              parses only the entries changed since the last body  ─► ParsedFeed
    identify  dedupe.entry_key, once per entry; an entry listed twice keeps its first
              copy, and one stored as it reads now (same raw hash) goes no further
    clean     clean.clean_entry(entry, …, entry_key=…)  ─► Item without dedupe keys
              (entries published before the retention limit are dropped here)
    keys      with_dedupe_keys: dedupe.content_hash and dedupe.index_keys  ─► Item

Kept apart from the pipeline so that a worker process imports only the parser, the
cleaner and dedupe keys, not the HTTP client, the store or the renderer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from aggregator import dedupe
from aggregator.model import PRUNED, Fetched, Item, ParsedEntry, ParsedFeed
from aggregator.partial import EntryChunks, parse_changed_entries


def raw_entry_hash(entry: object) -> str:
    """A hash of everything the feed said about an entry: equal means nothing to clean."""
    return hashlib.blake2b(repr(entry).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Processed:
    """What parsing and cleaning one body produced."""

    #: the feed's own fields; `entries` left empty, since `items` holds what the store needs
    feed: ParsedFeed
    #: new or changed entries, cleaned, each with its raw hash
    items: tuple[tuple[Item, str], ...]
    #: (`partial.entry_chunk_hashes`, hash of the entry key) of every entry in the body, in
    #: order; empty when the next body must be parsed whole (see `aggregator.partial`) or
    #: when this one was parsed with `partial=False`
    entry_chunks: EntryChunks = ()


def process_body(
    fetched: Fetched,
    feed_url: str,
    known: dict[str, str | None],
    now: datetime,
    oldest: datetime,
    known_chunks: Mapping[str, str] | None = None,
    partial: bool = True,
) -> Processed:
    """Parse a body and clean the entries that are new or changed. Pure; raises ParseError.

    `known` maps entry keys already stored to their raw hashes; entries published before
    `oldest` (the retention limit) are dropped. With `partial`, `known_chunks` is the
    previous body's `entry_chunks`, and only the entries that changed since are parsed
    when that gives the same result (`partial.parse_changed_entries`); without, the whole
    body is parsed and no chunks are kept.
    """
    # imported here, not at the top: the main process imports this module for the
    # types, and a round of 304s never needs feedparser, nh3 or lxml.html
    from aggregator import clean, parse

    # parse, and identify: each entry's key, computed once (partial parsing computes
    # them itself, as its bookkeeping needs them, and returns them)
    if partial:
        feed, keys, entry_chunks = parse_changed_entries(fetched, known, known_chunks)
    else:
        feed = parse.parse_feed(fetched.body, fetched.headers, fetched.url)
        keys, entry_chunks = [dedupe.entry_key(entry) for entry in feed.entries], ()
    items: list[tuple[Item, str]] = []
    for entry, key, raw in _new_or_changed(feed.entries, keys, known):
        # clean, then the dedupe keys (not computed for an entry past retention)
        item = clean.clean_entry(entry, feed_url, now, entry_key=key)
        if item.published >= oldest:
            items.append((with_dedupe_keys(item), raw))
    # The entries' raw HTML would otherwise be pickled back to the main process, the
    # round's busiest, only to be thrown away.
    return Processed(feed=replace(feed, entries=()), items=tuple(items), entry_chunks=entry_chunks)


def _new_or_changed(
    entries: Sequence[ParsedEntry], keys: Sequence[str], known: Mapping[str, str | None]
) -> Iterator[tuple[ParsedEntry, str, str]]:
    """(entry, its key, its raw hash) of the entries to clean: the first copy of an entry
    the feed lists twice, and only when it is not stored already as it reads now."""
    seen: set[str] = set()
    for entry, key in zip(entries, keys, strict=True):
        if key in seen:
            continue  # a feed that lists an entry twice: the first copy wins
        seen.add(key)
        stored = known.get(key)
        if stored == PRUNED:
            continue  # pruned: stays pruned while the feed still lists it
        raw = raw_entry_hash(entry)
        if stored != raw:
            yield entry, key, raw


def with_dedupe_keys(item: Item) -> Item:
    """The keys step: a cleaned item with the keys dedupe and the store match it by, its
    `content_hash` (an edit changes it) and its `index_keys` (near-duplicate candidates),
    both from its cleaned title and text."""
    return replace(
        item,
        content_hash=dedupe.content_hash(item.title, item.text),
        index_keys=frozenset(dedupe.index_keys(item.title, item.text)),
    )
