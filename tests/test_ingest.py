"""Splitting a feed body at its entries, and parsing only the entries a feed changed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.ingest import Processed, entry_chunk_hash, process_body
from aggregator.model import Fetched
from aggregator.parse import parse_feed, split_entries

FEEDS = Path(__file__).parent / "data" / "feeds"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
URL = "https://blog.example/feed/"


def rss(*items: str, title: str = "Peninsula Notes") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">\n'
        f"<channel><title>{title}</title><link>https://blog.example/</link>\n"
        + "\n".join(items)
        + "\n</channel></rss>\n"
    ).encode()


def item(number: int, text: str = "") -> str:
    body = text or f"Paragraph {number} of a report on the border, with details."
    return (
        f"<item><title>Story {number}</title><link>https://blog.example/{number}/</link>"
        f"<guid>https://blog.example/?p={number}</guid>"
        f"<pubDate>Mon, 0{number} Nov 2026 08:00:00 +0000</pubDate>"
        f"<content:encoded><![CDATA[<p>{body}</p>]]></content:encoded></item>"
    )


def process(
    body: bytes,
    known: Mapping[str, str | None] | None = None,
    known_chunks: frozenset[str] = frozenset(),
) -> Processed:
    fetched = Fetched(url=URL, status=200, body=body, headers={})
    return process_body(fetched, URL, dict(known or {}), NOW, LONG_AGO, known_chunks)


def titles(processed: Processed) -> list[str]:
    return [item.title for item, _ in processed.items]


@pytest.mark.parametrize(("name", "count"), [("wordpress.rss", 3), ("atom.xml", 3)])
def test_split_reassembles_the_body(name: str, count: int) -> None:
    body = (FEEDS / name).read_bytes()
    split = split_entries(body)
    assert split is not None
    assert len(split.entries) == count
    assert parse_feed(split.with_entries(split.entries), {}, URL) == parse_feed(body, {}, URL)


@pytest.mark.parametrize(
    "body",
    [
        # a boundary inside a CDATA section: an article quoting RSS
        rss(item(1, "</item> closes an item"), item(2)),
        # entries with a namespace prefix are not looked for
        b'<a:feed xmlns:a="http://www.w3.org/2005/Atom"><a:entry><a:id>1</a:id></a:entry></a:feed>',
        rss(),  # no entries
        rss(item(1) + "<!-- between -->" + item(2)),  # not only space between entries
        rss(item(1), "<item><title>never closed</title>"),
        b'{"version": "https://jsonfeed.org/version/1.1", "items": []}',
    ],
)
def test_split_refuses_bodies_it_cannot_cut_safely(body: bytes) -> None:
    assert split_entries(body) is None


def test_a_changed_body_parses_only_its_new_and_edited_entries() -> None:
    first = process(rss(item(1), item(2), item(3)))
    assert titles(first) == ["Story 1", "Story 2", "Story 3"]
    assert len(first.entry_chunks) == 3
    known = {item.entry_key: raw for item, raw in first.items}

    edited = rss(item(4), item(1), item(2, "Paragraph 2, corrected: the talks resumed."), item(3))
    again = process(edited, known, frozenset(first.entry_chunks))
    assert titles(again) == ["Story 4", "Story 2"]
    assert "corrected" in again.items[1][0].text
    assert again.feed.title == "Peninsula Notes"  # the feed's own fields come from the header
    split = split_entries(edited)
    assert split is not None
    assert again.entry_chunks == tuple(map(entry_chunk_hash, split.entries))
    # the same items as parsing the whole body
    whole = process(edited, known)
    assert again.items == whole.items


def test_entries_with_known_bytes_are_not_parsed_at_all() -> None:
    first = process(rss(item(1), item(2)))
    # nothing stored for them (say, dropped as too old): only the chunk hashes say "seen"
    again = process(rss(item(1), item(2), item(3)), {}, frozenset(first.entry_chunks))
    assert titles(again) == ["Story 3"]


def test_a_reduced_body_that_parses_wrongly_falls_back_to_the_whole_body() -> None:
    first = process(rss(item(1), item(2)))
    # a bare "&" outside CDATA: not well-formed XML
    broken = rss(item(1), item(2), item(3).replace("<title>", "<author>Kim & Lee</author><title>"))
    again = process(broken, {}, frozenset(first.entry_chunks))
    # the reduced body (header + item 3) parses with a warning, so the whole body was
    # parsed: every entry is back, since `known` says none is stored
    assert titles(again) == ["Story 1", "Story 2", "Story 3"]


def test_a_header_change_alone_parses_no_entry() -> None:
    first = process(rss(item(1), item(2)))
    known = {item.entry_key: raw for item, raw in first.items}
    again = process(rss(item(1), item(2), title="Renamed"), known, frozenset(first.entry_chunks))
    assert again.items == ()
    assert again.feed.title == "Renamed"
