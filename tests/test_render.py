"""Tests for aggregator.render: the four published formats, the index and the OPML."""

from __future__ import annotations

import calendar
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser
import lxml.html
import pytest
import rnc2rng
from lxml import etree

from aggregator import PROJECT_URL, __version__
from aggregator.model import PublishedItem, SourceRef, Topic
from aggregator.render import (
    PageLinks,
    render_atom,
    render_html,
    render_index,
    render_json,
    render_opml,
    render_rss,
)

BASE_URL = "https://news.example/"
ATOM_NS = "http://www.w3.org/2005/Atom"
SCHEMATRON_NS = "http://www.ascc.net/xml/schematron"
ATOM_RNC = Path(__file__).parent / "data" / "atom.rnc"

OUTLET_A = SourceRef(
    title="Outlet A", url="https://a.example/", feed_url="https://a.example/feed.xml"
)
OUTLET_B = SourceRef(
    title="Outlet B", url="https://b.example/story-7", feed_url="https://b.example/rss"
)
OUTLET_C = SourceRef(title="Outlet C", url="https://c.example/", feed_url="https://c.example/atom")

TOPIC = Topic(slug="north-korea", title="North Korea", description="Peace and sanctions")
EMPTY_TOPIC = Topic(slug="empty", title="Nothing yet")

HOSTILE_TITLE = '"><img src=x onerror=alert(1)> <script>alert("t")</script> & more'
HOSTILE_MARKUP = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def make_item(**changes: Any) -> PublishedItem:
    item = PublishedItem(
        id="urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        link="https://a.example/2024/03/talks?id=7&page=2",
        title="Talks resume in Panmunjom",
        content_html="<p>Full <em>story</em> text.</p>",
        summary_html="<p>Talks <b>resume</b>.</p>",
        excerpt="Talks resume after a long pause.",
        author="Jane Doe",
        categories=("Diplomacy", "Korea"),
        published=datetime(2024, 3, 5, 14, 7, 9, tzinfo=UTC),
        updated=datetime(2024, 3, 6, 8, 0, 0, tzinfo=UTC),
        sources=(OUTLET_A,),
    )
    return replace(item, **changes)


ITEM_PLAIN = make_item()
ITEM_NO_AUTHOR = make_item(
    id="tag:news.example,2024:2",
    link="https://b.example/story-7",
    title="Sanctions widened",
    author=None,
    categories=(),
    summary_html="",
    published=datetime(2024, 3, 4, 9, 0, tzinfo=UTC),
    updated=datetime(2024, 3, 4, 9, 30, tzinfo=UTC),
    sources=(OUTLET_B,),
)
ITEM_VIA = make_item(
    id="tag:news.example,2024:3",
    link="https://a.example/wire",
    title="Wire story carried by three outlets",
    sources=(OUTLET_A, OUTLET_B, OUTLET_C),
    published=datetime(2024, 3, 1, tzinfo=UTC),
    updated=datetime(2024, 3, 2, tzinfo=UTC),
)
ITEM_NO_LINK = make_item(
    id="tag:news.example,2024:4",
    link="",
    content_html="",
    title="Entry without a link or content",
)
ALL_ITEMS = (ITEM_PLAIN, ITEM_NO_AUTHOR, ITEM_VIA, ITEM_NO_LINK)

HOSTILE_SOURCE = SourceRef(
    title='Evil <script>alert("s")</script> News',
    url="javascript:alert(3)",
    feed_url="https://evil.example/feed",
)
HOSTILE_ITEM = make_item(
    id="tag:evil.example,2024:<script>",
    title=HOSTILE_TITLE,
    author='<script>alert("a")</script>Mallory',
    categories=("<script>cat</script>", '"><img src=x>'),
    content_html=f"<p>before</p>{HOSTILE_MARKUP}<p>after</p>",
    summary_html=f"<p>summary</p>{HOSTILE_MARKUP}",
    excerpt=f"excerpt {HOSTILE_MARKUP}",
    sources=(HOSTILE_SOURCE, replace(OUTLET_B, title="<b>bold</b> outlet")),
)

RENDERERS = {
    "atom": render_atom,
    "rss": render_rss,
    "json": render_json,
    "html": render_html,
}


def child(element: etree._Element, path: str, namespaces: dict[str, str] | None = None) -> Any:
    found = element.find(path, namespaces)
    assert found is not None, path
    return found


def select(element: etree._Element, xpath: str, **namespaces: str) -> list[etree._Element]:
    result = element.xpath(xpath, namespaces=namespaces)
    assert isinstance(result, list)
    return [node for node in result if isinstance(node, etree._Element)]


def timestamp(parsed: Any) -> datetime:
    return datetime.fromtimestamp(calendar.timegm(parsed), UTC)


# --- the Atom schema -------------------------------------------------------------------


class AtomSchema:
    """RFC 4287's RELAX NG schema plus the Schematron rules embedded in it."""

    def __init__(self, rng: etree._Element) -> None:
        self.relaxng = etree.RelaxNG(rng)
        self.rules = [
            (
                rule.get("context", ""),
                assertion.get("test", ""),
                (assertion.text or "").strip(),
            )
            for rule in rng.iter(f"{{{SCHEMATRON_NS}}}rule")
            for assertion in rule.iter(f"{{{SCHEMATRON_NS}}}assert")
        ]

    def errors(self, document: bytes) -> list[str]:
        tree = etree.fromstring(document)
        problems: list[str] = []
        if not self.relaxng.validate(tree):
            problems.extend(str(error) for error in self.relaxng.error_log)
        for context, test, message in self.rules:
            for node in select(tree, f"//{context}", atom=ATOM_NS):
                if not node.xpath(f"boolean({test})", namespaces={"atom": ATOM_NS}):
                    problems.append(f"{context}: {message}")
        return problems


