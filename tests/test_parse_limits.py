"""Parsing has a deadline: absurd nesting never reaches the sanitizer, and a body whose
parsing and cleaning takes longer than `parse_timeout` fails alone, its worker killed.

100,000 nested <div> in one entry (a 1.1 MB feed) used to cost 21.6 s in nh3, growing
with the square of the depth; a body of tens of thousands of entries is slow without any
nesting, and only a deadline bounds it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import feedparser
import nh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import clean, nesting
from aggregator.errors import ParseError, ParseTimeout
from aggregator.pipeline import ParsePool
from tests.commands import aggregator, status_rows
from tests.feedserver import FeedServer
from tests.test_daemon import DaemonProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
GOOD = (Path(__file__).parent / "data" / "e2e" / "wp.rss").read_bytes()
LEVELS = 100_000
DEEP_WORDS = "The deep entry's own words &amp; nothing else."
#: generous: the sanitizer used to take 21.6 s on this; the scan takes milliseconds
GUARD_SECONDS = 10


def nested_divs(levels: int, inner: str = f"<p>{DEEP_WORDS}</p>") -> str:
    return "<div>" * levels + inner + "</div>" * levels


def article(levels: int) -> str:
    """A real-looking article whose markup nests `levels` deep: sections, quotes, lists and
    tables within each other, each with a paragraph of links and emphasis; an image and a
    comment at the bottom."""
    shapes = [
        ('<div class="entry">', "</div>"),
        ("<section>", "</section>"),
        ("<blockquote cite='https://example.org/q'>", "</blockquote>"),
        ("<ul><li>", "</li></ul>"),
        ('<table class="data"><tbody><tr><td>', "</td></tr></tbody></table>"),
        ("<figure>", "<figcaption>A chart</figcaption></figure>"),
    ]
    opening: list[str] = []
    closing: list[str] = []
    depth = 0
    while depth < levels:
        start, end = shapes[len(opening) % len(shapes)]
        part = len(opening)
        paragraph = (
            f'<p>Part {part}: <a href="/story/{part}">the minutes</a> and <em>the vote</em>.</p>'
        )
        opening.append(start + paragraph)
        closing.append(end)
        depth += start.count("<")
    body = (
        "<p>Talks resumed <strong>on Monday</strong>.<!-- ad slot --><br>"
        '<img src="https://example.org/chart.png" width="600" height="400" alt="chart"></p>'
    )
    return "".join(opening) + body + "".join(reversed(closing))


# --- the sanitizer ------------------------------------------------------------------


def test_a_hundred_thousand_nested_divs_keep_their_text_and_no_markup() -> None:
    deep = nested_divs(LEVELS)
    started = time.monotonic()
    sanitized = clean.sanitize_html(deep, "https://example.org/")
    cleaned = clean.clean_html(deep, "https://example.org/")
    text = clean.html_to_text(deep)
    assert time.monotonic() - started < GUARD_SECONDS
    assert sanitized == cleaned == "The deep entry's own words &amp; nothing else."
    assert text == "The deep entry's own words & nothing else."


def test_deep_markup_loses_its_tags_but_nothing_readable() -> None:
    deep = nested_divs(
        1000,
        '<p>One &lt;two&gt; <a href="javascript:alert(1)">three</a> <script>steal()</script>'
        "<style>p {}</style><!-- <b>hidden</b> -->four&amp;five</p><p>six</p>",
    )
    sanitized = clean.sanitize_html(deep, "https://example.org/")
    assert sanitized == "One &lt;two&gt; three four&amp;five six"


@pytest.mark.parametrize("levels", [30, 60])
def test_real_nesting_is_sanitized_as_before(levels: int, monkeypatch: Any) -> None:
    html_text = article(levels)
    assert not nesting.is_too_deep(html_text)
    sanitized = clean.sanitize_html(html_text, "https://example.org/")
    with monkeypatch.context() as patched:
        patched.setattr(clean, "is_too_deep", lambda html_text: False)  # as before the check
        assert sanitized == clean.sanitize_html(html_text, "https://example.org/")
    assert sanitized.count("<blockquote") == html_text.count("<blockquote")
    assert '<a href="https://example.org/story/3">the minutes</a>' in sanitized
    assert '<img src="https://example.org/chart.png"' in sanitized
    assert clean.clean_html(html_text, "https://example.org/") == sanitized


def test_the_depth_scan_counts_what_html5ever_nests() -> None:
    """Cases where a simple count of tags is fooled one way or the other."""
    cases = {
        # counted too low by a count that trusts every end tag
        "<span></x>" * 600: True,  # unknown end tags close nothing
        '<div title="</div>">' * 600: True,  # an end tag inside an attribute value
        "<div><!x </div>" * 600: True,  # ... inside a bogus comment
        "<!-- --!>" + "<div>" * 600: True,  # a comment ends at --!> too
        '<div><script>"</div>"</script>' * 600: True,  # ... in a script
        "<div/>" * 600: True,  # a self-closing <div/> opens a div
        "<svg>" + "<div/>" * 600: True,  # ... and leaves SVG first
        "<b><div></b>" * 600: True,  # the adoption agency keeps the div open
        "".join(f'<div><b id="{n}"></div>' for n in range(600)) + "<p>x</p>": True,
        # counted too high by a count that trusts no implied end tag
        "<p>para" * 600: False,
        "<ul>" + "<li>item" * 600 + "</ul>": False,
        "<table>" + "<tr><td>cell" * 600 + "</table>": False,
        "<p><b>bold</p>" * 600: False,  # reopened, but three alike at most
        "<a href=x>link " * 600: False,  # a new link closes the open one
        "<svg>" + "<path d='M0 0'/>" * 600 + "</svg>": False,  # self-closing in SVG
        "<br>" * 600 + "<img src=x>" * 600: False,
    }
    for html_text, deep in cases.items():
        assert nesting.is_too_deep(html_text) is deep, html_text[:60]


def test_the_scan_counts_as_deep_as_nh3_nests_on_real_shapes() -> None:
    html_text = article(400)
    tags = {"div", "section", "blockquote", "ul", "li", "table", "tbody", "tr", "td"}
    tags |= {"figure", "figcaption", "p", "a", "em", "strong", "br", "img"}
    tree = nh3.clean(html_text, tags=tags, attributes={}, link_rel=None)
    depth = deepest = 0
    for piece in tree.split("<")[1:]:
        if piece.startswith("/"):
            depth -= 1
        elif not piece.startswith(("br", "img")):
            depth += 1
            deepest = max(deepest, depth)
    assert deepest > 350
    assert nesting.is_too_deep(html_text, deepest - 1)
    assert not nesting.is_too_deep(html_text, deepest + 5)


#: tag soup: the elements, attributes and other markup the scan treats apart
_SOUP_NAMES = [
    *("div", "span", "p", "b", "i", "a", "li", "ul", "td", "tr", "table", "svg", "path"),
    *("foreignObject", "math", "mi", "font", "button", "h1", "h2", "select", "option"),
    *("template", "nobr", "form", "script", "style", "title", "textarea", "br", "img", "dd"),
    *("dt", "object", "x-y", "desc", "em", "caption", "xmp", "noscript", "iframe"),
]
_SOUP_ATTRIBUTES = ["", ' id="1"', ' id="2"', ' title="</div>"', " title='<div>'"]
_SOUP_ATTRIBUTES += [" color=red", " a=b/", ' x"y', " =z", " size"]
_SOUP_OTHER = ["t", " ", "<!-- c -->", "<!-- --!>", "<!-->", "<!x>", "<?p>", "</ 3>", '"', "<"]
_SOUP_OTHER += ["<![CDATA[</div>]]>", "&lt;"]
_RAW = {"script", "style", "iframe", "xmp", "noscript", "textarea", "select", "option"}
_KEPT = {name.lower() for name in _SOUP_NAMES} - _RAW - {"template"}


def _soup_token() -> st.SearchStrategy[str]:
    start = st.builds(
        lambda name, attributes, slash: f"<{name}{attributes}{slash}>",
        st.sampled_from(_SOUP_NAMES),
        st.sampled_from(_SOUP_ATTRIBUTES),
        st.sampled_from(["", "/"]),
    )
    end = st.builds(lambda name: f"</{name}>", st.sampled_from([*_SOUP_NAMES, "x"]))
    return st.one_of(start, start, end, st.sampled_from(_SOUP_OTHER))


def _nh3_depth(html_text: str) -> int:
    """How deep nh3 (html5ever) nests the elements of `html_text`."""
    tree = nh3.clean(html_text, tags=_KEPT, attributes={}, clean_content_tags=set(), link_rel=None)
    depth = deepest = 0
    for match in re.finditer(r"<(/?)([a-zA-Z][^\s/>]*)[^>]*>", tree):
        if match.group(1):
            depth -= 1
        elif match.group(2).lower() not in ("br", "img"):
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def _scan_depth(html_text: str) -> int:
    """The least limit the scan finds `html_text` within."""
    limit = 0
    while nesting.is_too_deep(html_text, limit):
        limit += 1
    return limit


@settings(max_examples=300, deadline=None)
@given(st.lists(_soup_token(), min_size=10, max_size=120))
def test_the_scan_never_counts_much_less_than_html5ever_nests(tokens: list[str]) -> None:
    html_text = "".join(tokens)
    assert _scan_depth(html_text) >= _nh3_depth(html_text) - 2


# --- the pool -----------------------------------------------------------------------


def die_the_first_time(marker: str) -> str:
    """Kills its worker process, unless it did so before (`marker` says so)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return "ran"


