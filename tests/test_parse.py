"""parse_feed on the fixture feeds in tests/data/feeds/ and on hostile or broken bodies."""

from __future__ import annotations

import html
import json
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import lxml.html
import pytest

from aggregator.errors import ParseError
from aggregator.model import ParsedFeed
from aggregator.parse import parse_feed

FEEDS = Path(__file__).parent / "data" / "feeds"


def parse_fixture(name: str, content_type: str = "", url: str = "") -> ParsedFeed:
    headers = {"content-type": content_type} if content_type else {}
    return parse_feed((FEEDS / name).read_bytes(), headers, url or f"https://feeds.test/{name}")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- RSS 2.0 (WordPress) ----------------------------------------------------------------


def test_wordpress_feed_metadata():
    feed = parse_fixture("wordpress.rss", "application/rss+xml; charset=UTF-8")
    assert feed.title == "Peninsula Peace Monitor"
    assert feed.site_url == "https://peace-monitor.example.org"
    assert feed.ttl_minutes == 45
    assert feed.warning is None
    assert [entry.title for entry in feed.entries] == [
        "Pyongyang signals openness to family reunion talks",
        "Community garden opens \u201cseed library\u201d for spring",
        "Sanctions panel report: DPRK ship-to-ship transfers continue",
    ]


def test_wordpress_entry_fields():
    first = parse_fixture("wordpress.rss", "application/rss+xml").entries[0]
    assert first.entry_id == "https://peace-monitor.example.org/?p=4812"
    assert first.link is not None
    assert first.link.startswith(
        "https://peace-monitor.example.org/2024/03/12/pyongyang-family-reunions/?utm_source=rss"
    )
    assert first.author == "Min-ji Park"
    # "Diplomacy" is listed three times, once in lower case
    assert first.categories == ("Diplomacy", "North Korea")
    # 18:30 in Seoul (+0900)
    assert first.published == utc(2024, 3, 12, 9, 30)
    assert first.published.tzinfo == UTC
    assert first.updated == first.published
    # content:encoded is the full article, <description> the excerpt; both raw
    assert "shrinking list of applicants" in first.content_html
    assert "<script>" in first.content_html
    assert "[&#8230;]" in first.summary_html
    assert "shrinking list" not in first.summary_html


def test_relative_item_link_resolves_against_feed_url():
    feed = parse_fixture("wordpress.rss", url="https://peace-monitor.example.org/feed/")
    third = feed.entries[2]
    assert third.link == "https://peace-monitor.example.org/2024/03/08/panel-report-transfers/"
    assert third.base_url == "https://peace-monitor.example.org/feed/"
    assert third.published == utc(2024, 3, 8, 19, 5)
    assert third.content_html == ""
    assert "refined petroleum" in third.summary_html


def test_content_location_header_is_the_base():
    body = b"""<rss version="2.0"><channel><title>T</title>
        <item><title>A</title><link>a/1</link></item></channel></rss>"""
    feed = parse_feed(
        body, {"Content-Location": "/real/feed.xml"}, "https://moved.test/old/feed.xml"
    )
    assert feed.entries[0].link == "https://moved.test/real/a/1"


# --- Atom -------------------------------------------------------------------------------


def test_atom_feed_and_html_title_as_plain_text():
    feed = parse_fixture("atom.xml", "application/atom+xml")
    assert feed.title == "Korea Desk & Friends"
    assert feed.site_url == "https://korea-desk.example.net/"
    first = feed.entries[0]
    assert first.title == "Kim Jong Un visits Wonsan resort & factories"