def convert_atom_rnc() -> etree._Element:
    rng_text = rnc2rng.dumps(rnc2rng.load(str(ATOM_RNC)))
    # The one fix-up: rnc2rng declares the schema's `namespace local = ""` as
    # xmlns:local="", which XML 1.0 forbids (a prefix cannot be unbound), so lxml
    # refuses the document. Nothing uses the prefix: `local:*` is already written as
    # <nsName ns=""/>. Dropping the declaration changes no pattern.
    rng_text = re.sub(r'\s+xmlns:local=""', "", rng_text)
    return etree.fromstring(rng_text.encode("utf-8"))


@pytest.fixture(scope="module")
def atom_schema() -> AtomSchema:
    return AtomSchema(convert_atom_rnc())


def test_atom_schema_has_the_rfc_rules(atom_schema: AtomSchema) -> None:
    # Guards the checks below against a conversion that silently lost parts.
    contexts = sorted(context for context, _, _ in atom_schema.rules)
    assert contexts == ["atom:entry", "atom:entry", "atom:feed"]


def test_atom_schema_rejects_broken_feeds(atom_schema: AtomSchema) -> None:
    good = render_atom(TOPIC, [ITEM_PLAIN], BASE_URL)
    assert atom_schema.errors(good) == []
    tree = etree.fromstring(good)
    entry = child(tree, f"{{{ATOM_NS}}}entry")
    entry.remove(child(entry, f"{{{ATOM_NS}}}id"))
    assert atom_schema.errors(etree.tostring(tree))
    tree = etree.fromstring(good)
    entry = child(tree, f"{{{ATOM_NS}}}entry")
    entry.remove(child(entry, f"{{{ATOM_NS}}}author"))
    assert any("atom:author" in problem for problem in atom_schema.errors(etree.tostring(tree)))


@pytest.mark.parametrize(
    "topic, items",
    [
        pytest.param(EMPTY_TOPIC, (), id="empty-topic"),
        pytest.param(TOPIC, (ITEM_PLAIN,), id="with-author-and-categories"),
        pytest.param(TOPIC, (ITEM_NO_AUTHOR,), id="without-author"),
        pytest.param(TOPIC, (ITEM_VIA,), id="via-links"),
        pytest.param(TOPIC, (ITEM_NO_LINK,), id="without-link"),
        pytest.param(TOPIC, (make_item(sources=(), author=None),), id="without-sources"),
        pytest.param(
            TOPIC,
            (make_item(link="", content_html="", summary_html="", excerpt="", author=None),),
            id="without-link-or-text",
        ),
        pytest.param(TOPIC, ALL_ITEMS, id="all"),
        pytest.param(TOPIC, (HOSTILE_ITEM,), id="hostile"),
    ],
)
def test_atom_is_valid_rfc4287(
    atom_schema: AtomSchema, topic: Topic, items: tuple[PublishedItem, ...]
) -> None:
    document = render_atom(topic, items, BASE_URL)
    assert atom_schema.errors(document) == []
    # the schema accepts an empty name; a reader shows nothing
    names = etree.fromstring(document).findall(f".//{{{ATOM_NS}}}author/{{{ATOM_NS}}}name")
    assert len(names) == len(items)
    assert all(name.text and name.text.strip() for name in names)


HUB = "https://hub.example/"


def test_every_feed_declares_the_websub_hub(atom_schema: AtomSchema) -> None:
    """WebSub §4: Atom and RSS link rel="hub" beside rel="self", JSON Feed lists `hubs`;
    without a hub, none of them mentions one."""
    links = PageLinks(hubs=(HUB,))
    atom = render_atom(TOPIC, ALL_ITEMS, BASE_URL, links)
    assert atom_schema.errors(atom) == []
    feed = etree.fromstring(atom)
    assert [(link.get("rel"), link.get("href")) for link in feed.findall(f"{{{ATOM_NS}}}link")][
        :2
    ] == [("self", f"{BASE_URL}north-korea.atom"), ("hub", HUB)]
    channel = etree.fromstring(render_rss(TOPIC, ALL_ITEMS, BASE_URL, links)).find("channel")
    assert channel is not None
    rss_links = {link.get("rel"): link.get("href") for link in channel.iter(f"{{{ATOM_NS}}}link")}
    assert rss_links == {"self": f"{BASE_URL}north-korea.rss", "hub": HUB}
    json_feed = json.loads(render_json(TOPIC, ALL_ITEMS, BASE_URL, links))
    assert json_feed["hubs"] == [{"type": "WebSub", "url": HUB}]
    assert {link.get("rel"): link.get("href") for link in feedparser.parse(atom).feed.links}[
        "hub"
    ] == HUB
    for render in (render_atom, render_rss, render_json):
        plain = render(TOPIC, ALL_ITEMS, BASE_URL)
        assert HUB.encode() not in plain and b'"hub' not in plain and b"hubs" not in plain


def test_atom_entry_without_link_carries_its_summary_as_content() -> None:
    parsed = feedparser.parse(render_atom(TOPIC, [ITEM_NO_LINK], BASE_URL))
    entry = parsed.entries[0]
    assert [link for link in entry.get("links", []) if link.rel == "alternate"] == []
    assert entry.content[0].value == ITEM_NO_LINK.summary_html


# --- Atom read back ----------------------------------------------------------------------


