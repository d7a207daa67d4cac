"""What a red-team pass over the published outputs found: each test failed before its fix.

- Links in an entry's text relative to the feed's own URL ("#notes", "") were resolved
  against that URL with its credentials (userinfo, `?api_key=`), publishing them.
- A link with characters no URL or IRI may hold (a space, quotes, angle brackets, a
  bidirectional override) was published as written: an invalid Atom href, RSS link and
  JSON Feed url, and U+202E reversed how a reader shows it.
- An Atom title of type "html" or "xhtml" kept the text of a <script> or <style> in it
  ("window.pwned=1 Breaking") and read every inline tag as a word break ("AT & T").
- On the HTML page a right-to-left outlet name pulled the time after it into its order
  ("2 · <name> h ago"), and right-to-left titles and excerpts were laid out left to right
  (an Arabic title's "?" at its right end): feed text now takes its own direction.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import lxml.html
import pytest

from aggregator.clean import clean_html
from aggregator.model import SourceRef, Topic
from aggregator.parse import parse_feed
from aggregator.render import render_html
from tests.test_render import make_item, published_urls, render_every_format

# --- credentials of the feed's URL in links relative to it ---------------------------------

PASSWORD = "pw-77aa1c"
TOKEN = "tok-51e0b3"


@pytest.mark.parametrize(
    "base",
    [
        f"http://reader:{PASSWORD}@news.example/feed.xml?api_key={TOKEN}&lang=en",
        f"https://news.example/feed.xml?lang=en&token={TOKEN}",
    ],
)
def test_links_relative_to_a_credentialed_feed_url_drop_its_credentials(base: str) -> None:
    html = clean_html(
        '<p><a href="#notes">Notes</a>, <a href="">the feed</a>, <a href="/about">about</a>,'
        ' <a href="?page=2">next</a> <img src="#pic" width="200" height="100"></p>',
        base,
    )
    assert PASSWORD not in html and TOKEN not in html
    site = base.partition("://")[0] + "://news.example"
    assert f'<a href="{site}/feed.xml?lang=en#notes">Notes</a>' in html
    assert f'<a href="{site}/feed.xml?lang=en">the feed</a>' in html
    assert f'<a href="{site}/about">about</a>' in html


def test_links_resolved_against_a_base_that_is_no_web_url_are_dropped() -> None:
    html = clean_html(
        '<a href="rel">text</a> <a href="https://ok.example/">ok</a>', "javascript:x//"
    )
    assert html == 'text <a href="https://ok.example/">ok</a>'


# --- published URLs are valid IRIs ---------------------------------------------------------

#: what RFC 3987 allows nowhere in an IRI (and RFC 3986 nowhere in a URI)
NOT_IRI = re.compile(r'[\x00-\x20"<>\\^`{|}\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]')


def test_links_with_characters_no_iri_may_hold_are_percent_encoded_in_every_format() -> None:
    link = 'https://a.example/my file "1" <draft>{x}|y^z`.pdf?q=a\\b#part 2'
    outlet = SourceRef(
        title="Outlet",
        url="https://a.example/\u202egpj.exe",
        feed_url="https://a.example/feed 1.xml",
        icon_url="https://a.example/icon 1.png",
    )
    item = make_item(link=link, image_url="https://a.example/lead image.jpg", sources=(outlet,))
    documents = render_every_format([item])
    for name, document in documents.items():
        for url in published_urls(name, document):
            assert not NOT_IRI.search(url), (name, url)
    expected = (
        "https://a.example/my%20file%20%221%22%20%3Cdraft%3E%7Bx%7D%7Cy%5Ez%60.pdf?q=a%5Cb#part%202"
    )
    feed = json.loads(documents["json"])
    [entry] = feed["items"]
    assert entry["url"] == expected
    assert entry["_aggregator"]["sources"] == [
        {
            "title": "Outlet",
            "url": "https://a.example/%E2%80%AEgpj.exe",
            "feed_url": "https://a.example/feed%201.xml",
        }
    ]
    assert f'href="{expected}"'.encode() in documents["atom"]
    assert f"<link>{expected}</link>".encode() in documents["rss"]
    page = documents["html"].decode()
    assert 'src="https://a.example/lead%20image.jpg"' in page
    assert 'src="https://a.example/icon%201.png"' in page


def test_ordinary_links_are_published_as_written() -> None:
    link = "https://例え.example/パス?q=ü&id=7#top"
    documents = render_every_format([make_item(link=link)])
    assert json.loads(documents["json"])["items"][0]["url"] == link


# --- HTML titles read as a browser shows them ----------------------------------------------

MARKUP_TITLES = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
<title type="html">Outlet &lt;style&gt;b{}&lt;/style&gt;&lt;i&gt;Daily&lt;/i&gt;</title>
<id>urn:x:feed</id><updated>2026-03-02T10:00:00Z</updated>
<entry><id>urn:x:1</id><updated>2026-03-02T10:00:00Z</updated>
  <title type="html">&lt;script&gt;window.pwned=1&lt;/script&gt;AT&lt;b&gt;&amp;amp;&lt;/b&gt;T
  &lt;em&gt;merger&lt;/em&gt; talks</title></entry>
<entry><id>urn:x:2</id><updated>2026-03-02T09:00:00Z</updated>
  <title type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">Kim Jong<b>-</b>un
  <script>window.pwned=2</script>visits <em>Seoul</em></div></title></entry>
</feed>
"""


