"""Splitting a feed body at its entries, parsing only the entries a feed changed, and
ingest's identify and dedupe-keys steps."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator import dedupe, parse
from aggregator.ingest import Processed, process_body
from aggregator.model import FeedSource, Fetched, ParsedEntry, ParsedFeed, Settings
from aggregator.parse import parse_feed, split_entries
from aggregator.pipeline import Poller
from aggregator.store import Store
from aggregator.urls import canonical_url
from tests.feedserver import FeedServer

FEEDS = Path(__file__).parent / "data" / "feeds"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
URL = "https://blog.example/feed/"


def rss(*items: str, title: str = "Peninsula Notes", built: str = "01") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">\n'
        f"<channel><title>{title}</title><link>https://blog.example/</link>\n"
        f"<lastBuildDate>Mon, {built} Nov 2026 09:00:00 +0000</lastBuildDate>\n"
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


def atom(*entries: str, author: str = "Min-ji Park", base: str = "https://blog.example/") -> bytes:
    return (
        f'<feed xmlns="http://www.w3.org/2005/Atom" xml:base="{base}">'
        "<title>Border Log</title><id>urn:border-log</id>"
        f"<updated>2026-11-2{len(entries)}T00:00:00Z</updated>"
        f"<author><name>{author}</name></author>\n" + "\n".join(entries) + "\n</feed>"
    ).encode()


def entry(number: int) -> str:
    return (
        f"<entry><id>urn:border-log:{number}</id><title>Entry {number}</title>"
        f'<link href="{number}/"/><updated>2026-11-0{number}T08:00:00Z</updated>'
        f'<content type="html">&lt;p&gt;Report {number} from the border.&lt;/p&gt;</content>'
        "</entry>"
    )


def commented_atom(author: str) -> bytes:
    """An Atom feed whose header holds "<updated>" in a comment before its author, and its
    own updated element after it."""
    body = atom(entry(1), entry(2), author=author)
    updated = re.search(rb"<updated>[^<]*</updated>", body)
    assert updated is not None
    body = body.replace(updated.group(), b"<!-- <updated> -->", 1)
    return body.replace(b"</author>", b"</author>" + updated.group(), 1)


@pytest.fixture
def parsed_entry_counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many entries each call to the parser read: what partial parsing saves."""
    counts: list[int] = []
    whole = parse.parse_feed

    def counting(body: bytes, headers: Mapping[str, str], url: str) -> ParsedFeed:
        feed = whole(body, headers, url)
        counts.append(len(feed.entries))
        return feed

    monkeypatch.setattr(parse, "parse_feed", counting)
    yield counts


def process(
    body: bytes,
    known: Mapping[str, str | None] | None = None,
    known_chunks: Mapping[str, str] | None = None,
    url: str = URL,
    partial: bool = True,
) -> Processed:
    fetched = Fetched(url=url, status=200, body=body, headers={})
    return process_body(
        fetched, URL, dict(known or {}), NOW, LONG_AGO, known_chunks, partial=partial
    )


def known_of(processed: Processed) -> dict[str, str | None]:
    return {item.entry_key: raw for item, raw in processed.items}


def titles(processed: Processed) -> list[str]:
    return [item.title for item, _ in processed.items]


@pytest.mark.parametrize(
    ("body", "count"),
    [
        ((FEEDS / "wordpress.rss").read_bytes(), 3),
        ((FEEDS / "rss1.rdf").read_bytes(), 2),  # items beside the channel, not in it
        ((FEEDS / "windows-1252.rss").read_bytes(), 1),
        (atom(entry(1), entry(2), entry(3)), 3),
    ],
)
def test_split_reassembles_the_body(body: bytes, count: int) -> None:
    split = split_entries(body)
    assert split is not None
    assert len(split.entries) == count
    assert parse_feed(split.with_entries(split.entries), {}, URL) == parse_feed(body, {}, URL)