def test_atom_reads_back_with_feedparser() -> None:
    parsed = feedparser.parse(render_atom(TOPIC, ALL_ITEMS, BASE_URL))
    assert not parsed.bozo
    assert parsed.version == "atom10"
    feed = parsed.feed
    assert feed.title == "North Korea"
    assert feed.subtitle == "Peace and sanctions"
    assert feed.id == "https://news.example/north-korea.atom"
    links = {link.rel: link.href for link in feed.links}
    assert links == {
        "self": "https://news.example/north-korea.atom",
        "alternate": "https://news.example/north-korea.html",
    }
    # the newest change among the items
    assert timestamp(feed.updated_parsed) == datetime(2024, 3, 6, 8, 0, tzinfo=UTC)
    assert feed.generator == "aggregator"
    assert feed.generator_detail.version == __version__
    assert feed.generator_detail.href == PROJECT_URL

    assert [entry.id for entry in parsed.entries] == [item.id for item in ALL_ITEMS]
    assert [entry.title for entry in parsed.entries] == [item.title for item in ALL_ITEMS]
    first = parsed.entries[0]
    assert first.link == "https://a.example/2024/03/talks?id=7&page=2"
    assert timestamp(first.published_parsed) == ITEM_PLAIN.published
    assert timestamp(first.updated_parsed) == ITEM_PLAIN.updated
    assert first.published == "2024-03-05T14:07:09Z"
    assert first.author == "Jane Doe"
    assert [tag.term for tag in first.tags] == ["Diplomacy", "Korea"]
    assert first.summary == "<p>Talks <b>resume</b>.</p>"
    assert first.content[0].value == "<p>Full <em>story</em> text.</p>"
    assert first.source.title == "Outlet A"
    assert first.source.id == "https://a.example/feed.xml"
    assert {link.rel: link.href for link in first.source.links} == {
        "self": "https://a.example/feed.xml",
        "alternate": "https://a.example/",
    }


def test_atom_entry_without_author_names_its_outlet() -> None:
    parsed = feedparser.parse(render_atom(TOPIC, [ITEM_NO_AUTHOR], BASE_URL))
    assert parsed.entries[0].author == "Outlet B"


def test_atom_summary_falls_back_to_the_escaped_excerpt() -> None:
    item = make_item(summary_html="", excerpt="Fish & chips <3")
    parsed = feedparser.parse(render_atom(TOPIC, [item], BASE_URL))
    assert parsed.entries[0].summary == "Fish &amp; chips &lt;3"


def test_atom_names_further_outlets_as_via_links() -> None:
    parsed = feedparser.parse(render_atom(TOPIC, [ITEM_VIA], BASE_URL))
    entry = parsed.entries[0]
    via = [(link.href, link.title) for link in entry.links if link.rel == "via"]
    assert via == [("https://b.example/story-7", "Outlet B"), ("https://c.example/", "Outlet C")]
    assert entry.source.title == "Outlet A"


def test_atom_dates_are_utc_with_z() -> None:
    seoul = timezone(timedelta(hours=9))
    naive = datetime(2024, 3, 5, 12, 0, 0)
    item = make_item(published=datetime(2024, 3, 5, 21, 0, 0, 500, tzinfo=seoul), updated=naive)
    tree = etree.fromstring(render_atom(TOPIC, [item], BASE_URL))
    namespaces = {"a": ATOM_NS}
    assert tree.findtext("a:entry/a:published", namespaces=namespaces) == "2024-03-05T12:00:00Z"
    assert tree.findtext("a:entry/a:updated", namespaces=namespaces) == "2024-03-05T12:00:00Z"


def test_empty_feed_has_a_fixed_date() -> None:
    parsed = feedparser.parse(render_atom(EMPTY_TOPIC, [], BASE_URL))
    assert parsed.feed.updated == "1970-01-01T00:00:00Z"
    assert parsed.entries == []
    rss = feedparser.parse(render_rss(EMPTY_TOPIC, [], BASE_URL))
    assert rss.feed.updated == "Thu, 01 Jan 1970 00:00:00 GMT"


# --- RSS ---------------------------------------------------------------------------------


def test_rss_reads_back_with_feedparser() -> None:
    parsed = feedparser.parse(render_rss(TOPIC, ALL_ITEMS, BASE_URL))
    assert not parsed.bozo
    assert parsed.version == "rss20"
    feed = parsed.feed
    assert feed.title == "North Korea"
    assert feed.link == "https://news.example/north-korea.html"
    assert feed.description == "Peace and sanctions"
    assert {"rel": "self", "href": "https://news.example/north-korea.rss"}.items() <= {
        key: value for link in feed.links if link.rel == "self" for key, value in link.items()
    }.items()
    assert timestamp(feed.updated_parsed) == datetime(2024, 3, 6, 8, 0, tzinfo=UTC)
    assert "aggregator" in feed.generator
    assert feed.docs.startswith("https://")

    entries = parsed.entries
    assert [entry.id for entry in entries] == [item.id for item in ALL_ITEMS]
    assert all(entry.guidislink is False for entry in entries)
    first = entries[0]
    assert first.title == "Talks resume in Panmunjom"
    assert first.link == "https://a.example/2024/03/talks?id=7&page=2"
    assert first.published == "Tue, 05 Mar 2024 14:07:09 GMT"
    assert timestamp(first.published_parsed) == ITEM_PLAIN.published
    assert first.author == "Jane Doe"
    assert [tag.term for tag in first.tags] == ["Diplomacy", "Korea"]
    assert first.source == {"href": "https://a.example/feed.xml", "title": "Outlet A"}
    assert first.summary == "<p>Talks <b>resume</b>.</p>"
    assert first.content[0].value == "<p>Full <em>story</em> text.</p>"


def test_rss_uses_dc_creator_and_only_when_the_author_is_known() -> None:
    document = render_rss(TOPIC, [ITEM_PLAIN, ITEM_NO_AUTHOR], BASE_URL)
    tree = etree.fromstring(document)
    creators = select(tree, "//item/dc:creator", dc="http://purl.org/dc/elements/1.1/")
    assert [creator.text for creator in creators] == ["Jane Doe"]
    # RSS <author> is an e-mail address: never filled with a name
    assert select(tree, "//item/author") == []


def test_rss_source_is_the_first_outlet_only() -> None:
    parsed = feedparser.parse(render_rss(TOPIC, [ITEM_VIA], BASE_URL))
    assert parsed.entries[0].source == {"href": "https://a.example/feed.xml", "title": "Outlet A"}
    assert len(select(etree.fromstring(render_rss(TOPIC, [ITEM_VIA], BASE_URL)), "//source")) == 1


# --- JSON Feed ---------------------------------------------------------------------------


