"""Parsing has a deadline: markup that would cost the parsers time growing with its square
never reaches them, and a body whose parsing and cleaning takes longer than
`parse_timeout` fails alone, its worker killed.

100,000 nested <div> in one entry (a 1.1 MB feed) used to cost 21.6 s in nh3, growing
with the square of the depth; one <p> with 300,000 attributes 20 s; 1,000,000 "&amp;" in
one paragraph 7 s; a <channel> with 30,000 attributes 31 s in feedparser (300,000: hours),
and so did 10,000 <category> in one item 1.3 s (100,000: hours). A body of tens of
thousands of entries is slow without any of these, and only a deadline bounds it.
"""

from __future__ import annotations

import asyncio
import html
import io
import os
import re
import signal
import time
import xml.sax.expatreader
from pathlib import Path
from typing import Any

import feedparser
import nh3
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aggregator import clean, nesting, parse
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
        patched.setattr(clean, "exceeds_limits", lambda html_text: False)  # as before
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


# --- many attributes, costly text ---------------------------------------------------

ATTRIBUTES = 300_000


def crowded_tag(count: int = ATTRIBUTES, name: str = "p") -> str:
    return f"<{name} " + " ".join(f'a{n}="{n}"' for n in range(count)) + ">"


def test_a_tag_with_300000_attributes_keeps_its_text_and_no_markup() -> None:
    crowded = f"<div>{crowded_tag()}{DEEP_WORDS}</p><p>More.</p></div>"
    started = time.monotonic()
    sanitized = clean.sanitize_html(crowded, "https://example.org/")
    cleaned = clean.clean_html(crowded, "https://example.org/")
    text = clean.html_to_text(crowded)
    assert time.monotonic() - started < GUARD_SECONDS  # nh3 took 20 s on one of these
    assert sanitized == cleaned == "The deep entry's own words &amp; nothing else. More."
    assert text == "The deep entry's own words & nothing else. More."


@pytest.mark.parametrize(
    ("html_text", "crowded"),
    [
        (crowded_tag(4), True),
        (crowded_tag(3), False),
        ("<p a b c d>", True),  # without values
        ('<p a="1"b="2"c=\'3\'d=4>', True),  # no space needed after a quoted value
        ("<p a/b/c/d>", True),
        ('<p title="a b c d e f">', False),  # a value is one attribute, whatever it holds
        ('<p title="<b c d e>">', False),
        ("</p a b c d>", True),  # end tags are read with their attributes too
        ("text <p a b c d", True),  # ... and a tag cut off by the end of the text
        ("<!-- <p a b c d> -->", False),
        ("<script><p a b c d></script>", False),
        ("<textarea><p a b c d></textarea>", False),
        ("<script><!--<script></script><p a b c d></script>", False),  # double escaped
        ("<script><!--</script><p a b c d>", True),
        ("<svg><style><p a b c d></style></svg>", True),  # markup in SVG: p leaves it
        ("<svg><style><x a b c d></style></svg>", True),  # ... style is no raw text there
        ("<svg><x a b c></svg>", False),
        ("<noscript><x a b c d></noscript>", True),  # markup to libxml2, text to html5ever
        ('<noscript><x a="</noscript><p a b c d>"></noscript>', True),
    ],
)
def test_the_attribute_scan_reads_tags_as_the_tokenizers_do(html_text: str, crowded: bool) -> None:
    assert nesting.has_crowded_tag(html_text, limit=3) is crowded
    assert nesting.has_crowded_tag(html_text.upper(), limit=3) is crowded


@settings(max_examples=300, deadline=None)
@given(st.lists(_soup_token(), min_size=10, max_size=120))
def test_the_one_pass_attribute_scan_agrees_with_the_scan_that_follows_the_tree(
    tokens: list[str],
) -> None:
    """On tag soup, the regular expression finds a crowded tag where the depth scan, which
    follows html5ever's tree, does; and more only where libxml2 reads <noscript> as markup."""
    html_text = "".join(tokens)
    for limit in (0, 1, 2):
        crowded = nesting.has_crowded_tag(html_text, limit)
        scanned = nesting._scan(html_text, len(html_text), limit)
        if "noscript" in html_text.lower():
            assert crowded or not scanned, html_text
        else:
            assert crowded is scanned, html_text