@pytest.mark.parametrize(
    "body",
    [
        # an article quoting RSS in a CDATA section
        rss(item(1, "<item> opens and </item> closes an item"), item(2)),
        # comment and CDATA markers inside each other, or loose in text, count for nothing
        rss(item(1, "arrows --> and <!-- openers in CDATA"), item(2)),
        rss("<!-- <item> in a comment -->" + item(1), item(2)).replace(
            b"<title>Peninsula", b"<title>arrows --&gt; Peninsula"
        ),
        rss("<?pi <item> in a processing instruction ?>" + item(1), item(2)),
    ],
)
def test_split_steps_over_comments_cdata_and_processing_instructions(body: bytes) -> None:
    split = split_entries(body)
    assert split is not None
    assert len(split.entries) == 2
    assert split.with_entries(split.entries).count(b"<item>") == body.count(b"<item>")
    assert parse_feed(split.with_entries(split.entries), {}, URL) == parse_feed(body, {}, URL)


@pytest.mark.parametrize(
    "body",
    [
        # entries with a namespace prefix are not looked for
        b'<a:feed xmlns:a="http://www.w3.org/2005/Atom"><a:entry><a:id>1</a:id></a:entry></a:feed>',
        rss(),  # no entries
        rss(item(1) + "<!-- between -->" + item(2)),  # not only space between entries
        rss(item(1), "<item><title>never closed</title>"),
        rss(item(1), "<item/>"),
        rss(item(1), item(2)).replace(b"<rss", b'<!DOCTYPE rss [<!ENTITY x "<item>">]>\n<rss'),
        rss(item(1), "<!-- never closed " + item(2)),
        rss(item(1) + "\x0c" + item(2)),  # a form feed is not XML space
        # an xml:base inside entries (feedparser may carry it over to the next entry)
        atom(entry(1).replace("<entry>", '<entry xml:base="https://a.example/x/">'), entry(2)),
        b'{"version": "https://jsonfeed.org/version/1.1", "items": [{"id": "<item></item>"}]}',
    ],
)
def test_split_refuses_bodies_it_cannot_cut_safely(body: bytes) -> None:
    assert split_entries(body) is None


def test_a_changed_body_parses_only_its_new_and_edited_entries(
    parsed_entry_counts: list[int],
) -> None:
    first = process(rss(item(1), item(2), item(3)))
    assert titles(first) == ["Story 1", "Story 2", "Story 3"]
    assert len(first.entry_chunks) == 3

    # as WordPress does on a new post: the feed's build date changes too
    edited = rss(
        item(4),
        item(1),
        item(2, "Paragraph 2, corrected: the talks resumed."),
        item(3),
        built="02",
    )
    again = process(edited, known_of(first), dict(first.entry_chunks))
    assert parsed_entry_counts == [3, 2]  # story 4 and the edited story 2, not 1 or 3
    assert titles(again) == ["Story 4", "Story 2"]
    assert "corrected" in again.items[1][0].text
    assert again.feed.title == "Peninsula Notes"  # the feed's own fields come from the header
    # the same items and chunks as parsing the whole body
    whole = process(edited, known_of(first))
    assert again.items == whole.items
    assert again.entry_chunks == whole.entry_chunks


def test_entries_not_stored_are_parsed_again(parsed_entry_counts: list[int]) -> None:
    # story 1 was not stored (dropped as too old, or pruned since): when retention is
    # raised, the next changed body must store it, as a whole parse would
    first = process(rss(item(1), item(2)))
    known = {key: raw for key, raw in known_of(first).items() if not key.endswith("p=1")}
    again = process(rss(item(1), item(2), item(3)), known, dict(first.entry_chunks))
    assert titles(again) == ["Story 1", "Story 3"]
    assert parsed_entry_counts == [2, 2]


def test_a_body_in_a_guessed_encoding_is_parsed_whole(parsed_entry_counts: list[int]) -> None:
    # declared UTF-8, but a new entry brings a windows-1252 byte: feedparser then reads
    # the whole body as windows-1252, the earlier entries' "é" included
    first = process(rss(item(1, "Café talks"), item(2)))
    latin = rss(item(1, "Café talks"), item(2), item(3)).replace(b"Story 3", b"Story \x933\x94")
    again = process(latin, known_of(first), dict(first.entry_chunks))
    assert parsed_entry_counts == [2, 1, 3]
    assert again.items == process(latin, known_of(first)).items
    assert again.entry_chunks == ()