def test_json_feed_has_the_required_fields() -> None:
    document = render_json(TOPIC, ALL_ITEMS, BASE_URL)
    assert document.endswith(b"}\n")
    feed = json.loads(document)
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["title"] == "North Korea"
    assert feed["home_page_url"] == "https://news.example/north-korea.html"
    assert feed["feed_url"] == "https://news.example/north-korea.json"
    assert feed["description"] == "Peace and sanctions"
    assert [item["id"] for item in feed["items"]] == [item.id for item in ALL_ITEMS]
    # JSON Feed: every item has content_html or content_text
    assert all(isinstance(item.get("content_html"), str) for item in feed["items"])
    first = feed["items"][0]
    assert first["url"] == ITEM_PLAIN.link
    assert first["title"] == ITEM_PLAIN.title
    assert first["content_html"] == ITEM_PLAIN.content_html
    assert first["summary"] == ITEM_PLAIN.excerpt
    assert first["date_published"] == "2024-03-05T14:07:09Z"
    assert first["date_modified"] == "2024-03-06T08:00:00Z"
    assert first["authors"] == [{"name": "Jane Doe"}]
    assert first["tags"] == ["Diplomacy", "Korea"]
    assert "authors" not in feed["items"][1]
    assert "url" not in feed["items"][3]


def test_json_feed_lists_every_outlet() -> None:
    feed = json.loads(render_json(TOPIC, [ITEM_VIA], BASE_URL))
    assert feed["items"][0]["_aggregator"]["sources"] == [
        {"title": source.title, "url": source.url, "feed_url": source.feed_url}
        for source in (OUTLET_A, OUTLET_B, OUTLET_C)
    ]


def test_json_feed_keeps_non_ascii_readable() -> None:
    item = make_item(title="Pyongyang 평양 — talks")
    document = render_json(TOPIC, [item], BASE_URL)
    assert "평양".encode() in document
    assert json.loads(document)["items"][0]["title"] == "Pyongyang 평양 — talks"


# --- HTML page ---------------------------------------------------------------------------


def parse_html(document: bytes) -> Any:
    return lxml.html.document_fromstring(document)


def test_html_page_shows_each_item() -> None:
    document = render_html(TOPIC, [ITEM_PLAIN, ITEM_VIA], BASE_URL)
    assert document.startswith(b"<!DOCTYPE html>")
    page = parse_html(document)
    assert page.findtext(".//h1") == "North Korea"
    assert "Peace and sanctions" in page.text_content()
    articles = page.findall(".//article")
    assert len(articles) == 2
    heading = articles[0].find(".//h3/a")
    assert heading.text == "Talks resume in Panmunjom"
    assert heading.get("href") == ITEM_PLAIN.link
    assert "Outlet A" in articles[0].text_content()
    time = articles[0].find(".//time")
    assert time.get("datetime") == "2024-03-05T14:07:09Z"
    assert time.get("title") == "5 March 2024, 14:07 UTC"
    # told as of the latest change among the items (ITEM_PLAIN's update, 6 March 08:00)
    assert time.text == "17 h ago"
    assert [h.text for h in page.iterfind(".//main//h2")] == ["Yesterday", "Friday 1 March"]
    assert ITEM_PLAIN.excerpt in articles[0].text_content()
    also = articles[1].find_class("also")[0]
    assert also.text_content() == "also in: Outlet B, Outlet C"
    assert [a.get("href") for a in also.iter("a")] == [OUTLET_B.url, OUTLET_C.url]


def test_html_page_shows_the_excerpt_not_the_content() -> None:
    item = make_item(content_html="<p>FULL-CONTENT-MARKER</p>", summary_html="<p>SUMMARY</p>")
    document = render_html(TOPIC, [item], BASE_URL)
    assert b"FULL-CONTENT-MARKER" not in document
    assert b"SUMMARY" not in document
    assert item.excerpt.encode() in document


def test_html_page_links_its_feeds_for_autodiscovery() -> None:
    page = parse_html(render_html(TOPIC, [], BASE_URL))
    alternates = {
        link.get("type"): link.get("href")
        for link in page.head.iter("link")
        if link.get("rel") == "alternate"
    }
    assert alternates == {
        "application/atom+xml": "north-korea.atom",
        "application/rss+xml": "north-korea.rss",
        "application/feed+json": "north-korea.json",
    }
    body_links = {a.get("href") for a in page.body.iter("a")}
    assert {"north-korea.atom", "north-korea.rss", "north-korea.json"} <= body_links
    assert "No items yet." in page.text_content()


def test_html_page_never_links_to_javascript() -> None:
    item = make_item(link="javascript:alert(1)", sources=(HOSTILE_SOURCE,))
    page = parse_html(render_html(TOPIC, [item], BASE_URL))
    hrefs = [a.get("href") for a in page.iter("a") if a.get("href")]
    assert [href for href in hrefs if "javascript" in href.lower()] == []
    # the title stays, unlinked
    assert page.find(".//article/h3/a").get("href") is None
    assert page.find(".//article/h3/a").text == item.title


# --- index and OPML ----------------------------------------------------------------------


def test_index_links_every_topic_and_the_opml() -> None:
    topics = [TOPIC, replace(EMPTY_TOPIC, title='<script>alert("i")</script>')]
    page = parse_html(render_index(topics, BASE_URL))
    hrefs = [a.get("href") for a in page.body.iter("a")]
    for slug in ("north-korea", "empty"):
        for extension in ("html", "atom", "rss", "json"):
            assert f"{slug}.{extension}" in hrefs
    assert "feeds.opml" in hrefs
    assert page.find(".//script") is None
    assert '<script>alert("i")</script>' in [a.text for a in page.body.iter("a")]