def test_real_attributes_are_sanitized_as_before(monkeypatch: Any) -> None:
    html_text = article(30).replace(
        "<p>Talks", '<p class="lead" id="t" data-a="1" data-b="2" style="x" title="t">Talks'
    )
    assert not nesting.exceeds_limits(html_text)
    with monkeypatch.context() as patched:
        patched.setattr(clean, "exceeds_limits", lambda html_text: False)
        before = clean.clean_html(html_text, "https://example.org/")
    assert clean.clean_html(html_text, "https://example.org/") == before


def test_a_million_ampersands_in_one_paragraph_keep_their_text() -> None:
    costly = "<p>" + "&amp;" * 1_000_000 + "</p><p>The end.</p>"
    started = time.monotonic()
    cleaned = clean.clean_html(costly, "https://example.org/")
    assert time.monotonic() - started < GUARD_SECONDS  # nh3 took 7 s
    assert cleaned == "&amp;" * 1_000_000 + " The end."


def test_text_cost_counts_each_text_node_apart_where_it_can() -> None:
    paragraph = "<p>" + "Tom &amp; Jerry &#8217;s &nbsp; caf\xe9 \xa9 " * 50 + "</p>"
    assert not nesting.has_costly_text(paragraph * 2000)  # 1.2 MB, in many nodes
    assert nesting.has_costly_text("<p>" + "&amp; " * 100_000 + "</p>")
    assert nesting.has_costly_text("<p>" + "\xa9 " * 100_000 + "</p>")  # U+0080–U+00BF
    assert not nesting.has_costly_text("<p>" + "\xe9 " * 100_000 + "</p>")
    # nodes joined by html5ever: ignored end tags, text moved out of a table, raw text
    assert nesting.has_costly_text("<p>" + "&amp;</b>" * 50_000 + "</p>")
    assert nesting.has_costly_text("<table>" + "&amp;<tr>" * 50_000 + "</table>")
    assert nesting.has_costly_text("<textarea>" + "&amp;<p>" * 50_000 + "</textarea>")
    assert nesting.has_costly_text('<p title="' + "&amp;" * 50_000 + '">x</p>')