def test_a_body_past_its_deadline_fails_alone_and_its_worker_is_replaced() -> None:
    async def main() -> list[Any]:
        with ParsePool(2, timeout=1) as pool:
            stuck = pool.run(time.sleep, 60, url="https://stuck.example/")
            others = [pool.run(pow, 2, n, url=f"https://ok{n}.example/") for n in range(20)]
            results = await asyncio.gather(stuck, *others, return_exceptions=True)
            # the pool goes on with a fresh worker
            results.append(await pool.run(pow, 3, 2, url="https://after.example/"))
            return results

    started = time.monotonic()
    stuck, *others, after = asyncio.run(main())
    assert time.monotonic() - started < 30
    assert isinstance(stuck, ParseTimeout)
    assert stuck.url == "https://stuck.example/"
    assert stuck.message == "parsing took longer than 1 s; gave up"
    assert others == [2**n for n in range(20)]
    assert after == 9


def test_a_call_whose_worker_died_under_it_is_run_again(tmp_path: Path) -> None:
    async def main() -> tuple[str, BaseException | str]:
        with ParsePool(1, timeout=30) as pool:
            retried = await pool.run(die_the_first_time, str(tmp_path / "m"), url="https://a/")
            try:
                await pool.run(os.abort, url="https://b/")
            except ParseError as error:
                return retried, error
            return retried, "no error"

    retried, always = asyncio.run(main())
    assert retried == "ran"
    assert isinstance(always, ParseError) and not isinstance(always, ParseTimeout)
    assert "parsing process died" in always.message