def test_opml_lists_the_sources() -> None:
    sources = [OUTLET_A, replace(OUTLET_B, title='B & "<friends>"'), replace(OUTLET_C, url="")]
    tree = etree.fromstring(render_opml("My feeds", sources))
    assert tree.tag == "opml"
    assert tree.get("version") == "2.0"
    assert tree.findtext("head/title") == "My feeds"
    outlines = tree.findall("body/outline")
    assert [dict(outline.attrib) for outline in outlines] == [
        {
            "type": "rss",
            "text": "Outlet A",
            "title": "Outlet A",
            "xmlUrl": "https://a.example/feed.xml",
            "htmlUrl": "https://a.example/",
        },
        {
            "type": "rss",
            "text": 'B & "<friends>"',
            "title": 'B & "<friends>"',
            "xmlUrl": "https://b.example/rss",
            "htmlUrl": "https://b.example/story-7",
        },
        {
            "type": "rss",
            "text": "Outlet C",
            "title": "Outlet C",
            "xmlUrl": "https://c.example/atom",
        },
    ]


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_rendering_is_deterministic(name: str) -> None:
    render = RENDERERS[name]
    first = render(TOPIC, ALL_ITEMS, BASE_URL)
    # equal values built anew, not the same objects
    rebuilt = tuple(replace(item) for item in ALL_ITEMS)
    assert render(replace(TOPIC), list(rebuilt), BASE_URL) == first
    assert render(TOPIC, ALL_ITEMS, BASE_URL) == first


def test_index_and_opml_are_deterministic() -> None:
    assert render_index([TOPIC, EMPTY_TOPIC], BASE_URL) == render_index(
        [TOPIC, EMPTY_TOPIC], BASE_URL
    )
    assert render_opml("x", [OUTLET_A, OUTLET_B]) == render_opml("x", [OUTLET_A, OUTLET_B])


# --- hostile text ------------------------------------------------------------------------


def local_names(tree: etree._Element) -> set[str]:
    return {etree.QName(element).localname for element in tree.iter(etree.Element)}


def test_hostile_markup_stays_text_in_atom() -> None:
    tree = etree.fromstring(render_atom(TOPIC, [HOSTILE_ITEM], BASE_URL))
    assert not {"script", "img", "p", "b"} & local_names(tree)
    namespaces = {"a": ATOM_NS}
    entry = child(tree, "a:entry", namespaces)
    assert entry.findtext("a:title", namespaces=namespaces) == HOSTILE_TITLE
    assert entry.findtext("a:author/a:name", namespaces=namespaces) == HOSTILE_ITEM.author
    assert [c.get("term") for c in entry.findall("a:category", namespaces)] == list(
        HOSTILE_ITEM.categories
    )
    assert entry.findtext("a:source/a:title", namespaces=namespaces) == HOSTILE_SOURCE.title
    assert child(entry, "a:link[@rel='via']", namespaces).get("title") == "<b>bold</b> outlet"
    assert entry.findtext("a:content", namespaces=namespaces) == HOSTILE_ITEM.content_html


def test_hostile_markup_stays_text_in_rss() -> None:
    tree = etree.fromstring(render_rss(TOPIC, [HOSTILE_ITEM], BASE_URL))
    assert not {"script", "img", "p", "b"} & local_names(tree)
    item = child(tree, "channel/item")
    assert item.findtext("title") == HOSTILE_TITLE
    assert item.findtext("{http://purl.org/dc/elements/1.1/}creator") == HOSTILE_ITEM.author
    assert [c.text for c in item.findall("category")] == list(HOSTILE_ITEM.categories)
    assert item.findtext("source") == HOSTILE_SOURCE.title
    assert (
        item.findtext("{http://purl.org/rss/1.0/modules/content/}encoded")
        == HOSTILE_ITEM.content_html
    )


def test_hostile_markup_stays_text_in_json() -> None:
    feed = json.loads(render_json(TOPIC, [HOSTILE_ITEM], BASE_URL))
    item = feed["items"][0]
    assert item["title"] == HOSTILE_TITLE
    assert item["authors"] == [{"name": HOSTILE_ITEM.author}]
    assert item["tags"] == list(HOSTILE_ITEM.categories)
    assert item["_aggregator"]["sources"][0]["title"] == HOSTILE_SOURCE.title


def test_hostile_markup_stays_text_in_html() -> None:
    page = parse_html(render_html(TOPIC, [HOSTILE_ITEM], BASE_URL))
    assert page.find(".//script") is None
    assert page.find(".//img") is None
    assert not any(name.startswith("on") for element in page.iter() for name in element.attrib)
    article = page.find(".//article")
    assert article.find("h3/a").text == HOSTILE_TITLE
    text = article.text_content()
    assert HOSTILE_ITEM.excerpt in text
    assert HOSTILE_SOURCE.title in text
    assert HOSTILE_ITEM.author in text
    assert "also in: <b>bold</b> outlet" in text


CONTROL_CHARACTERS = "\x00\x01\x08\x0b\x0c\x0e\x1f\ud800\udfff\ufffe\uffff"


def with_controls(text: str) -> str:
    return f"{text[:3]}{CONTROL_CHARACTERS}{text[3:]}"


CONTROL_ITEM = make_item(
    id=with_controls("urn:x:ctrl"),
    link=with_controls("https://a.example/ctrl"),
    title=with_controls("Control title"),
    author=with_controls("Control author"),
    categories=(with_controls("Control category"),),
    content_html=with_controls("<p>Control content</p>"),
    summary_html=with_controls("<p>Control summary</p>"),
    excerpt=with_controls("Control excerpt"),
    sources=(
        SourceRef(
            title=with_controls("Control outlet"),
            url="https://a.example/",
            feed_url="https://a.example/feed.xml",
        ),
        SourceRef(
            title=with_controls("Second outlet"),
            url=with_controls("https://b.example/"),
            feed_url="https://b.example/feed",
        ),
    ),
)
CONTROL_TOPIC = Topic(
    slug="ctrl", title=with_controls("Control topic"), description=with_controls("About")
)


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_control_characters_are_dropped(name: str) -> None:
    document = RENDERERS[name](CONTROL_TOPIC, [CONTROL_ITEM], BASE_URL)
    text = document.decode("utf-8")
    assert not set(CONTROL_CHARACTERS) & set(text)
    # JSON could still smuggle them in as \u escapes
    assert not re.search(r"\\u00(0[0-8bcef]|1[0-9a-f])|\\ud[89a-f]|\\uff[fe]", text, re.I)
    for visible in ("Control title", "Control outlet", "Control topic"):
        assert visible in text