def test_the_limits_leave_every_real_feed_alone() -> None:
    corpus = ROOT.parent / "shared" / "realworld-feeds"
    if not (corpus / "MANIFEST.tsv").exists():
        pytest.skip(f"corpus not present at {corpus}")
    fragments = 0
    for line in (corpus / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines():
        if line.startswith(("#", "file\t")):
            continue
        body = (corpus / line.split("\t")[0]).read_bytes()
        try:
            feed = parse.parse_feed(body, {}, "https://example.org/")
        except ParseError as error:
            assert "attributes" not in error.message, line
            continue
        for entry in feed.entries:
            for html_text in (entry.content_html, entry.summary_html):
                fragments += 1
                assert not nesting.exceeds_limits(html_text), line
    assert fragments > 3000


# --- the XML ------------------------------------------------------------------------


def channel_with_attributes(count: int) -> bytes:
    attributes = " ".join(f'a{n}="{n}"' for n in range(count))
    return rss("Crowded", "").replace(b"<channel>", f"<channel {attributes}>".encode(), 1)


def test_an_element_with_too_many_attributes_is_refused_before_feedparser() -> None:
    started = time.monotonic()
    with pytest.raises(ParseError) as refused:
        parse.parse_feed(channel_with_attributes(ATTRIBUTES), {}, "https://crowded.example/")
    assert time.monotonic() - started < GUARD_SECONDS  # it took hours
    assert refused.value.message == "not a feed: an element has more than 256 attributes"
    assert parse.parse_feed(channel_with_attributes(256), {}, "https://x.example/").title == (
        "Crowded"
    )
    unquoted = rss("Crowded", "").replace(
        b"<channel>", b"<channel " + b" ".join(b"a%d=%d" % (n, n) for n in range(257)) + b">"
    )
    with pytest.raises(ParseError):
        parse.parse_feed(unquoted, {}, "https://x.example/")


def test_markup_in_text_cdata_and_comments_is_no_element() -> None:
    tag = crowded_tag(1000)
    items = (
        f"<item><title>One</title><link>https://x.example/1</link>"
        f"<description><![CDATA[{tag}One's text.]]></description></item>"
        f"<!-- {tag} -->"
        f"<item><title>Two</title><link>https://x.example/2</link>"
        f"<description>{html.escape(tag)}Two's text.</description></item>"
    )
    feed = parse.parse_feed(rss("Fine", items), {}, "https://x.example/")
    assert [entry.title for entry in feed.entries] == ["One", "Two"]


def test_many_attributes_take_feedparser_time_in_proportion() -> None:
    """Under the limit (or in a UTF-16 body, which the byte scan does not read), each
    attribute costs feedparser a lookup, no longer a look through all the others."""
    text = channel_with_attributes(ATTRIBUTES).decode().replace("utf-8", "utf-16")
    started = time.monotonic()
    feed = parse.parse_feed(text.encode("utf-16"), {}, "https://crowded.example/")
    assert time.monotonic() - started < GUARD_SECONDS
    assert feed.title == "Crowded"


def test_attributes_by_qualified_name_read_as_the_standard_library_reads_them(
    monkeypatch: Any,
) -> None:
    body = (
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom" '
        'xmlns:media="http://search.yahoo.com/mrss/" xml:lang="en" xml:base="https://x.example/">'
        "<title>T</title><entry><id>urn:1</id><title>E</title>"
        '<link rel="alternate" href="/1" hreflang="en" type="text/html" title="one"/>'
        '<media:content url="https://x.example/a.jpg" medium="image" '
        + " ".join(f'data-{n}="{n}"' for n in range(40))
        + "/></entry></feed>"
    ).encode()

    def read() -> str:
        return repr(feedparser.parse(io.BytesIO(body)))

    ours = read()
    monkeypatch.setattr(
        parse._BufferedExpatParser,
        "start_element_ns",
        xml.sax.expatreader.ExpatParser.start_element_ns,
    )
    assert read() == ours


def test_categories_are_kept_as_feedparser_keeps_them_in_proportional_time(
    monkeypatch: Any,
) -> None:
    item = (
        "<item><title>Tagged</title><link>https://x.example/1</link>"
        '<category>News</category><category domain="d">News</category><category>News</category>'
        '<category domain="d">Sport</category><category>news</category>'
        '<itunes:category text="Arts"><itunes:category text="Design"/></itunes:category>'
        '<itunes:category text="Arts"/><media:keywords>a, b, a</media:keywords></item>'
    )
    body = rss("Tags", item).replace(
        b'<rss version="2.0">',
        b'<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd" '
        b'xmlns:media="http://search.yahoo.com/mrss/">',
    )

    def tags() -> Any:
        return feedparser.parse(io.BytesIO(body)).entries[0].tags

    ours = tags()
    with monkeypatch.context() as patched:
        patched.setattr(feedparser.mixin._FeedParserMixin, "_add_tag", _feedparsers_add_tag)
        assert tags() == ours
    assert len(ours) == 8

    many = "".join(f"<category>Topic {n}</category>" for n in range(100_000))
    started = time.monotonic()
    feed = parse.parse_feed(rss("Tags", f"<item><title>T</title>{many}</item>"), {}, "https://x/")
    assert time.monotonic() - started < GUARD_SECONDS  # hours, before
    assert len(feed.entries[0].categories) == 100_000


def _feedparsers_add_tag(self: Any, term: Any, scheme: Any, label: Any) -> None:
    """feedparser 6.0's own `_add_tag`, which the parser module replaces."""
    context = self._get_context()
    tags = context.setdefault("tags", [])
    if (not term) and (not scheme) and (not label):
        return
    value = feedparser.util.FeedParserDict(term=term, scheme=scheme, label=label)
    if value not in tags:
        tags.append(value)


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


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_quick_bodies_are_parsed_by_one_worker_and_a_backlog_starts_another() -> None:
    async def main() -> tuple[set[int], set[int]]:
        with ParsePool(2, timeout=30) as pool:
            pool.GROW_AFTER = 1.0  # room for a loaded machine; the rule is what is tested
            # bodies queued while the first worker starts are no reason for a second
            quick = await asyncio.gather(
                *(pool.run(pid_after, 0.001, url=f"https://q{n}.example/") for n in range(30))
            )
            # a backlog that outlasts the first worker's start-up is
            slow = await asyncio.gather(
                *(pool.run(pid_after, 0.2, url=f"https://s{n}.example/") for n in range(12))
            )
            return set(quick), set(slow)

    quick, slow = asyncio.run(main())
    assert len(quick) == 1
    assert len(slow) == 2 and quick < slow


def test_a_caller_cancelled_while_waiting_for_a_worker_leaves_none_taken() -> None:
    async def main() -> list[int]:
        with ParsePool(1, timeout=30) as pool:
            busy = asyncio.ensure_future(pool.run(pid_after, 0.5, url="https://busy.example/"))
            waiting = asyncio.ensure_future(pool.run(pid_after, 0, url="https://gone.example/"))
            await asyncio.sleep(0.1)
            waiting.cancel()
            first = await busy
            # the worker was handed on to no one: the next call gets it
            after = await asyncio.wait_for(pool.run(pid_after, 0, url="https://b.example/"), 20)
            return [first, after]

    first, after = asyncio.run(main())
    assert first == after


def test_workers_killed_while_idle_are_replaced() -> None:
    async def main() -> tuple[int, int]:
        with ParsePool(2, timeout=30) as pool:
            pool.GROW_AFTER = 0.05
            pids = set(
                await asyncio.gather(
                    *(pool.run(pid_after, 0.3, url=f"https://{n}.example/") for n in range(8))
                )
            )
            for pid in pids:  # the OOM killer, say
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.5)
            after = await asyncio.wait_for(pool.run(pid_after, 0, url="https://b.example/"), 20)
            return len(pids), after

    killed, after = asyncio.run(main())
    assert killed == 2
    assert after > 0