def test_atom_xml_base_links_dates_authors():
    first, weekend, marathon = parse_fixture("atom.xml").entries
    assert first.entry_id == "tag:korea-desk.example.net,2024:analysis-311"
    assert first.link == "https://korea-desk.example.net/analysis/2024/kim-wonsan-visit.html"
    assert first.base_url == "https://korea-desk.example.net/analysis/2024/"
    assert first.published == utc(2024, 3, 11, 0, 30)
    assert first.updated == utc(2024, 3, 11, 3, 0)
    assert first.author == "Jae-won Lee"  # the name, not "name (email)"
    assert first.categories == ("North Korea", "economy")  # label preferred over term
    assert 'src="images/kalma-beach.jpg"' in first.content_html  # resolved later, in clean
    # a text summary is escaped into HTML
    assert first.summary_html == (
        "<p>The DPRK leader toured the Kalma coastal resort &amp; nearby factories,"
        " state media said.</p>"
    )

    assert weekend.link == "https://korea-desk.example.net/weekend/rivers-and-bridges"
    assert weekend.base_url == "https://korea-desk.example.net/weekend/"  # content's xml:base
    assert "bridge building" in weekend.content_html  # xhtml content
    assert weekend.published is None and weekend.updated is None
    assert weekend.categories == ("Culture", "books")

    # parse reports the feed's date as is; clean clamps it
    assert marathon.published == utc(2099, 1, 1)
    assert marathon.content_html == ""
    assert "North Korea" in marathon.summary_html


def test_relative_xml_base_resolves_against_each_feeds_own_url():
    # feedparser's URI joins are cached (parse.py): the same relative xml:base in two
    # feeds from different sites must still resolve to each site's own address
    body = b"""<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom" xml:base="news/">
    <title>t</title><entry xml:base="2024/"><id>urn:x:1</id><title>a</title>
    <link href="story.html"/><content type="html">&lt;p&gt;x&lt;/p&gt;</content></entry></feed>"""
    links = [
        parse_feed(body, {}, f"https://{site}/feed.atom").entries[0].link
        for site in ("one.test", "two.test", "one.test")
    ]
    assert links == [
        "https://one.test/news/2024/story.html",
        "https://two.test/news/2024/story.html",
        "https://one.test/news/2024/story.html",
    ]