def test_control_characters_leave_valid_atom(atom_schema: AtomSchema) -> None:
    document = render_atom(CONTROL_TOPIC, [CONTROL_ITEM], BASE_URL)
    assert atom_schema.errors(document) == []
    entry = feedparser.parse(document).entries[0]
    assert entry.title == "Control title"
    assert entry.author == "Control author"


def test_control_characters_in_index_and_opml() -> None:
    index = render_index([CONTROL_TOPIC], BASE_URL).decode("utf-8")
    opml = render_opml(with_controls("My feeds"), CONTROL_ITEM.sources).decode("utf-8")
    for text in (index, opml):
        assert not set(CONTROL_CHARACTERS) & set(text)
    assert "Control topic" in index
    assert etree.fromstring(opml.encode()).findtext("head/title") == "My feeds"


# --- every published URL is http(s) ------------------------------------------------------

#: links a feed may give that a browser would run rather than open
ACTIVE_LINKS = [
    "javascript:alert(1)",
    "vbscript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    " \tjavascript:alert(1)",
    "java\nscript:alert(1)",
]
ACTIVE_SCHEMES = re.compile(r"(java|vb)script:|data:", re.IGNORECASE)


def strings(tree: etree._Element, xpath: str, **namespaces: str) -> list[str]:
    """The text or attribute values an XPath selects."""
    result = tree.xpath(xpath, namespaces=namespaces)
    assert isinstance(result, list)
    return [str(value) for value in result]


def published_urls(name: str, document: bytes) -> list[str]:
    """Every URL a reader of this document may follow (HTML links resolved on BASE_URL)."""
    if name == "json":
        feed = json.loads(document)
        urls = [feed["home_page_url"], feed["feed_url"]]
        for item in feed["items"]:
            urls += [item["url"]] if "url" in item else []
            for source in item["_aggregator"]["sources"]:
                urls += [source["url"], source["feed_url"]]
        return urls
    if name == "html":
        page = parse_html(document)
        return [urljoin(BASE_URL, href) for href in strings(page, "//@href | //@src")]
    tree = etree.fromstring(document)
    if name == "opml":
        return strings(tree, "//outline/@xmlUrl | //outline/@htmlUrl")
    if name == "rss":
        return strings(tree, "//link/text() | //source/@url | //*[local-name()='link']/@href")
    # Atom: links, and the ids that are feed URLs (atom:source/atom:id)
    return strings(tree, "//a:link/@href | //a:source/a:id/text()", a=ATOM_NS)


def render_every_format(items: list[PublishedItem]) -> dict[str, bytes]:
    documents = {name: render(TOPIC, items, BASE_URL) for name, render in RENDERERS.items()}
    documents["opml"] = render_opml("feeds", [source for item in items for source in item.sources])
    return documents


def assert_only_http_urls(documents: dict[str, bytes]) -> None:
    for name, document in documents.items():
        urls = published_urls(name, document)
        assert urls, name
        for url in urls:
            assert urlsplit(url).scheme in ("http", "https") and urlsplit(url).hostname, (name, url)
            assert url == url.strip() and not ACTIVE_SCHEMES.search(url), (name, url)


@pytest.mark.parametrize("link", ACTIVE_LINKS)
def test_active_links_are_published_in_no_format(link: str) -> None:
    outlet = SourceRef(title="Hostile outlet", url=link, feed_url="https://evil.example/feed")
    items = [
        make_item(link=link, sources=(outlet, replace(OUTLET_B, url=link))),
        make_item(id="urn:x:2", link=link, content_html="", sources=(outlet,)),
    ]
    documents = render_every_format(items)
    assert_only_http_urls(documents)
    # the items are still there, with their ids and text
    for name in ("atom", "rss", "json", "html"):
        assert b"Talks resume in Panmunjom" in documents[name]
    parsed = feedparser.parse(documents["atom"])
    assert [entry.id for entry in parsed.entries] == [item.id for item in items]
    # an Atom entry without a usable link carries content (RFC 4287 4.1.1.1)
    assert [entry.content[0].value for entry in parsed.entries] == [
        items[0].content_html,
        items[1].summary_html,
    ]
    assert "url" not in json.loads(documents["json"])["items"][0]
    assert [entry.get("link") for entry in feedparser.parse(documents["rss"]).entries] == [
        None,
        None,
    ]


def test_relative_links_stored_before_are_resolved_on_the_feed() -> None:
    item = make_item(link="/2024/03/talks", sources=(replace(OUTLET_A, url="/"),))
    documents = render_every_format([item])
    assert_only_http_urls(documents)
    assert feedparser.parse(documents["atom"]).entries[0].link == "https://a.example/2024/03/talks"
    assert json.loads(documents["json"])["items"][0]["url"] == "https://a.example/2024/03/talks"


# --- no credentials in published files ---------------------------------------------------

PASSWORD = "pw-0f8e7d6c"
TOKEN = "tok-9a8b7c6d"
CREDENTIALED_FEED = f"http://reader:{PASSWORD}@private.example/feed?api_key={TOKEN}&lang=en"


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(
            SourceRef(title="Private", url="https://private.example/", feed_url=CREDENTIALED_FEED),
            id="titled",
        ),
        # a feed without a title or name is shown by its URL
        pytest.param(
            SourceRef(title=CREDENTIALED_FEED, url=CREDENTIALED_FEED, feed_url=CREDENTIALED_FEED),
            id="named-by-its-url",
        ),
    ],
)
def test_credentials_in_feed_urls_are_published_in_no_format(source: SourceRef) -> None:
    items = [
        make_item(sources=(source,), author=None),
        make_item(id="urn:x:2", sources=(OUTLET_A, source)),
        make_item(id="urn:x:3", link=f"https://private.example/story?token={TOKEN}", sources=()),
    ]
    documents = render_every_format(items)
    assert_only_http_urls(documents)
    for name, document in documents.items():
        assert PASSWORD.encode() not in document, name
        assert TOKEN.encode() not in document, name
    public = "http://private.example/feed?lang=en"
    opml = etree.fromstring(documents["opml"])
    assert strings(opml, "//outline/@xmlUrl")[0] == public
    assert feedparser.parse(documents["atom"]).entries[0].source.id == public
    assert feedparser.parse(documents["rss"]).entries[0].source.href == public
    sources = json.loads(documents["json"])["items"][1]["_aggregator"]["sources"]
    assert sources[1]["feed_url"] == public