def test_a_body_waiting_for_a_worker_when_the_pool_stops_fails_with_a_parse_error() -> None:
    async def main() -> list[Any]:
        pool = ParsePool(1, timeout=30)
        busy = asyncio.ensure_future(pool.run(pid_after, 0.5, url="https://busy.example/"))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(pool.run(pid_after, 0, url="https://wait.example/"))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(pool.shutdown, False)  # as Poller.close calls it
        return list(
            await asyncio.wait_for(asyncio.gather(busy, waiting, return_exceptions=True), 20)
        )

    busy, waiting = asyncio.run(main())
    assert isinstance(busy, int)  # what was running finished
    assert isinstance(waiting, ParseError)
    assert waiting.url == "https://wait.example/"
    assert waiting.message == "the parse workers were stopped"


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


@pytest.mark.slow  # end to end: the real command or daemon
def test_poll_once_publishes_the_good_feed_beside_a_deep_and_a_slow_one(tmp_path: Path) -> None:
    with FeedServer() as server:
        server.set("/good.xml", GOOD)
        server.set("/deep.xml", deep_feed())
        server.set("/slow.xml", slow_feed())
        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n  per_host_spacing: 0\n"
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


def attribute_bomb_feed() -> bytes:
    """One <p> with 300,000 attributes in an item's description, escaped (7.8 MB)."""
    item = (
        "<item><title>A crowded entry</title><link>https://crowded.example/1</link>"
        "<guid>https://crowded.example/1</guid>"
        f"<description>{html.escape(crowded_tag() + DEEP_WORDS + '</p>')}</description></item>"
    )
    return rss("Crowded", item)


def costly_text_feed() -> bytes:
    """A million "&amp;" in one paragraph (escaped again: 9 MB)."""
    item = (
        "<item><title>A costly entry</title><link>https://costly.example/1</link>"
        "<guid>https://costly.example/1</guid>"
        f"<description>&lt;p&gt;{'&amp;amp;' * 1_000_000}&lt;/p&gt;</description></item>"
    )
    return rss("Costly", item)


def tagged_feed() -> bytes:
    """100,000 categories in one item (2.7 MB)."""
    categories = "".join(f"<category>Topic {n}</category>" for n in range(100_000))
    item = (
        "<item><title>A tagged entry</title><link>https://tagged.example/1</link>"
        f"<guid>https://tagged.example/1</guid>{categories}<description>Tags.</description></item>"
    )
    return rss("Tagged", item)


