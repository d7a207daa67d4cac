"""Turning a fetched body into cleaned items: the work the parse workers do.

Kept apart from the pipeline so that a worker process imports only the parser, the
cleaner and dedupe keys, not the HTTP client, the store or the renderer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime

from aggregator import dedupe
from aggregator.errors import ParseError
from aggregator.model import Fetched, Item, ParsedFeed


def raw_entry_hash(entry: object) -> str:
    """A hash of everything the feed said about an entry: equal means nothing to clean."""
    return hashlib.blake2b(repr(entry).encode(), digest_size=16).hexdigest()


def entry_chunk_hash(chunk: bytes) -> str:
    """A hash of one entry's bytes as the feed sent them (`parse.split_entries`)."""
    return hashlib.blake2b(chunk, digest_size=8).hexdigest()


@dataclass(frozen=True)
class Processed:
    """What parsing and cleaning one body produced."""

    #: the feed's own fields; `entries` left empty, since `items` holds what the store needs
    feed: ParsedFeed
    #: new or changed entries, cleaned, each with its raw hash
    items: tuple[tuple[Item, str], ...]
    #: `entry_chunk_hash` of every entry in the body, in order; empty when it was not split
    entry_chunks: tuple[str, ...] = ()


def process_body(
    fetched: Fetched,
    feed_url: str,
    known: dict[str, str | None],
    now: datetime,
    oldest: datetime,
    known_chunks: frozenset[str] = frozenset(),
) -> Processed:
    """Parse a body and clean the entries that are new or changed. Pure; raises ParseError.

    `known` maps entry keys already stored to their raw hashes; entries published before
    `oldest` (the retention limit) are dropped. `known_chunks` are the `entry_chunks` of the
    feed's previous body: entries whose bytes are among them were handled then, so only the
    others are parsed (feedparser reads the whole of what it is given, and a changed feed
    usually differs by an entry or two). When that reduced body does not parse into exactly
    the entries it was given, the whole body is parsed instead.
    """
    # imported here, not at the top: the main process imports this module for the
    # types, and a round of 304s never needs feedparser, nh3 or lxml.html
    from aggregator import clean, parse

    split = parse.split_entries(fetched.body)
    chunks = tuple(map(entry_chunk_hash, split.entries)) if split else ()
    feed = None
    if split is not None and known_chunks:
        fresh = [
            c for c, digest in zip(split.entries, chunks, strict=True) if digest not in known_chunks
        ]
        feed = _parse_reduced(split.with_entries(fresh), len(fresh), fetched)
    if feed is None:
        feed = parse.parse_feed(fetched.body, fetched.headers, fetched.url)
    items: list[tuple[Item, str]] = []
    seen: set[str] = set()
    for entry in feed.entries:
        key = dedupe.entry_key(entry)
        if key in seen:
            continue  # a feed that lists an entry twice: the first copy wins
        seen.add(key)
        raw = raw_entry_hash(entry)
        if known.get(key) == raw:
            continue
        item = clean.clean_entry(entry, feed_url, now)
        if item.published < oldest:
            continue
        items.append((item, raw))
    # The entries' raw HTML would otherwise be pickled back to the main process, the
    # round's busiest, only to be thrown away.
    return Processed(feed=replace(feed, entries=()), items=tuple(items), entry_chunks=chunks)


def _parse_reduced(body: bytes, expected: int, fetched: Fetched) -> ParsedFeed | None:
    """The feed parsed from a body holding only some of its entries, or None when the
    result cannot be trusted: a parse error or warning, or another number of entries."""
    from aggregator import parse

    try:
        feed = parse.parse_feed(body, fetched.headers, fetched.url)
    except ParseError:
        return None
    if feed.warning is not None or len(feed.entries) != expected:
        return None
    return feed