def test_atom_entry_inherits_feed_author():
    body = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>F</title><id>f</id>
        <author><name>Desk Editor</name></author><updated>2024-01-01T00:00:00Z</updated>
        <entry><title>E</title><id>e1</id><updated>2024-01-01T00:00:00Z</updated></entry>
        </feed>"""
    (entry,) = parse_feed(body, {}, "https://f.test/atom").entries
    assert entry.author == "Desk Editor"


# --- RSS 1.0 ----------------------------------------------------------------------------


def test_rss1_with_dc_date():
    feed = parse_fixture("rss1.rdf", "application/rdf+xml")
    assert feed.title == "Northeast Asia Archive"
    assert feed.site_url == "https://archive.example.com/"
    first, second = feed.entries
    assert first.title == "Armistice anniversary: letters from Panmunjom"
    assert first.link == "https://archive.example.com/docs/armistice-anniversary"
    assert first.published == utc(2024, 2, 27, 15, 45)
    assert first.author == "H. Okada"
    assert first.categories == ("History",)
    assert second.title == "Tide tables for the Yellow Sea, 1900\u20131910"
    assert second.published == utc(2024, 2, 20)


# --- JSON Feed --------------------------------------------------------------------------


def test_json_feed_1_1():
    feed = parse_fixture("feed.json", "application/feed+json", "https://briefing.example.kr/f")
    assert feed.title == "Seoul Briefing"
    assert feed.site_url == "https://briefing.example.kr/"
    missile, recipe, note = feed.entries

    assert missile.entry_id == "https://briefing.example.kr/p/2041"
    assert missile.title == "DPRK fires short-range missile into East Sea"
    assert missile.author == "Hana Cho, Dae-ho Yoon"
    assert missile.categories == ("North Korea", "Missiles")
    assert missile.published == utc(2024, 3, 13, 22, 48)
    assert missile.updated == utc(2024, 3, 14, 0, 10)
    assert "Joint Chiefs of Staff" in missile.content_html
    # JSON Feed summaries are plain text
    assert missile.summary_html.startswith("<p>North Korea fired")

    assert recipe.link == "https://recipes.example.com/kimchi-jjigae"  # external_url
    assert recipe.author == "Seoul Briefing staff"  # the feed's authors
    assert recipe.content_html == (
        "<p>Use well-fermented kimchi.</p>"
        "<p>Simmer with pork belly &amp; tofu for 20 minutes &lt;not too long&gt;.</p>"
    )

    assert note.link == "https://briefing.example.kr/2024/03/untitled-note"
    assert note.title == ""
    assert note.published is None


def test_json_feed_1_0():
    feed = parse_fixture("feed-v1.json", "application/json")
    assert feed.title == "Harbour Notes"
    ferry, boats = feed.entries
    assert ferry.author == "Lena Fischer"  # 1.0 top-level `author`
    assert ferry.published == utc(2024, 3, 1, 11)
    assert boats.author == "Piet Jansen"
    assert boats.published is None  # "not a date"
    assert "North Korea" in boats.content_html


def test_json_feed_detected_without_content_type():
    feed = parse_feed((FEEDS / "feed.json").read_bytes(), {}, "https://b.test/feed")
    assert feed.title == "Seoul Briefing"
    assert len(feed.entries) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON Feed: "),
        (b'{"version": "https://example.com/other", "items": []}', "invalid JSON Feed: version"),
        (b'{"title": "no version"}', "invalid JSON Feed: no version"),
        (b'{"version": "https://jsonfeed.org/version/1.1", "items": {}}', "items is not a list"),
        (b"[1, 2]", "top level is not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON Feed"),
    ],
)
def test_invalid_json_feed(body: bytes, message: str):
    with pytest.raises(ParseError) as caught:
        parse_feed(body, {"content-type": "application/json"}, "https://j.test/feed")
    assert message in str(caught.value)
    assert caught.value.url == "https://j.test/feed"
    assert "\n" not in str(caught.value)


# --- not feeds ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"  \r\n\t ", b"\xef\xbb\xbf"])
def test_empty_body(body: bytes):
    with pytest.raises(ParseError, match="^empty body$"):
        parse_feed(body, {"content-type": "application/rss+xml"}, "https://e.test/")


def test_html_page_is_not_a_feed():
    with pytest.raises(ParseError, match=r"^not a feed \(looks like an HTML page\)$"):
        parse_fixture("html-page.html", "text/html; charset=utf-8")


def test_html_page_detected_by_its_markup_even_when_labelled_xml():
    with pytest.raises(ParseError, match="HTML page"):
        parse_fixture("html-page.html", "application/rss+xml")


@pytest.mark.parametrize("body", [b"hello world", b"<note><to>you</to></note>"])
def test_other_bodies_are_not_feeds(body: bytes):
    with pytest.raises(ParseError, match="^not a feed: "):
        parse_feed(body, {"content-type": "text/xml"}, "https://x.test/")


def test_body_naming_a_file_is_not_read_from_disk(tmp_path: Path):
    secret = tmp_path / "feed.xml"
    secret.write_bytes(b'<rss version="2.0"><channel><title>Local file</title></channel></rss>')
    with pytest.raises(ParseError):
        parse_feed(str(secret).encode(), {}, "https://x.test/")


def test_valid_feed_without_entries():
    body = b'<rss version="2.0"><channel><title>Quiet</title><ttl>0</ttl></channel></rss>'
    feed = parse_feed(body, {}, "https://q.test/")
    assert feed.title == "Quiet"
    assert feed.entries == ()
    assert feed.ttl_minutes is None


def test_malformed_feed_with_entries_is_used_with_a_warning():
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>Broken</title>'
        b"<item><title>First &amp; only</title><link>https://b.test/1</link></item>"
        b"<item><title>Cut off"
    )
    feed = parse_feed(body, {"content-type": "application/rss+xml"}, "https://b.test/feed")
    assert feed.entries[0].title == "First & only"
    assert feed.warning is not None and feed.warning.startswith("malformed XML")


def test_double_escaped_rss_title_is_unescaped_once():
    body = b"""<rss version="2.0"><channel><title>T</title>
        <item><title>AT&amp;amp;T &amp;lt;3 &#8220;quotes&#8221;</title></item></channel></rss>"""
    (entry,) = parse_feed(body, {}, "https://t.test/").entries
    assert entry.title == "AT&T <3 \u201cquotes\u201d"


