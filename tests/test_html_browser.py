"""The topic page in a real browser (headless Chromium): it fits a phone, its links go
where they say, its dark scheme applies, its images are lazy, and the browser has
nothing to complain about, served with the daemon's headers (CSP included).

Skipped, with what to install, where there is no `chromium` or no Playwright
(tests/browser.py). One browser for the module.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator.model import PublishedItem, SourceRef, Topic
from aggregator.render import render_topic
from tests.browser import (
    SHOTS,
    SITE,
    serve,
    take_screenshots,
    wait_until_true,
)

NOW = datetime(2026, 12, 6, 12, 3, tzinfo=UTC)
TOPIC = Topic(
    slug="north-korea",
    title="North Korea",
    description="Peace, sanctions and diplomacy on the Korean peninsula",
)


def outlet(name: str, host: str, icon: bool = True) -> SourceRef:
    return SourceRef(
        title=name,
        url=f"https://{host}/",
        feed_url=f"https://{host}/feed/",
        icon_url=f"https://{host}/favicon.png" if icon else None,
    )


WIRE = outlet("Pacific Wire Service", "pacificwire.example")
FRONTLINE = outlet("Korea Frontline", "koreafrontline.example")
HAN = outlet("Han River Review", "hanriverreview.example")
BRIEF = outlet("Northeast Asia Brief", "neabrief.example", icon=False)
FOGGY = outlet("Foggy Bottom Dispatch", "foggybottom.example")
LEDGER = outlet("Beltway Ledger", "beltwayledger.example", icon=False)

HOSTILE_TITLE = '"><img src=x onerror=alert(1)><script>alert("t")</script> Talks & more'


def story(number: int, hours_ago: float, **changes: Any) -> PublishedItem:
    published = NOW - timedelta(hours=hours_ago)
    item = PublishedItem(
        id=f"urn:uuid:00000000-0000-4000-8000-{number:012d}",
        link=f"https://pacificwire.example/news/2026/12/story-{number}",
        title=f"Story number {number} about the peninsula",
        content_html="<p>Text.</p>",
        summary_html="",
        excerpt=(
            "Officials in Seoul and Washington said on Sunday that the talks would resume"
            " after a pause of several months, with a first meeting planned at Panmunjom."
        ),
        author=None,
        categories=(),
        published=published,
        updated=published,
        sources=(WIRE,),
        image_url=f"https://pacificwire.example/images/{number}.jpg",
        changed_at=published,
    )
    return replace(item, **changes)


ITEMS = [
    story(
        1,
        0.4,
        title=(
            "North Korea and South Korea agree to reopen the inter-Korean liaison office in"
            " Kaesong after a three-year closure, officials from both governments confirm"
        ),
        sources=(WIRE, FRONTLINE, HAN, BRIEF, FOGGY, LEDGER),
        author="Min-ji Park and Jonathan Reeves-Whitfield",
    ),
    story(2, 2.2, title=HOSTILE_TITLE, image_url="", sources=(FRONTLINE,)),
    story(
        3,
        5,
        title="Pyongyang's" + " Supercalifragilisticexpialidociouslylongcompoundword" * 2,
        excerpt="https://example.org/" + "a-very-long-path-segment-" * 12,
        sources=(HAN, BRIEF),
        link="https://hanriverreview.example/2026/12/kaesong/",
    ),
    story(4, 15, image_url="data:image/png;base64,iVBORw0KGgo=", sources=(BRIEF, WIRE)),
    story(5, 26, sources=(FOGGY,), link="https://foggybottom.example/2026/12/05/envoy/"),
    story(6, 30, image_url="", sources=(LEDGER, FOGGY)),
    story(7, 52, sources=(WIRE, HAN)),
    story(8, 75, sources=(FRONTLINE,), link="https://koreafrontline.example/flood-relief/"),
    story(9, 100, sources=(HAN,), image_url="javascript:alert(1)"),
]


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    rendered = render_topic(TOPIC, ITEMS, "https://news.example/")
    # the page as rendered at NOW (publish renders as of the items' latest change)
    from aggregator.render import render_html

    rendered["north-korea.html"] = render_html(TOPIC, ITEMS, "https://news.example/", now=NOW)
    return rendered


def open_page(
    browser: Any, files: dict[str, bytes], width: int, height: int, scheme: str = "light"
) -> tuple[Any, Any, list[str]]:
    """(context, page, console problems) with the topic page loaded."""
    context = browser.new_context(
        viewport={"width": width, "height": height}, device_scale_factor=1, color_scheme=scheme
    )
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda message: (
            problems.append(f"{message.type}: {message.text}")
            if message.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    serve(page, files)
    page.goto(SITE + "north-korea.html", wait_until="load")
    return context, page, problems


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (360, 740)])
def test_no_horizontal_scroll_and_nothing_to_complain_about(
    browser: Any, files: dict[str, bytes], width: int, height: int
) -> None:
    context, page, problems = open_page(browser, files, width, height)
    try:
        page.mouse.wheel(0, 20000)  # every lazy image comes into view and loads
        wait_until_true(page, "[...document.images].every(i => i.complete)")
        scroll_width, client_width = page.evaluate(
            "[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]"
        )
        assert scroll_width <= client_width == width
        # no element sticks out to the right either (overflow hidden by a parent would hide
        # it from scrollWidth, not from the reader)
        widest = page.evaluate(
            "Math.max(...[...document.body.querySelectorAll('*')]"
            ".map(e => e.getBoundingClientRect().right))"
        )
        assert widest <= width
        assert page.evaluate("document.scripts.length") == 0
        assert problems == []  # console errors and warnings, CSP violations included
    finally:
        context.close()


def test_links_go_where_they_say(browser: Any, files: dict[str, bytes]) -> None:
    context, page, _ = open_page(browser, files, 1280, 800)
    try:
        articles = page.locator("article")
        assert articles.count() == len(ITEMS)
        for index, item in enumerate(ITEMS):
            article = articles.nth(index)
            title = article.locator("h3 a")
            assert title.get_attribute("href") == item.link
            assert title.inner_text() == item.title  # the hostile one as text
            outlet = article.locator(".meta a").first
            assert outlet.inner_text() == item.sources[0].title
            assert outlet.get_attribute("href") == item.sources[0].url
            also = article.locator(".also a")
            assert also.all_inner_texts() == [s.title for s in item.sources[1:]]
            hrefs = [also.nth(i).get_attribute("href") for i in range(also.count())]
            assert hrefs == [s.url for s in item.sources[1:]]
        # the hostile title added no element
        assert page.locator("article img:not(.thumb):not(.icon)").count() == 0
        headings = page.locator("main h2").all_inner_texts()
        assert [h.lower() for h in headings] == [
            "today",
            "yesterday",
            "friday 4 december",
            "thursday 3 december",
            "wednesday 2 december",
        ]
        first_time = articles.nth(0).locator("time")
        assert first_time.inner_text() == "24 min ago"
        assert first_time.get_attribute("title") == "6 December 2026, 11:39 UTC"
        assert "12:03 UTC" in page.locator("footer").inner_text()
    finally:
        context.close()


def test_dark_mode_applies(browser: Any, files: dict[str, bytes]) -> None:
    colours = {}
    for scheme in ("light", "dark"):
        context, page, _ = open_page(browser, files, 1280, 800, scheme)
        try:
            colours[scheme] = page.evaluate(
                "[getComputedStyle(document.body).backgroundColor,"
                " getComputedStyle(document.body).color,"
                " getComputedStyle(document.querySelector('article h3 a')).color]"
            )
        finally:
            context.close()
    for light, dark in zip(colours["light"], colours["dark"], strict=True):
        assert light != dark
    assert colours["dark"][0] == "rgb(22, 24, 27)"


def test_images_are_lazy_sized_and_http_only(browser: Any, files: dict[str, bytes]) -> None:
    context, page, _ = open_page(browser, files, 1280, 800)
    try:
        images = page.evaluate(
            """[...document.images].map(i => ({
                src: i.getAttribute('src'), cls: i.className, alt: i.getAttribute('alt'),
                loading: i.loading, referrer: i.referrerPolicy,
                width: i.getAttribute('width'), height: i.getAttribute('height'),
                box: [i.getBoundingClientRect().width, i.getBoundingClientRect().height],
            }))"""
        )
        thumbs = [i for i in images if i["cls"] == "thumb"]
        # items 2 and 6 have none, 4 (data:) and 9 (javascript:) had theirs dropped
        assert [t["src"] for t in thumbs] == [
            f"https://pacificwire.example/images/{n}.jpg" for n in (1, 3, 5, 7, 8)
        ]
        for image in images:
            assert image["src"].startswith("https://")
            assert image["alt"] == "" and image["loading"] == "lazy"
            assert image["referrer"] == "no-referrer"
            assert image["width"] and image["height"]
        assert {tuple(t["box"]) for t in thumbs} == {(120, 80)}
        icons = [i for i in images if i["cls"] == "icon"]
        assert icons and {tuple(i["box"]) for i in icons} == {(16, 16)}
    finally:
        context.close()


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_screenshots(browser: Any, files: dict[str, bytes], tmp_path: Path) -> None:
    """What `python -m tests.screenshots` commits to docs/, here of this module's page."""
    written = take_screenshots(browser, files, "north-korea.html", tmp_path)
    assert [p.name for p in written] == [f"{shot[0]}.png" for shot in SHOTS]
    for path, (_, width, height, _) in zip(written, SHOTS, strict=True):
        assert png_size(path) == (width, height)
        assert path.stat().st_size < 300_000
