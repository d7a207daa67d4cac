"""Turning a fetched body into cleaned items: the work the parse workers do.

Kept apart from the pipeline so that a worker process imports only the parser, the
cleaner and dedupe keys, not the HTTP client, the store or the renderer.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator import dedupe
from aggregator.errors import ParseError
from aggregator.model import Fetched, Item, ParsedFeed

if TYPE_CHECKING:
    from aggregator.parse import SplitBody


def raw_entry_hash(entry: object) -> str:
    """A hash of everything the feed said about an entry: equal means nothing to clean."""
    return hashlib.blake2b(repr(entry).encode(), digest_size=16).hexdigest()


@functools.cache
def _parser_identity() -> bytes:
    """Changes with the code that turns entry bytes into stored keys and fields (our parse,
    dedupe and urls modules, feedparser): entries parsed by another version may read
    differently, so their chunk hashes must not match."""
    import feedparser

    from aggregator import __version__, dedupe, parse, urls

    identity = [__version__.encode(), feedparser.__version__.encode()]
    for module in (parse, dedupe, urls):
        try:
            identity.append(Path(module.__file__ or "").read_bytes())
        except OSError:  # installed without sources: the release version has to do
            pass
    return hashlib.blake2b(b"\0".join(identity), digest_size=32).digest()


def entry_chunk_hashes(split: SplitBody, fetched: Fetched) -> tuple[str, ...]:
    """A hash of each entry's bytes, keyed by everything else it is read with: the body's
    context (`SplitBody.context`), the URL and headers that give its base and charset,
    and the parser. Equal hashes mean the entry parses as it did last time."""
    headers = {name.lower(): value for name, value in fetched.headers.items()}
    context = b"\0".join(
        (
            _parser_identity(),
            fetched.url.encode(),
            headers.get("content-type", "").encode(),
            headers.get("content-location", "").encode(),
            split.context(),
        )
    )
    key = hashlib.blake2b(context, digest_size=32).digest()
    return tuple(
        hashlib.blake2b(chunk, digest_size=8, key=key).hexdigest() for chunk in split.entries
    )


def _key_hash(entry_key: str) -> str:
    return hashlib.blake2b(entry_key.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Processed:
    """What parsing and cleaning one body produced."""

    #: the feed's own fields; `entries` left empty, since `items` holds what the store needs
    feed: ParsedFeed
    #: new or changed entries, cleaned, each with its raw hash
    items: tuple[tuple[Item, str], ...]
    #: (`entry_chunk_hashes`, hash of the entry key) of every entry in the body, in order;
    #: empty when the next body must be parsed whole (see `process_body`)
    entry_chunks: tuple[tuple[str, str], ...] = ()


def process_body(
    fetched: Fetched,
    feed_url: str,
    known: dict[str, str | None],
    now: datetime,
    oldest: datetime,
    known_chunks: Mapping[str, str] | None = None,
) -> Processed:
    """Parse a body and clean the entries that are new or changed. Pure; raises ParseError.

    `known` maps entry keys already stored to their raw hashes; entries published before
    `oldest` (the retention limit) are dropped. `known_chunks` is the previous body's
    `entry_chunks`: an entry whose chunk hash is among them and whose key is in `known`
    is stored already as it reads now, so only the others are parsed (feedparser reads the
    whole of what it is given, and a changed feed usually differs by an entry or two).
    The whole body is parsed instead when that reduced body parses with a warning or a
    guessed encoding, into another number of entries, or into an entry whose key a cut-away
    one has (a feed listing an entry twice keeps the first copy). No chunks are kept from
    a body whose whole parse did any of these, so the next body is parsed whole too.
    """
    # imported here, not at the top: the main process imports this module for the
    # types, and a round of 304s never needs feedparser, nh3 or lxml.html
    from aggregator import clean, parse

    split = parse.split_entries(fetched.body)
    chunks = entry_chunk_hashes(split, fetched) if split else ()
    reusable: dict[str, str] = {}
    if known_chunks:
        stored = {_key_hash(key) for key in known}
        reusable = {chunk: key for chunk, key in known_chunks.items() if key in stored}
    reduced = _parse_changed(split, chunks, reusable, fetched) if split and reusable else None
    if reduced is not None:
        feed, keys, entry_chunks = reduced
    else:
        feed = parse.parse_feed(fetched.body, fetched.headers, fetched.url)
        keys = [dedupe.entry_key(entry) for entry in feed.entries]
        entry_chunks = ()
        if _exact(feed) and len(keys) == len(chunks):
            entry_chunks = _pair_unique(zip(chunks, map(_key_hash, keys), strict=True)) or ()
    items: list[tuple[Item, str]] = []
    seen: set[str] = set()
    for entry, key in zip(feed.entries, keys, strict=True):
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
    return Processed(feed=replace(feed, entries=()), items=tuple(items), entry_chunks=entry_chunks)


def _parse_changed(
    split: SplitBody,
    chunks: tuple[str, ...],
    reusable: Mapping[str, str],
    fetched: Fetched,
) -> tuple[ParsedFeed, list[str], tuple[tuple[str, str], ...]] | None:
    """The feed parsed from a body holding only the entries not in `reusable`, their keys
    and the body's entry chunks; None when the whole body must be parsed instead."""
    from aggregator import parse

    fresh = [index for index, chunk in enumerate(chunks) if chunk not in reusable]
    body = split.with_entries(split.entries[index] for index in fresh)
    try:
        feed = parse.parse_feed(body, fetched.headers, fetched.url)
    except ParseError:
        return None
    if not _exact(feed) or len(feed.entries) != len(fresh):
        return None
    keys = [dedupe.entry_key(entry) for entry in feed.entries]
    fresh_keys = dict(zip(fresh, map(_key_hash, keys), strict=True))
    entry_chunks = _pair_unique(
        (chunk, fresh_keys.get(index) or reusable[chunk]) for index, chunk in enumerate(chunks)
    )
    return None if entry_chunks is None else (feed, keys, entry_chunks)


def _exact(feed: ParsedFeed) -> bool:
    """Whether each entry of the feed reads the same whatever other entries are with it:
    not so after a warning (the loose parser's recovery) or a guessed encoding."""
    return feed.warning is None and not feed.encoding_guessed


def _pair_unique(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...] | None:
    """The (chunk, key) pairs, or None when two different chunks have the same entry key:
    which copy counts then depends on the order, which a reduced body does not keep."""
    result = tuple(pairs)
    distinct = set(result)
    return result if len({key for _, key in distinct}) == len(distinct) else None
