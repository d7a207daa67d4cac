"""Partial parsing: a changed body parsed only as far as its entries changed. Pure.

feedparser reads the whole of what it is given, and a changed feed usually differs from
its last body by an entry or two. So the body is cut at its entries
(`parse.split_entries`) and each entry's bytes hashed (`entry_chunk_hashes`), keyed by
everything else the entry is read with. The previous body's (chunk hash, key hash) pairs
are kept (`Processed.entry_chunks`, in the store's `feeds.entry_chunks`): an entry whose
chunk hash is among them and whose key is stored already reads as it did then, so only
the others are given to feedparser, with the feed's header and footer.

The whole body is parsed instead when that reduced body parses with a warning or a guessed
encoding (`_exact`), into another number of entries, or into an entry whose key a cut-away
one has (`_pair_unique`: a feed listing an entry twice keeps the first copy, and a reduced
body does not keep the order). No chunks are kept from a body whose whole parse did any
of these, so the next body is parsed whole too.

`parse_changed_entries` is the one entry point; `ingest.process_body(partial=False)`
parses every body whole instead and keeps no chunks.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator import dedupe
from aggregator.errors import ParseError
from aggregator.model import Fetched, ParsedFeed

if TYPE_CHECKING:
    from aggregator.parse import SplitBody

#: (chunk hash, key hash) of each entry of a body, in order: what the next body is
#: compared with
EntryChunks = tuple[tuple[str, str], ...]


def parse_changed_entries(
    fetched: Fetched,
    known_keys: Collection[str],
    known_chunks: Mapping[str, str] | None,
) -> tuple[ParsedFeed, list[str], EntryChunks]:
    """The feed, the entry key of each of its entries, and the body's entry chunks.

    `known_keys` are the entry keys already stored; `known_chunks` maps the previous
    body's chunk hashes to their key hashes (its `EntryChunks`). When some entries are
    both, the feed holds only the other entries (parsed from a reduced body); otherwise,
    or when the reduced body does not parse exactly (see the module docstring), it holds
    every entry of the whole body. The entry chunks are () when the next body must be
    parsed whole. Raises ParseError.
    """
    # imported here, not at the top: see `ingest.process_body`
    from aggregator import parse

    split = parse.split_entries(fetched.body)
    chunks = entry_chunk_hashes(split, fetched) if split else ()
    reusable: dict[str, str] = {}
    if known_chunks:
        stored = {_key_hash(key) for key in known_keys}
        reusable = {chunk: key for chunk, key in known_chunks.items() if key in stored}
    if split and reusable:
        reduced = _parse_reduced(split, chunks, reusable, fetched)
        if reduced is not None:
            return reduced
    feed = parse.parse_feed(fetched.body, fetched.headers, fetched.url)
    keys = [dedupe.entry_key(entry) for entry in feed.entries]
    entry_chunks: EntryChunks = ()
    if _exact(feed) and len(keys) == len(chunks):
        entry_chunks = _pair_unique(zip(chunks, map(_key_hash, keys), strict=True)) or ()
    return feed, keys, entry_chunks


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
    """The short hash of an entry key that `EntryChunks` hold."""
    return hashlib.blake2b(entry_key.encode(), digest_size=8).hexdigest()


def _parse_reduced(
    split: SplitBody,
    chunks: tuple[str, ...],
    reusable: Mapping[str, str],
    fetched: Fetched,
) -> tuple[ParsedFeed, list[str], EntryChunks] | None:
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


def _pair_unique(pairs: Iterable[tuple[str, str]]) -> EntryChunks | None:
    """The (chunk, key) pairs, or None when two different chunks have the same entry key:
    which copy counts then depends on the order, which a reduced body does not keep."""
    result = tuple(pairs)
    distinct = set(result)
    return result if len({key for _, key in distinct}) == len(distinct) else None