def test_a_reduced_body_that_parses_wrongly_falls_back_to_the_whole_body(
    parsed_entry_counts: list[int],
) -> None:
    first = process(rss(item(1), item(2)))
    # a bare "&" outside CDATA: not well-formed XML
    broken = rss(item(1), item(2), item(3).replace("<title>", "<author>Kim & Lee</author><title>"))
    again = process(broken, known_of(first), dict(first.entry_chunks))
    # the reduced body (header + item 3) parsed with a warning, so the whole body was too
    assert parsed_entry_counts == [2, 1, 3]
    assert again.items == process(broken, known_of(first)).items
    assert again.feed.warning is not None
    # and the next body is parsed whole too, so the warning stays while the fault does
    assert again.entry_chunks == ()
    later = process(broken + b"\n", known_of(first), dict(again.entry_chunks))
    assert parsed_entry_counts[-1] == 3
    assert later.feed.warning is not None


@pytest.mark.parametrize(
    ("before", "after", "url"),
    [
        # the feed author, which entries without their own inherit
        (atom(entry(1), entry(2)), atom(entry(1), entry(2), author="Jae-won Lee"), URL),
        # the base the entries' relative links resolve against
        (atom(entry(1), entry(2)), atom(entry(1), entry(2), base="https://mirror.example/"), URL),
        # the URL the body came from (after a redirect)
        (atom(entry(1), entry(2), base=""), atom(entry(1), entry(2), base=""), URL + "atom/"),
        # a channel title: nothing entries inherit, but the header is compared whole
        (rss(item(1), item(2)), rss(item(1), item(2), title="Renamed"), URL),
        # a date element in a comment does not hide the author after it
        (commented_atom("Min-ji Park"), commented_atom("Jae-won Lee"), URL),
    ],
)
def test_a_change_outside_the_entries_parses_them_all_again(
    before: bytes, after: bytes, url: str, parsed_entry_counts: list[int]
) -> None:
    first = process(before)
    again = process(after, known_of(first), dict(first.entry_chunks), url=url)
    assert parsed_entry_counts == [2, 2]
    assert again.items == process(after, known_of(first), url=url).items


def test_a_new_feed_author_reaches_the_stored_entries() -> None:
    first = process(atom(entry(1), entry(2)))
    assert {item.author for item, _ in first.items} == {"Min-ji Park"}
    again = process(
        atom(entry(1), entry(2), author="Jae-won Lee"), known_of(first), dict(first.entry_chunks)
    )
    assert [item.author for item, _ in again.items] == ["Jae-won Lee", "Jae-won Lee"]


def test_an_entry_listed_twice_keeps_its_first_copy(parsed_entry_counts: list[int]) -> None:
    first = process(rss(item(1), item(2)))
    # a second, different copy of story 2 is appended: the first copy still counts
    twice = rss(item(1), item(2), item(2, "A stale copy of story 2."))
    again = process(twice, known_of(first), dict(first.entry_chunks))
    assert again.items == ()
    assert parsed_entry_counts == [2, 1, 3]  # the reduced parse met story 2's key: all again
    assert again.entry_chunks == ()  # such a body is always parsed whole


def test_without_partial_parsing_every_body_is_parsed_whole_and_no_chunks_kept(
    parsed_entry_counts: list[int],
) -> None:
    first = process(rss(item(1), item(2), item(3)), partial=False)
    assert titles(first) == ["Story 1", "Story 2", "Story 3"]
    assert first.entry_chunks == ()
    edited = rss(item(4), item(1), item(2, "Paragraph 2, corrected."), item(3), built="02")
    chunks = dict(process(rss(item(1), item(2), item(3))).entry_chunks)
    again = process(edited, known_of(first), chunks, partial=False)
    assert parsed_entry_counts == [3, 3, 4]  # the last body whole, chunks or not
    assert again.entry_chunks == ()
    assert again.items == process(edited, known_of(first), chunks).items


