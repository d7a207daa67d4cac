import pytest

from aggregator.model import FeedSource, Topic
from aggregator.topics import compile_term, matches_topic, selects_feed


def topic(include=(), exclude=(), feeds=None):
    return Topic(
        slug="t",
        title="T",
        include=tuple(compile_term(t) for t in include),
        exclude=tuple(compile_term(t) for t in exclude),
        feeds=feeds,
    )


@pytest.mark.parametrize(
    ("term", "text", "expected"),
    [
        ("DPRK", "Talks with the DPRK's envoy", True),
        ("DPRK", "DPRKX is a product", False),
        ("DPRK", "XDPRK", False),
        ("DPRK", "dprk", True),
        ("North Korea", "NORTH KOREA said", True),
        ("North Korea", "North\nKorea", True),
        ("North Korea", "North  \t Korea", True),
        ("North Korea", "Northern Korea", False),
        ("North Korea", "North-Korea", False),
        ("C++", "written in C++ today", True),
        ("C++", "written in C++.", True),
        ("C++", "C++x", False),
        ("C++", "C+", False),
        ("U.S.", "the U.S. said", True),
        ("U.S.", "the u.s.", True),
        ("U.S.", "US", False),
        ("a.b", "axb", False),
        ("Pyongyang", "Pyongyang-based", True),
        ("Kim", "Kimchi", False),
        ("/Kim Jong[- ]?Un/", "KIM JONG-UN", True),
        ("/Kim Jong[- ]?Un/", "Kim Jongun", True),
        ("/Kim Jong[- ]?Un/", "Kim Il Sung", False),
        ("/sanction/", "sanctions", True),
        ("  DPRK  ", "the DPRK", True),
    ],
)
def test_term_matching(term, text, expected):
    assert matches_topic(topic(include=[term]), [text]) is expected


def test_term_keeps_its_source():
    assert compile_term("/Kim/").source == "/Kim/"
    assert compile_term("DPRK").source == "DPRK"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty term"),
        ("   ", "empty term"),
        ("//", "empty regular expression"),
        ("/(/", "invalid regular expression: missing ), unterminated subpattern at position 0"),
        ("/[a/", "invalid regular expression: unterminated character set at position 0"),
        ("/a*/", "regular expression matches empty text, so it would match every item"),
    ],
)
def test_unusable_terms_are_rejected(raw, message):
    with pytest.raises(ValueError) as info:
        compile_term(raw)
    assert str(info.value) == message


def test_single_slash_is_a_plain_term():
    assert matches_topic(topic(include=["/"]), ["and / or"])


def test_no_include_matches_everything():
    assert matches_topic(topic(), ["anything"])
    assert matches_topic(topic(), [])


def test_include_needs_one_term_in_one_field():
    t = topic(include=["DPRK", "Pyongyang"])
    assert matches_topic(t, ["weather", "news from Pyongyang"])
    assert not matches_topic(t, ["weather", "sports"])
    assert not matches_topic(t, [])


def test_exclude_wins_over_include():
    t = topic(include=["DPRK"], exclude=["fundraising"])
    assert matches_topic(t, ["DPRK talks"])
    assert not matches_topic(t, ["DPRK talks", "A fundraising dinner"])


def test_exclude_without_include():
    t = topic(exclude=["/sponsor(ed)?/"])
    assert matches_topic(t, ["news"])
    assert not matches_topic(t, ["news", "Sponsored content"])


def test_categories_are_fields_too():
    assert matches_topic(topic(include=["Korea"]), ["Title", "", "", "Asia", "Korea"])


@pytest.mark.parametrize(
    "html",
    [
        "<p>North <b>Korea</b></p>",
        "<p>North</p><p>Korea</p>",
        "North<br/>Korea",
        'North <a href="https://e.org/?q=x">Korea</a>',
        "North&nbsp;Korea",
        "<p>North&#32;Korea</p>",
        "<div><span class='x'>North</span>\n<em>Korea</em></div>",
    ],
)
def test_markup_around_words_is_ignored(html):
    assert matches_topic(topic(include=["North Korea"]), [html])


def test_inline_markup_inside_a_word_does_not_split_it():
    assert matches_topic(topic(include=["Pyongyang"]), ["in Pyong<em>yang</em> today"])


def test_markup_does_not_match_as_text():
    t = topic(include=["href"])
    assert not matches_topic(t, ['<a href="https://e.org/">link</a>'])
    assert matches_topic(topic(include=["DPRK"]), ["the <b>DPRK</b>'s envoy"])


def test_escaped_markup_is_text():
    # entities are decoded after tags are stripped: "&lt;b&gt;" is text the author wrote
    assert matches_topic(topic(include=["DPRK"]), ["&lt;b&gt;DPRK&lt;/b&gt;"])
    assert matches_topic(topic(include=["AT&T"]), ["AT&amp;T earnings"])


def test_selects_all_feeds_without_feeds():
    assert selects_feed(topic(), FeedSource(url="https://a.example/"))


@pytest.mark.parametrize(
    ("feeds", "feed", "expected"),
    [
        (("news",), FeedSource(url="https://a.example/", tags=("news",)), True),
        (("news",), FeedSource(url="https://a.example/", tags=("sport", "news")), True),
        (("Example",), FeedSource(url="https://a.example/", name="Example"), True),
        (("example",), FeedSource(url="https://a.example/", name="Example"), False),
        (("news",), FeedSource(url="https://a.example/", name="Other", tags=("sport",)), False),
        (("news",), FeedSource(url="https://a.example/"), False),
    ],
)
def test_selects_feed_by_name_or_tag(feeds, feed, expected):
    assert selects_feed(topic(feeds=feeds), feed) is expected


def test_display_name_stands_in_only_for_a_missing_name():
    t = topic(feeds=("Own Title",))
    assert selects_feed(t, FeedSource(url="https://a.example/"), display_name="Own Title")
    named = FeedSource(url="https://a.example/", name="Configured")
    assert not selects_feed(t, named, display_name="Own Title")


def test_a_catastrophic_regex_is_given_up_on_not_searched_for_hours() -> None:
    import time

    from aggregator.topics import MAX_TIMEOUTS, SEARCH_TIMEOUT, TopicMatcher

    matcher = TopicMatcher(topic(include=["/(a|aa)+$/", "Pyongyang"]))
    hostile = "a" * 40 + "!"  # backtracks for about 2^40 steps
    started = time.monotonic()
    results = [matcher.matches([hostile, "news from Pyongyang"]) for _ in range(20)]
    elapsed = time.monotonic() - started
    assert all(results)  # the other term still matches
    assert matcher.slow_terms == ["/(a|aa)+$/"]
    assert elapsed < (MAX_TIMEOUTS + 1) * SEARCH_TIMEOUT * 4 + 1.0  # given up after a few
    assert not TopicMatcher(topic(include=["/(a|aa)+$/"])).matches([hostile])