# --- hostile XML ----------------------------------------------------------------------------


def test_entity_bomb_does_not_expand():
    body = (FEEDS / "entity-bomb.xml").read_bytes()
    assert len(body) < 2048
    tracemalloc.start()
    started = time.perf_counter()
    try:
        feed = parse_feed(body, {"content-type": "application/rss+xml"}, "https://bomb.test/")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 5 * 1024 * 1024
    # the feed is still read, its entities left unexpanded
    [entry] = feed.entries
    assert entry.title.startswith("Item") and "lollol" not in entry.title
    assert "lollol" not in entry.summary_html


def test_external_entity_is_not_loaded():
    body = (
        b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>'
        b'<rss version="2.0"><channel><title>&xxe;</title>'
        b"<item><title>A &xxe; B</title></item></channel></rss>"
    )
    feed = parse_feed(body, {}, "https://xxe.test/")
    assert "root:" not in (feed.title or "")
    assert "root:" not in feed.entries[0].title


def test_an_external_dtd_of_named_characters_does_not_stop_a_feed():
    body = (
        b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY % lat1 PUBLIC "-//W3C//ENTITIES'
        b' Latin 1 for XHTML//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml-lat1.ent">\n%lat1;\n]>'
        b'<rss version="2.0"><channel><title>T</title>'
        b"<item><title>Caf&eacute;</title></item></channel></rss>"
    )
    feed = parse_feed(body, {}, "https://lat1.test/")
    assert feed.entries[0].title.startswith("Caf")


def test_plain_character_entity_declarations_still_parse():
    body = (
        b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY nbsp "&#160;">\n]>\n'
        b'<rss version="2.0"><channel><title>Non&nbsp;breaking</title>'
        b"<item><title>One&nbsp;item</title></item></channel></rss>"
    )
    feed = parse_feed(body, {}, "https://nbsp.test/")
    assert feed.entries[0].title == "One item"


# --- charsets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/rss+xml; charset=utf-8", "text/xml; charset=iso-8859-1", "text/xml"],
)
def test_windows_1252_body_with_wrong_charset(content_type: str):
    feed = parse_fixture("windows-1252.rss", content_type)
    assert feed.title == "Caf\u00e9 Diplomatique"
    (entry,) = feed.entries
    assert entry.title == "\u201cSunshine\u201d policy revisited \u2013 Pyongyang\u2019s view"
    assert "\u00e9l\u00e8ves de l\u2019\u00e9cole" in entry.summary_html
    assert entry.published == utc(2024, 3, 4, 9)
    # a mislabelled charset that decodes cleanly is not worth a warning
    assert feed.warning is None


def test_undecodable_bytes_do_not_crash():
    body = (
        b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        b"<title>Bad \xff\xfe bytes</title><item><title>Still \x81 here</title></item>"
        b"</channel></rss>"
    )
    headers = {"content-type": "application/rss+xml; charset=utf-8"}
    feed = parse_feed(body, headers, "https://c.test/")
    assert feed.title is not None and feed.title.startswith("Bad")
    assert feed.entries[0].title.startswith("Still")