# --- end to end ---------------------------------------------------------------------


def rss(title: str, items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{title}</title><link>https://{title.lower()}.example/</link>{items}"
        "</channel></rss>"
    ).encode()


def deep_feed() -> bytes:
    item = (
        "<item><title>A deep entry</title><link>https://deep.example/1</link>"
        "<guid>https://deep.example/1</guid><pubDate>Mon, 16 Nov 2026 09:00:00 GMT</pubDate>"
        f"<description><![CDATA[{nested_divs(LEVELS)}]]></description></item>"
    )
    return rss("Deep", item)


def slow_feed(entries: int = 40_000) -> bytes:
    """Nothing nested, only many entries: seconds of parsing and cleaning."""
    return rss(
        "Slow",
        "".join(
            f"<item><title>Story {n}</title><link>https://slow.example/{n}</link>"
            f"<guid>https://slow.example/{n}</guid>"
            f"<description>&lt;p&gt;Text of story {n}.&lt;/p&gt;</description></item>"
            for n in range(entries)
        ),
    )


def test_poll_once_publishes_the_good_feed_beside_a_deep_and_a_slow_one(tmp_path: Path) -> None:
    with FeedServer() as server:
        server.set("/good.xml", GOOD)
        server.set("/deep.xml", deep_feed())
        server.set("/slow.xml", slow_feed())
        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n"
            "  database: agg.db\n"
            "  output_dir: public\n"
            "  parse_timeout: 3s\n"
            "feeds:\n"
            + "".join(
                f"  - url: {server.url(f'/{name}.xml')}\n    name: {name}\n"
                for name in ("good", "deep", "slow")
            )
        )
        started = time.monotonic()
        run = aggregator(config, "poll", "--once")
        elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert elapsed < 60, elapsed  # the slow feed is cut off after 3 s of work

    rows = status_rows(config, key="name")
    assert rows["good"]["state"] == "ok" and rows["good"]["items"] > 0
    assert rows["deep"]["state"] == "ok" and rows["deep"]["items"] == 1
    assert rows["slow"]["state"] == "error"
    assert rows["slow"]["last_error"] == "parsing took longer than 3 s; gave up"
    assert rows["slow"]["items"] == 0
    assert "slow: error: parsing took longer than 3 s; gave up" in run.stderr

    published = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    entries = {entry.title: entry for entry in published.entries}
    assert "North Korea tests new cruise missile off east coast" in entries
    deep = entries["A deep entry"]
    assert "The deep entry's own words &amp; nothing else." in deep.content[0].value
    assert "<div" not in deep.content[0].value


def test_the_daemon_gives_up_on_a_slow_body_and_serves_and_polls_the_others(
    tmp_path: Path,
) -> None:
    port = free_port()
    with FeedServer() as server:
        server.set("/good.xml", GOOD)
        server.set("/slow.xml", slow_feed())
        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n  database: agg.db\n  output_dir: public\n"
            f"  listen: 127.0.0.1:{port}\n  parse_timeout: 2s\n  interval: 1h\n"
            "feeds:\n"
            f"  - url: {server.url('/slow.xml')}\n    name: slow\n"
            f"  - url: {server.url('/good.xml')}\n    name: good\n"
        )
        daemon = DaemonProcess(config, port)
        try:
            daemon.wait_serving()
            wait_until(
                lambda: "slow: error: parsing took longer than 2 s" in daemon.log,
                60,
                "the slow feed's parse deadline",
            )
            # meanwhile the good feed was parsed by the other worker, and published
            assert b"North Korea tests new cruise missile" in daemon.get("/all.atom").body
            assert daemon.health()["feeds_failing"] == 1
        finally:
            daemon.stop()
    rows = status_rows(config, key="name")
    assert rows["slow"]["state"] == "error" and rows["good"]["state"] == "ok"
    assert "Traceback" not in daemon.log