# --- valid whatever the item lacks --------------------------------------------------------

#: an item missing each field in turn, then all of them
INCOMPLETE_ITEMS = [
    make_item(id="urn:x:no-title", title=""),
    make_item(id="urn:x:blank-title", title=" \n\t "),
    make_item(id="urn:x:no-link", link=""),
    make_item(id="urn:x:bad-link", link="javascript:alert(1)"),
    make_item(id="urn:x:no-content", content_html=""),
    make_item(id="urn:x:no-summary", summary_html=""),
    make_item(id="urn:x:no-excerpt", excerpt=""),
    make_item(id="urn:x:no-author", author=None),
    make_item(id="urn:x:blank-author", author=" "),
    make_item(id="urn:x:no-categories", categories=()),
    make_item(id="urn:x:blank-categories", categories=("", " ")),
    make_item(id="urn:x:no-sources", sources=(), author=None),
    make_item(id="urn:x:untitled-outlet", sources=(SourceRef("", "", ""),), author=None),
    make_item(
        id="urn:x:nothing",
        title="",
        link="",
        content_html="",
        summary_html="",
        excerpt="",
        author=None,
        categories=(),
        sources=(),
    ),
    make_item(
        id="urn:x:nothing-but-a-bad-link",
        title="",
        link="data:text/html,x",
        content_html="",
        summary_html="",
        excerpt="",
        author=None,
        categories=(),
        sources=(SourceRef("", "javascript:alert(1)", ""),),
    ),
]


def test_every_format_is_valid_whatever_an_item_lacks(atom_schema: AtomSchema) -> None:
    items = INCOMPLETE_ITEMS
    ids = [item.id for item in items]

    atom = render_atom(TOPIC, items, BASE_URL)
    assert atom_schema.errors(atom) == []
    a = {"a": ATOM_NS}
    entries = etree.fromstring(atom).findall("a:entry", a)
    assert [entry.findtext("a:id", namespaces=a) for entry in entries] == ids
    for entry in entries:
        for required in ("a:title", "a:updated", "a:author/a:name"):
            assert (entry.findtext(required, namespaces=a) or "").strip(), required
        if not entry.xpath("a:link[@rel='alternate']", namespaces=a):
            assert entry.find("a:content", a) is not None

    rss = etree.fromstring(render_rss(TOPIC, items, BASE_URL))
    rss_items = rss.findall("channel/item")
    assert [item.findtext("guid") for item in rss_items] == ids
    for item in rss_items:
        # RSS 2.0: "All elements of an item are optional, however at least one of title
        # or description must be present."
        assert (item.findtext("title") or "").strip() or (item.findtext("description") or "")
        assert item.findtext("pubDate")

    feed = json.loads(render_json(TOPIC, items, BASE_URL))
    assert [item["id"] for item in feed["items"]] == ids
    for item in feed["items"]:
        assert isinstance(item.get("content_html", item.get("content_text")), str)

    page = parse_html(render_html(TOPIC, items, BASE_URL))
    headings = [article.find("h3/a") for article in page.iter("article")]
    assert len(headings) == len(items)
    assert all(heading.text and heading.text.strip() for heading in headings)


# --- bidirectional controls ---------------------------------------------------------------

#: embeddings, overrides and isolates: they reorder all the text after them
BIDI_EMBEDDINGS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
#: the implicit marks, which right-to-left text uses legitimately
BIDI_MARKS = "\u200e\u200f\u061c"


def test_bidi_controls_are_stripped_from_single_line_fields_in_every_format() -> None:
    outlet = SourceRef(
        title="Outlet \u202bA\u202c\u200f", url=OUTLET_A.url, feed_url=OUTLET_A.feed_url
    )
    item = make_item(
        title="Invoice \u202egpj.exe",
        author="\u2066Mallory\u2069\u200e",
        categories=("\u202dDiplomacy", "\u061cKorea"),
        excerpt="\u05e9\u05dc\u05d5\u05dd\u200f excerpt \u202ereversed",
        content_html="<p>\u05e9\u05dc\u05d5\u05dd\u200f content</p>",
        sources=(outlet, OUTLET_B),
    )
    documents = render_every_format([item])

    a = {"a": ATOM_NS}
    entry = child(etree.fromstring(documents["atom"]), "a:entry", a)
    rss_item = child(etree.fromstring(documents["rss"]), "channel/item")
    json_item = json.loads(documents["json"])["items"][0]
    page = parse_html(documents["html"])
    article = page.find(".//article")
    opml = etree.fromstring(documents["opml"])
    single_line = {
        "atom": [
            entry.findtext("a:title", namespaces=a),
            entry.findtext("a:author/a:name", namespaces=a),
            entry.findtext("a:source/a:title", namespaces=a),
            *(category.get("term") for category in entry.findall("a:category", a)),
        ],
        "rss": [
            rss_item.findtext("title"),
            rss_item.findtext("{http://purl.org/dc/elements/1.1/}creator"),
            rss_item.findtext("source"),
            *(category.text for category in rss_item.findall("category")),
        ],
        "json": [
            json_item["title"],
            json_item["authors"][0]["name"],
            json_item["_aggregator"]["sources"][0]["title"],
            *json_item["tags"],
        ],
        "html": [article.find("h3/a").text, article.find_class("meta")[0].text_content()],
        "opml": strings(opml, "//outline/@text | //outline/@title"),
    }
    assert single_line["atom"] == ["Invoice gpj.exe", "Mallory", "Outlet A", "Diplomacy", "Korea"]
    for name, values in single_line.items():
        for value in values:
            assert not set(BIDI_EMBEDDINGS + BIDI_MARKS) & set(value), (name, value)
    # bodies keep the marks right-to-left text needs; the page's excerpt loses only the
    # controls that would reorder what follows it
    excerpt = article.find_class("excerpt")[0].text_content()
    assert excerpt == "\u05e9\u05dc\u05d5\u05dd\u200f excerpt reversed"
    assert not set(BIDI_EMBEDDINGS) & set(page.text_content())
    assert json_item["content_html"] == item.content_html
    assert json_item["summary"] == item.excerpt