@pytest.mark.parametrize(
    ("author", "name"),
    [
        ("desk@wire.example (Pacific Wire Service)", "Pacific Wire Service"),
        ("Min-ji Park <mj@example.org>", "Min-ji Park"),
        ("Daniel Cho", "Daniel Cho"),
        ("desk@wire.example", "desk@wire.example"),
    ],
)
def test_rss_author_is_the_name_without_the_address(author: str, name: str):
    body = (
        '<rss version="2.0"><channel><title>T</title><item><title>x</title>'
        f"<author>{html.escape(author)}</author></item></channel></rss>"
    ).encode()
    assert parse_feed(body, {}, "https://a.test/").entries[0].author == name


def test_a_json_feed_with_a_bare_version_number_is_read():
    body = b'{"version": "1.1", "title": "T", "items": [{"id": "1", "content_text": "Hello"}]}'
    feed = parse_feed(body, {"content-type": "application/feed+json"}, "https://j.test/feed.json")
    assert [e.entry_id for e in feed.entries] == ["1"]


def test_a_json_feed_title_with_a_lone_surrogate_loses_it():
    # valid JSON, but no database or page can take it: it failed every poll of the feed
    body = b'{"version": "1.1", "title": "Bad \\ud800 title", "items": []}'
    feed = parse_feed(body, {"content-type": "application/feed+json"}, "https://j.test/feed.json")
    assert feed.title == "Bad  title"


# --- the feed's own link, authors as plain text ---------------------------------------------


def rss_with(channel_link: str = "", creator: str = "", author: str = "") -> bytes:
    return (
        '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>T</title>'
        f"<link>{channel_link}</link><item><title>x</title><guid>1</guid>"
        + (f"<dc:creator>{creator}</dc:creator>" if creator else "")
        + (f"<author>{author}</author>" if author else "")
        + "</item></channel></rss>"
    ).encode()


@pytest.mark.parametrize(
    ("channel_link", "site_url"),
    [
        ("javascript:alert(1)", None),
        (" &#9;javascript:alert(1)", None),
        ("vbscript:msgbox(1)", None),
        ("data:text/html;base64,PHNjcmlwdD4=", None),
        ("/home", "https://feeds.test/home"),
        ("https://site.test/?session=abc&amp;lang=en", "https://site.test/?lang=en"),
    ],
)
def test_the_feeds_site_link_is_http_without_credentials(channel_link: str, site_url: str | None):
    feed = parse_feed(rss_with(channel_link), {}, "https://user:pw@feeds.test/rss?token=t")
    assert feed.site_url == site_url


@pytest.mark.parametrize(
    "home_page", ["javascript:alert(1)", "data:text/html,x", " \tjavascript:x"]
)
def test_a_json_feeds_home_page_is_http_only(home_page: str):
    body = json.dumps(
        {"version": "https://jsonfeed.org/version/1.1", "title": "T", "home_page_url": home_page}
    ).encode()
    assert parse_feed(body, {}, "https://j.test/feed.json").site_url is None


@pytest.mark.parametrize(
    ("creator", "name"),
    [
        # markup escaped once in the XML: feedparser hands over the markup
        ("&lt;b onclick=x&gt;Bob&lt;/b&gt;", "Bob"),
        # escaped twice: feedparser hands over its character references
        ("&amp;lt;b onclick=x&amp;gt;Bob&amp;lt;/b&amp;gt;", "Bob"),
        ("<![CDATA[<a href='javascript:alert(1)'>Ann</a> Lee]]>", "Ann Lee"),
        ("Tom &amp;amp; Jerry", "Tom & Jerry"),
        ("AT&amp;T &lt;3", "AT&T <3"),
        ("Min-ji Park &lt;mj@example.org&gt;", "Min-ji Park"),
    ],
)
def test_author_names_are_plain_text_decoded_once(creator: str, name: str):
    (entry,) = parse_feed(rss_with(creator=creator), {}, "https://a.test/").entries
    assert entry.author == name