@pytest.mark.parametrize("partial", [True, False])
def test_each_entry_key_is_computed_once(
    monkeypatch: pytest.MonkeyPatch, partial: bool, parsed_entry_counts: list[int]
) -> None:
    first = process(rss(item(1), item(2), item(3)), partial=partial)
    keyed: list[str] = []
    whole = dedupe.entry_key

    def counting(entry: ParsedEntry) -> str:
        keyed.append(entry.title)
        return whole(entry)

    monkeypatch.setattr(dedupe, "entry_key", counting)
    again = process(
        rss(item(4), item(1), item(2), item(3)),
        known_of(first),
        dict(first.entry_chunks),
        partial=partial,
    )
    assert titles(again) == ["Story 4"]
    # partial parsing parses (and identifies) story 4 alone; a whole parse, all four once
    assert keyed == (["Story 4"] if partial else ["Story 4", "Story 1", "Story 2", "Story 3"])
    assert parsed_entry_counts[-1] == len(keyed)


def test_items_are_keyed_by_id_then_link_then_content() -> None:
    without_id = item(2).replace("<guid>https://blog.example/?p=2</guid>", "")
    anonymous = item(3).replace("<guid>https://blog.example/?p=3</guid>", "")
    anonymous = anonymous.replace("<link>https://blog.example/3/</link>", "")
    keys = [entry.entry_key for entry, _ in process(rss(item(1), without_id, anonymous)).items]
    assert keys[0] == "id:https://blog.example/?p=1"
    assert keys[1] == "link:" + canonical_url("https://blog.example/2/")
    assert keys[2].startswith("hash:")
    retitled = process(rss(anonymous.replace("Story 3", "Story 3, updated")))
    assert retitled.items[0][0].entry_key.startswith("hash:")
    assert retitled.items[0][0].entry_key != keys[2]


def test_items_get_their_dedupe_keys_from_their_cleaned_title_and_text() -> None:
    [(original, _)] = process(rss(item(1))).items
    assert original.content_hash == dedupe.content_hash(original.title, original.text)
    assert original.index_keys == frozenset(dedupe.index_keys(original.title, original.text))
    [(same, _)] = process(rss(item(1))).items
    assert same.content_hash == original.content_hash
    [(edited, _)] = process(rss(item(1, "Corrected: the talks resumed."))).items
    assert edited.content_hash != original.content_hash
    [(retitled, _)] = process(rss(item(1).replace("Story 1", "Story 1, again"))).items
    assert retitled.content_hash != original.content_hash


def test_poll_saves_entry_chunks_and_the_next_changed_body_parses_only_new_entries(
    tmp_path: Path, parsed_entry_counts: list[int]
) -> None:
    async def poll(source: FeedSource) -> None:
        settings = Settings(
            database=tmp_path / "agg.db",
            retention=timedelta(days=36500),
            per_host_spacing=timedelta(0),
        )
        async with await Poller.open(settings, parsers=ThreadPoolExecutor(1)) as poller:
            result = await poller.poll(source, force=True)
        assert result.error is None

    with FeedServer() as server:
        source = FeedSource(url=server.url("/feed/"))
        server.set("/feed/", rss(item(1), item(2), item(3)))
        asyncio.run(poll(source))
        server.set(
            "/feed/", rss(item(4), item(1), item(2, "Corrected: the talks resumed."), item(3))
        )
        asyncio.run(poll(source))

    assert parsed_entry_counts == [3, 2]
    store = Store.open(tmp_path / "agg.db")
    stored = store.newest_items([source.url], 10, lambda item, text: True, {})
    assert sorted(item.title for item in stored) == ["Story 1", "Story 2", "Story 3", "Story 4"]
    [corrected] = [item for item in stored if item.title == "Story 2"]
    assert "Corrected" in corrected.content_html
    store.close()