# --- the reading page ----------------------------------------------------------------------


def test_relative_times_and_day_headings_are_told_as_of_now() -> None:
    from aggregator.render import format_day, format_relative

    now = datetime(2026, 12, 6, 12, 3, tzinfo=UTC)
    assert format_relative(now, now) == "just now"
    assert format_relative(now + timedelta(minutes=5), now) == "just now"
    assert format_relative(now - timedelta(minutes=59, seconds=59), now) == "59 min ago"
    assert format_relative(now - timedelta(hours=23, minutes=59), now) == "23 h ago"
    # beyond a day, the date: a relative time would read as fresher than the page is
    assert format_relative(now - timedelta(hours=24), now) == "5 December, 12:03"
    assert format_relative(datetime(2025, 12, 31, 23, 0, tzinfo=UTC), now) == (
        "31 December 2025, 23:00"
    )
    assert format_day(now - timedelta(hours=12), now) == "Today"
    assert format_day(now - timedelta(hours=12, minutes=4), now) == "Yesterday"
    assert format_day(now - timedelta(days=2), now) == "Friday 4 December"
    assert format_day(datetime(2025, 3, 1, tzinfo=UTC), now) == "Saturday 1 March 2025"


def test_the_page_tells_its_times_as_of_its_latest_change_and_says_so() -> None:
    changed = datetime(2024, 3, 5, 16, 8, tzinfo=UTC)
    item = make_item(changed_at=changed)
    page = parse_html(render_html(TOPIC, [item], BASE_URL))
    assert page.find(".//article//time").text == "2 h ago"
    updated = page.find_class("updated")[0]
    assert updated.find("time").get("datetime") == "2024-03-05T16:08:00Z"
    assert "5 March 2024, 16:08 UTC" in updated.text_content()
    # an explicit `now` wins; the same items give the same bytes
    later = render_html(TOPIC, [item], BASE_URL, now=changed + timedelta(hours=3))
    assert parse_html(later).find(".//article//time").text == "5 h ago"
    assert render_html(TOPIC, [item], BASE_URL) == render_html(TOPIC, [item], BASE_URL)


def test_the_page_has_a_search_form_for_its_topic_and_no_script() -> None:
    page = parse_html(render_html(TOPIC, [ITEM_PLAIN], BASE_URL))
    [form] = page.iter("form")
    assert (form.get("action"), form.get("method")) == ("search", "get")
    fields = {field.get("name"): field for field in form.iter("input")}
    assert fields["q"].get("type") == "search"
    assert (fields["topic"].get("type"), fields["topic"].get("value")) == ("hidden", "north-korea")
    assert page.find(".//script") is None
    assert [a.get("href") for a in page.find(".//header/nav").iter("a")] == [
        "north-korea.atom",
        "north-korea.rss",
        "north-korea.json",
        "index.html",
    ]


def test_older_and_newer_pages_are_linked_only_when_set() -> None:
    def page_links(links: PageLinks) -> list[tuple[str, str]]:
        page = parse_html(render_html(TOPIC, [ITEM_PLAIN], BASE_URL, links))
        return [(a.get("href"), a.text) for nav in page.find_class("pages") for a in nav.iter("a")]

    assert page_links(PageLinks()) == []
    assert page_links(PageLinks(older="north-korea-2")) == [
        ("north-korea-2.html", "Older stories →")
    ]
    assert page_links(PageLinks(older="north-korea-3", newer="north-korea")) == [
        ("north-korea.html", "← Newest stories"),
        ("north-korea-3.html", "Older stories →"),
    ]
    # never a scheme or another path
    assert page_links(PageLinks(older="javascript:alert(1)//", newer="../x")) == []


def test_thumbnails_and_icons_are_lazy_fixed_size_and_http_only() -> None:
    outlet = replace(OUTLET_A, icon_url="https://a.example/favicon.ico")
    good = make_item(image_url="https://a.example/lead.jpg?w=1&h=2", sources=(outlet, OUTLET_B))
    bad = [
        make_item(id=f"tag:x,{n}", image_url=url, sources=(replace(OUTLET_B, icon_url=url),))
        for n, url in enumerate(
            ("javascript:alert(1)", "data:image/png;base64,AAAA", " \tjavascript:x", "ftp://a/b")
        )
    ]
    page = parse_html(render_html(TOPIC, [good, *bad], BASE_URL))
    images = list(page.iter("img"))
    assert [(i.get("class"), i.get("src")) for i in images] == [
        ("thumb", "https://a.example/lead.jpg?w=1&h=2"),
        ("icon", "https://a.example/favicon.ico"),
    ]
    for image in images:
        assert image.get("alt") == "" and image.get("loading") == "lazy"
        assert image.get("referrerpolicy") == "no-referrer"
    assert (images[0].get("width"), images[0].get("height")) == ("120", "80")
    assert (images[1].get("width"), images[1].get("height")) == ("16", "16")
    # the icon sits in the outlet's link, before its name
    outlet_link = images[1].getparent()
    assert outlet_link.tag == "a" and outlet_link.text_content() == "Outlet A"


def test_the_content_security_policy_allows_the_pages_style_and_no_script() -> None:
    import base64
    import hashlib

    from aggregator.render import PAGE_CSP

    style = parse_html(render_html(TOPIC, [], BASE_URL)).find(".//style").text
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in PAGE_CSP
    assert "default-src 'none'" in PAGE_CSP and "script" not in PAGE_CSP
    index_style = parse_html(render_index([TOPIC], BASE_URL)).find(".//style").text
    assert index_style == style