@pytest.mark.slow  # end to end: the real command or daemon
def test_poll_once_publishes_the_good_feed_beside_attribute_and_text_bombs(
    tmp_path: Path,
) -> None:
    """At the default parse_timeout (60 s): the two workers used to be stuck on these for
    20 s to a minute each (the last three all the minute), the good feed waiting behind."""
    with FeedServer() as server:
        server.set("/good.xml", GOOD)
        server.set("/crowded.xml", attribute_bomb_feed())
        server.set("/channel.xml", channel_with_attributes(ATTRIBUTES))
        server.set("/costly.xml", costly_text_feed())
        server.set("/tagged.xml", tagged_feed())
        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n  per_host_spacing: 0\n"
            "  database: agg.db\n  output_dir: public\n  retention: 36500d\n"
            "feeds:\n"
            + "".join(
                f"  - url: {server.url(f'/{name}.xml')}\n    name: {name}\n"
                for name in ("crowded", "channel", "costly", "tagged", "good")
            )
        )
        started = time.monotonic()
        run = aggregator(config, "poll", "--once")
        elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert elapsed < 40, elapsed  # a few seconds; a minute or more before

    rows = status_rows(config, key="name")
    assert rows["good"]["state"] == "ok" and rows["good"]["items"] > 0
    assert rows["crowded"]["state"] == "ok" and rows["crowded"]["items"] == 1
    assert rows["costly"]["state"] == "ok" and rows["costly"]["items"] == 1
    assert rows["tagged"]["state"] == "ok" and rows["tagged"]["items"] == 1
    assert rows["channel"]["state"] == "error"
    assert rows["channel"]["last_error"] == "not a feed: an element has more than 256 attributes"

    published = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    entries = {entry.title: entry for entry in published.entries}
    assert "North Korea tests new cruise missile off east coast" in entries
    crowded = entries["A crowded entry"].content[0].value
    assert crowded == "The deep entry's own words &amp; nothing else."
    assert entries["A costly entry"].content[0].value.startswith("&amp;&amp;")


@pytest.mark.slow  # end to end: the real command or daemon
def test_the_daemon_gives_up_on_a_slow_body_and_serves_and_polls_the_others(
    tmp_path: Path,
) -> None:
    port = free_port()
    with FeedServer() as server:
        server.set("/good.xml", GOOD)
        server.set("/slow.xml", slow_feed())
        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n  per_host_spacing: 0\n  database: agg.db\n  output_dir: public\n"
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


#: what the feed-level scans read: markup, comments, CDATA, PIs, spaces, "base"
_XML_PIECES = st.lists(
    st.sampled_from(
        [
            *(b"<", b">", b"/", b"=", b'"', b"'", b" ", b"\t", b"a", b"-", b"]", b"?", b"!"),
            *(b"<!--", b"-->", b"--", b"<![CDATA[", b"]]>", b"<?", b"?>", b"<a", b"xml:"),
            *(b"base", b" base=", b" xml:base =", b"\n", b"\x80"),
        ]
    ),
    max_size=40,
).map(b"".join)


def _uncrowded(limit: int, lazy: bool) -> re.Pattern[bytes]:
    """parse._UNCROWDED_ELEMENTS with another limit; `lazy`: as it was first written."""
    pattern = parse._UNCROWDED_ELEMENTS.pattern
    assert b"{0,256}" in pattern
    pattern = pattern.replace(b"{0,256}", b"{0,%d}" % limit)
    if lazy:
        sections = [
            (rb"<!--(?:[^-]++|-(?!->))*+(?:-->|\Z)", rb"<!--.*?(?:-->|\Z)"),
            (rb"<!\[CDATA\[(?:[^\]]++|\](?!\]>))*+(?:\]\]>|\Z)", rb"<!\[CDATA\[.*?(?:\]\]>|\Z)"),
            (rb"<\?(?:[^?]++|\?(?!>))*+(?:\?>|\Z)", rb"<\?.*?(?:\?>|\Z)"),
        ]
        for written_out, plain in sections:
            assert written_out in pattern
            pattern = pattern.replace(written_out, plain)
    return re.compile(pattern, re.VERBOSE | re.DOTALL)


@settings(max_examples=2000)
@given(_XML_PIECES, st.integers(0, 5))
# sections with near ends in them, then an element past the limit
@example(b"<!-- -- - -> <a base=", 0)
@example(b"<![CDATA[ ]] ] ]> <a base=", 0)
@example(b"<? ? > <a base=", 0)
@example(b" xml:base=", 0)
def test_the_feed_scans_read_as_their_plain_patterns(body: bytes, limit: int) -> None:
    """The written-out sections of _UNCROWDED_ELEMENTS end where `.*?` ended them, and
    the search for xml:base finds what the pattern's own search finds."""
    ours, plain = _uncrowded(limit, lazy=False), _uncrowded(limit, lazy=True)
    assert ours.match(body).end() == plain.match(body).end()  # type: ignore[union-attr]
    for start, end in ((0, len(body)), (1, len(body) - 1), (3, len(body) // 2)):
        expected = parse._BASE_ATTRIBUTE.search(body, start, end) is not None
        assert parse._has_base_attribute(body, start, end) == expected