def test_an_escaped_author_reads_as_a_name_on_every_published_page():
    from aggregator.clean import clean_entry
    from aggregator.model import PublishedItem, SourceRef, Topic
    from aggregator.render import render_atom, render_html, render_json, render_rss

    body = rss_with(creator="&lt;b onclick=x&gt;Bob &amp;amp; Alice&lt;/b&gt;")
    (entry,) = parse_feed(body, {}, "https://a.test/").entries
    now = datetime(2024, 3, 1, tzinfo=UTC)
    cleaned = clean_entry(entry, "https://a.test/", now, entry_key="id:1")
    item = PublishedItem(
        id="urn:x:1",
        link=cleaned.link,
        title=cleaned.title,
        content_html=cleaned.content_html,
        summary_html=cleaned.summary_html,
        excerpt=cleaned.excerpt,
        author=cleaned.author,
        categories=cleaned.categories,
        published=cleaned.published,
        updated=cleaned.updated,
        sources=(SourceRef("T", "https://a.test/", "https://a.test/"),),
    )
    topic = Topic(slug="all", title="All")
    page = render_html(topic, [item], "https://n.test/")
    assert b"by <bdi>Bob &amp; Alice</bdi></p>" in page
    assert b"&amp;lt;" not in page and b"&lt;b" not in page and b"onclick" not in page
    meta = str(lxml.html.document_fromstring(page).xpath("string(//p[@class='meta'])"))
    assert meta.endswith("by Bob & Alice")
    assert feedparser.parse(render_atom(topic, [item], "https://n.test/")).entries[0].author == (
        "Bob & Alice"
    )
    assert feedparser.parse(render_rss(topic, [item], "https://n.test/")).entries[0].author == (
        "Bob & Alice"
    )
    json_item = json.loads(render_json(topic, [item], "https://n.test/"))["items"][0]
    assert json_item["authors"] == [{"name": "Bob & Alice"}]


MEDIA_RSS = b"""<?xml version="1.0"?>
<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"><channel><title>M</title>
<link>https://m.test/</link><image><url>/logo.png</url><title>M</title><link>https://m.test/</link></image>
<item><guid>1</guid><title>Thumb</title><media:thumbnail url="/t/1.jpg" width="120"/>
  <media:content url="https://m.test/video.mp4" type="video/mp4"/></item>
<item><guid>2</guid><title>Content</title>
  <media:content url="https://m.test/c.jpg" medium="image"/></item>
<item><guid>3</guid><title>Enclosure</title>
  <enclosure url="https://m.test/e.png" type="image/png" length="1"/></item>
<item><guid>4</guid><title>Podcast</title>
  <enclosure url="https://m.test/e.mp3" type="audio/mpeg" length="1"/></item>
</channel></rss>"""


def test_lead_images_and_the_feed_icon_as_the_feed_names_them():
    feed = parse_feed(MEDIA_RSS, {}, "https://m.test/feed")
    assert feed.icon_url == "https://m.test/logo.png"
    assert [entry.image_url for entry in feed.entries] == [
        "/t/1.jpg",  # resolved when cleaned, against the entry's base
        "https://m.test/c.jpg",
        "https://m.test/e.png",
        None,
    ]


def test_atom_prefers_its_icon_and_json_feed_its_favicon():
    atom = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>A</title><id>a</id>
    <updated>2026-01-01T00:00:00Z</updated><logo>/logo.png</logo><icon>/favicon.ico</icon>
    </feed>"""
    assert parse_feed(atom, {}, "https://a.test/feed").icon_url == "https://a.test/favicon.ico"
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "J",
        "icon": "https://j.test/icon-512.png",
        "favicon": "javascript:alert(1)",
        "items": [{"id": "1", "content_text": "x", "image": "/i/1.jpg"}],
    }
    feed = parse_feed(json.dumps(document).encode(), {}, "https://j.test/feed.json")
    # a favicon that may not be published leaves the icon
    assert feed.icon_url == "https://j.test/icon-512.png"
    assert feed.entries[0].image_url == "/i/1.jpg"