def test_html_and_xhtml_titles_read_as_a_browser_shows_them() -> None:
    feed = parse_feed(MARKUP_TITLES, {"content-type": "application/atom+xml"}, "https://x.example/")
    assert feed.title == "Outlet Daily"
    assert [entry.title for entry in feed.entries] == [
        "AT&T merger talks",
        "Kim Jong-un visits Seoul",
    ]


# --- right-to-left text on the page --------------------------------------------------------

RTL_OUTLET = SourceRef(
    title="חדשות ישראל", url="https://il.example/", feed_url="https://il.example/feed"
)
RTL_ITEM = make_item(
    title="שלום עולם!",
    excerpt="מה שלומך? 2024",
    author="דוד לוי",
    sources=(
        RTL_OUTLET,
        SourceRef(title="أخبار", url="https://ar.example/", feed_url="https://ar.example/f"),
    ),
    published=datetime(2024, 3, 5, 12, tzinfo=UTC),
    changed_at=datetime(2024, 3, 5, 14, tzinfo=UTC),
)


def test_feed_text_on_the_page_takes_its_own_direction() -> None:
    page: Any = lxml.html.document_fromstring(
        render_html(Topic("t", "T"), [RTL_ITEM], "https://x/")
    )
    [article] = page.findall(".//article")
    assert article.find("h3").get("dir") == "auto"
    assert article.find("p[@class='excerpt']").get("dir") == "auto"
    outlets = article.findall("p[@class='meta']/a") + article.findall("p[@class='also']/a")
    assert [(a.text_content(), a.get("dir")) for a in outlets] == [
        ("חדשות ישראל", "auto"),
        ("أخبار", "auto"),
    ]
    assert article.find("p[@class='meta']/bdi").text == "דוד לוי"
    assert "2 h ago · by דוד לוי" in article.find("p[@class='meta']").text_content()


def test_a_right_to_left_outlet_leaves_the_time_after_it_in_a_browser(browser: Any) -> None:
    page = browser.new_page(viewport={"width": 800, "height": 600})
    try:
        page.set_content(render_html(Topic("t", "T"), [RTL_ITEM], "https://x/").decode())
        boxes = page.evaluate(
            """() => {
                const box = e => e.getBoundingClientRect();
                const meta = document.querySelector("article .meta");
                const outlet = meta.querySelector("a"), time = meta.querySelector("time");
                return {outlet: box(outlet), time: box(time)};
            }"""
        )
        # the meta line reads left to right: the outlet, then the time
        assert boxes["outlet"]["right"] < boxes["time"]["left"]
        directions = page.evaluate(
            """() => [...document.querySelectorAll("article h3, article .excerpt")]
                .map(e => getComputedStyle(e).direction)"""
        )
        assert directions == ["rtl", "rtl"]
    finally:
        page.close()
