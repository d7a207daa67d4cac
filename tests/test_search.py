"""Search: the query language (search.py), ranking and narrowing (Store.search_items,
publish.search_items), `aggregator search`, and /search on the daemon."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree, html

from aggregator import cli, publish, render
from aggregator.config import parse_config
from aggregator.daemon import Daemon
from aggregator.errors import QueryError, StoreError
from aggregator.model import Config
from aggregator.search import (
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    MAX_TERMS,
    make_request,
    parse_query,
)
from aggregator.store import Store
from aggregator.timeutil import to_iso, utcnow
from tests.feedserver import FeedServer
from tests.test_daemon import Story, free_port, request, rss, write_config
from tests.test_daemon_inprocess import run_driven
from tests.test_store import NOW, make_item, save

A, B, C = "https://a.example/feed", "https://b.example/feed", "https://c.example/feed"
#: the command searches relative to the clock: its stories are recent
RECENT = utcnow()


# --- the query language ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("korea", '("korea")'),
        ("north korea", '("north") AND ("korea")'),
        ('"north korea"', '("north korea")'),
        ('"north   korea" talks', '("north korea") AND ("talks")'),
        ("sanction*", '("sanction"*)'),
        ('"north kor"*', '("north kor"*)'),
        ("korea -sport", '(("korea")) NOT ("sport")'),
        ('korea -"world cup" -sport', '(("korea")) NOT ("world cup" OR "sport")'),
        ("nuclear OR missile", '("nuclear" OR "missile")'),
        ("korea nuclear OR missile", '("korea") AND ("nuclear" OR "missile")'),
        ("a OR b OR c d", '("a" OR "b" OR "c") AND ("d")'),
        ("e-mail", '("e-mail")'),  # a dash inside a word is no exclusion
        ("or and not", '("or") AND ("and") AND ("not")'),  # lower case: words
        ('"unclosed phrase', '("unclosed phrase")'),
        ("café Zürich", '("café") AND ("Zürich")'),
        ("NEAR(a b)", '("NEAR(a") AND ("b)")'),
        ("title:korea", '("title:korea")'),
        ("^korea", '("^korea")'),
        ("korea * ! --", '("korea")'),  # no letters: dropped
        ("a\x00b\x1b[31m", '("a") AND ("b") AND ("[31m")'),
    ],
)
def test_queries_translate_to_quoted_fts5(query: str, match: str) -> None:
    assert parse_query(query).match() == match


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ('"', "no word"),
        ("*", "no word"),
        ("- -- !!", "no word"),
        ("-sport", "only excludes"),
        ('-"world cup"', "only excludes"),
        ("OR", "OR must stand between"),
        ("korea OR", "OR must stand between"),
        ("OR korea", "OR must stand between"),
        ("korea OR OR sport", "OR must stand between"),
        ("korea OR -sport", "cannot be one side of OR"),
        ("korea -sport OR golf", "OR must stand between"),
        ("k*", "prefix needs at least 2"),
        ('"north k"*', "prefix needs at least 2"),
        ("x" * (MAX_QUERY_CHARS + 1), "too long"),
        (" ".join(["word"] * (MAX_TERMS + 1)), "at most 20"),
        ("korea \udcff", "not valid text"),
    ],
)
def test_malformed_queries_are_errors_with_a_message(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(query)


@pytest.fixture(scope="module")
def fts() -> Iterator[sqlite3.Connection]:
    """An FTS5 table like the store's (unicode61), a few rows in it."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(title, text)")
    db.execute("INSERT INTO t VALUES ('North Korea talks', 'the DPRK said, via e-mail, in C++')")
    yield db
    db.close()


HOSTILE = '"*-():^ORNEAR AND NOT{}+.,\\\x00\u202e\u00e9\u4e2d\U0001f600 \t\n'


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(HOSTILE + "abkx"), max_size=60))
def test_whatever_is_typed_is_an_error_or_an_expression_fts5_runs(
    fts: sqlite3.Connection, query: str
) -> None:
    try:
        match = parse_query(query).match()
    except QueryError:
        return
    fts.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY rank", [match]).fetchall()


@pytest.mark.parametrize(
    "query",
    ['NEAR("north" "korea")', "title:north", "north AND korea", "north NOT korea", "^north"],
)
def test_fts5_syntax_typed_by_a_user_is_only_text(fts: sqlite3.Connection, query: str) -> None:
    fts.execute("SELECT 1 FROM t WHERE t MATCH ?", [parse_query(query).match()]).fetchall()


def test_a_request_checks_topic_span_and_limit() -> None:
    config = config_with_topics()
    request = make_request(config.topics, "korea", "asia", "7d", "5")
    assert request.topic is not None and request.topic.slug == "asia"
    assert request.since == timedelta(days=7) and request.limit == 5
    assert request.parameters() == [
        ("q", "korea"),
        ("topic", "asia"),
        ("since", "7d"),
        ("limit", "5"),
    ]
    assert request.title() == "Search: korea in Asia, last 7d"
    assert make_request(config.topics, "korea", "", "").topic is None
    with pytest.raises(QueryError, match="no topic 'nope'; the topics are: asia, quiet"):
        make_request(config.topics, "korea", "nope")
    with pytest.raises(QueryError, match="since: expected a duration"):
        make_request(config.topics, "korea", since="a week")
    for limit in ("0", str(MAX_LIMIT + 1), "-1", "²", "9" * 20, 0):
        with pytest.raises(QueryError, match="limit"):
            make_request(config.topics, "korea", limit=limit)


# --- ranking and narrowing in the store -----------------------------------------------------


CONFIG = f"""\
settings:
  per_host_spacing: 0
  database: "{{database}}"
  listen: ""
topics:
  asia:
    title: Asia
    include: [korea, japan]
    exclude: [football]
  quiet:
    title: Quiet
    feeds: [quiet]
feeds:
  - url: {A}
    name: Alpha
  - url: {B}
    name: Beta
    tags: [quiet]
"""


def config_with_topics() -> Config:
    return parse_config(CONFIG.format(database=":memory:"), Path("/tmp/feeds.yaml"))


def fill(store: Store, now: datetime = NOW) -> None:
    """Stories about Korea: in a title, only in a text, excluded by a topic, old, quiet;
    published an hour before `now` (the old one a month before)."""
    hour_ago = {"published": now - timedelta(hours=1), "updated": now - timedelta(hours=1)}
    save(
        store,
        make_item(A, "title", title="Korea launches a satellite", **hour_ago),
        make_item(
            A, "text", text="Officials in Seoul said Korea " + "filler " * 30 + "end", **hour_ago
        ),
        make_item(A, "football", title="Korea wins the football final", **hour_ago),
        make_item(A, "old", title="Korea in history", published=now - timedelta(days=30)),
        now=now,
    )
    save(store, make_item(B, "quiet", title="Quiet news from Korea", **hour_ago), now=now)
    save(store, make_item(C, "unconfigured", title="Korea seen by a removed feed"), now=now)
    store.index_for_search()


@pytest.fixture
def store() -> Iterator[Store]:
    with Store.open(":memory:") as s:
        fill(s)
        yield s


def titles(store: Store, query: str, **options: str) -> list[str]:
    config = config_with_topics()
    request = make_request(config.topics, query, **options)
    return [item.title for item, _ in publish.search_items(store, config, request, NOW)]


def test_a_title_match_ranks_above_a_text_only_match(store: Store) -> None:
    found = titles(store, "korea")
    assert found.index("Korea launches a satellite") < found.index("Title text")
    hits = publish.search_items(
        store, config_with_topics(), make_request((), "korea satellite"), NOW
    )
    [(item, score)] = hits
    assert item.title == "Korea launches a satellite" and score > 0


def test_stories_of_feeds_no_longer_configured_are_not_found(store: Store) -> None:
    assert "Korea seen by a removed feed" not in titles(store, "korea")
    assert titles(store, "removed") == []


def test_phrase_prefix_exclusion_and_or(store: Store) -> None:
    assert titles(store, '"football final"') == ["Korea wins the football final"]
    assert titles(store, '"final football"') == []
    assert titles(store, "satel*") == ["Korea launches a satellite"]
    assert "Korea wins the football final" not in titles(store, "korea -football")
    assert sorted(titles(store, "satellite OR history")) == [
        "Korea in history",
        "Korea launches a satellite",
    ]


def test_topic_narrows_to_its_feeds_and_terms(store: Store) -> None:
    asia = titles(store, "korea", topic="asia")
    assert "Korea wins the football final" not in asia  # the topic's exclude
    assert "Korea launches a satellite" in asia
    assert titles(store, "korea", topic="quiet") == ["Quiet news from Korea"]  # its feeds


def test_since_keeps_the_recent_stories(store: Store) -> None:
    assert "Korea in history" in titles(store, "korea")
    assert "Korea in history" not in titles(store, "korea", since="7d")
    assert titles(store, "history", since="1h") == []  # NOW is an hour after the others


def test_limit_bounds_the_results(store: Store) -> None:
    assert len(titles(store, "korea", limit="2")) == 2


def test_stories_stored_since_the_last_index_are_found_once_indexed(store: Store) -> None:
    save(store, make_item(A, "late", title="Late news on Korea"))
    assert "Late news on Korea" not in titles(store, "late")
    assert store.index_pending() == 1
    assert store.index_pending() == 0
    assert titles(store, "late") == ["Late news on Korea"]


def test_a_search_past_its_time_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="took longer"):
        store.search_items('"korea"', limit=5, display_names={}, seconds=-1)


# --- rendering -------------------------------------------------------------------------


def search_output(store: Store, extension: str, query: str = "korea", **options: str) -> bytes:
    config = config_with_topics()
    request = make_request(config.topics, query, **options)
    return publish.render_search(store, config, request, extension, NOW)


def test_search_feeds_parse_and_link_to_themselves_with_the_query(store: Store) -> None:
    base = "http://127.0.0.1:8080/"
    atom = feedparser.parse(search_output(store, "atom", "korea satellite", since="7d"))
    assert not atom.bozo
    assert atom.feed.title == "Search: korea satellite, last 7d"
    self_link = next(link.href for link in atom.feed.links if link.rel == "self")
    assert self_link == base + "search.atom?q=korea+satellite&since=7d"
    assert [e.title for e in atom.entries] == ["Korea launches a satellite"]
    rss_feed = feedparser.parse(search_output(store, "rss", "korea satellite"))
    assert not rss_feed.bozo and rss_feed.feed.link == base + "search?q=korea+satellite"
    feed = json.loads(search_output(store, "json", "korea satellite"))
    assert feed["feed_url"] == base + "search.json?q=korea+satellite"
    assert [item["title"] for item in feed["items"]] == ["Korea launches a satellite"]


def test_the_search_page_escapes_the_query_and_links_its_feeds(store: Store) -> None:
    body = search_output(store, "html", 'korea "<script>alert(1)</script>')
    assert b"<script>" not in body
    page = html.fromstring(body)
    assert find(page, "//h1")[0].text_content().startswith("Search: korea")
    assert page.xpath("//input[@name='q']/@value") == ['korea "<script>alert(1)</script>']
    feeds = find(page, "//link[@rel='alternate']/@href")
    assert feeds[0].startswith("search.atom?q=korea+%22%3Cscript%3E")
    assert page.xpath("//p[@class='empty']")  # no story has that phrase


def find(page: Any, path: str) -> list[Any]:
    """`page.xpath(path)`, typed for the checks."""
    found = page.xpath(path)
    assert isinstance(found, list)
    return found


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def cli_config(tmp_path: Path, hermetic: None) -> Path:
    """CONFIG's feeds and topics, the database filled (one story stored but not indexed)."""
    path = tmp_path / "feeds.yaml"
    path.write_text(CONFIG.format(database="agg.db"))
    with Store.open(tmp_path / "agg.db") as store:
        fill(store, RECENT)
        # stored, not yet indexed: the command indexes it
        pending = make_item(A, "pending", title="Pending story about Korea", published=RECENT)
        save(store, pending, now=RECENT)
    return path


def test_search_prints_one_block_per_story(
    cli_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-c", str(cli_config), "search", "korea", "satellite"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "Korea launches a satellite",
        f"  Alpha · {(RECENT - timedelta(hours=1)):%Y-%m-%d %H:%M} UTC",
        "  https://example.org/title",
    ]


def test_search_json_has_the_contract_fields(
    cli_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["-c", str(cli_config), "search", "korea", "--json", "--topic", "asia", "--since", "7d"]
    assert cli.main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert {"title", "url", "published", "id", "source", "excerpt", "score"} <= set(results[0])
    found = [r["title"] for r in results]
    assert "Pending story about Korea" in found  # indexed by the command
    assert "Korea wins the football final" not in found and "Korea in history" not in found
    assert results[0]["title"] == "Korea launches a satellite"
    assert results[0]["published"] == to_iso(RECENT - timedelta(hours=1))
    assert results[0]["source"] == "Alpha"
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_search_with_no_match_exits_0(cli_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-c", str(cli_config), "search", "nothing-like-it"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no stories match" in captured.err
    assert cli.main(["-c", str(cli_config), "search", "--json", "nothing"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--", "-sport"], "only excludes"),
        (["korea -sport OR golf"], "OR must stand between"),
        (['"'], "no word"),
        (["korea", "--topic", "nope"], "no topic 'nope'"),
        (["korea", "--since", "yesterday"], "since: expected a duration"),
        (["korea", "--limit", "500"], "limit"),
    ],
)
def test_search_exits_2_with_a_message(
    cli_config: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli.main(["-c", str(cli_config), "search", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aggregator: search: ") and message in err


def test_an_exclusion_first_needs_quotes_or_a_double_dash(
    cli_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["-c", str(cli_config), "search", "-sport", "korea"])
    assert exit_.value.code == 2  # argparse takes it for an option
    assert cli.main(["-c", str(cli_config), "search", "-football korea", "--json"]) == 0
    found = [r["title"] for r in json.loads(capsys.readouterr().out)]
    assert found and "Korea wins the football final" not in found


# --- the daemon: /search ----------------------------------------------------------------


def story(key: str, title: str, text: str) -> Story:
    from datetime import UTC, datetime

    return Story(
        link=f"https://news.example/{key}",
        title=title,
        text=text,
        published=(datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0),
    )


STORIES = [
    story("sat", "Korea launches a satellite", "A rocket lifted off from the coast " * 5),
    story("talks", "Trade talks resume", "Negotiators from Korea and Japan met again " * 5),
    story("cup", "Football final tonight", "The stadium is full for the cup final " * 5),
]


def test_the_daemon_serves_search_pages_and_feeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_path = tmp_path / "feeds.yaml"
    port = free_port()
    caplog.set_level(logging.INFO, logger="aggregator")
    with FeedServer() as server:
        server.set("/a.rss", rss("A", STORIES))
        write_config(
            config_path,
            port,
            [server.url("/a.rss")],
            interval="1h",
            topics="  asia:\n    title: Asia\n    include: [rocket]\n",
        )
        daemon = Daemon(config_path)
        replies: dict[str, tuple[int, dict[str, str], bytes]] = {}

        async def get(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
            reply = await asyncio.to_thread(request, port, path, "GET", headers)
            return reply.status, dict(reply.headers), reply.body

        async def drive() -> None:
            # the render after a burst of polls adds the new stories to the index
            for _ in range(200):
                _, _, body = await get("/search.json?q=korea")
                if len(json.loads(body)["items"]) == 2:
                    break
                await asyncio.sleep(0.05)
            for path in (
                "/search?q=korea",
                "/search.atom?q=korea&topic=asia",
                "/search.json?q=korea",
                "/search.rss?q=korea",
                "/search",
                '/search?q="',
                "/search.atom?q=-korea",
                "/search.json?q=korea&topic=nope",
                "/search.json?q=korea&since=soon",
                "/search.json?q=" + urllib.parse.quote("NEAR(korea*"),
                "/search.json?q=" + "x" * 2000,
                "/search.xml?q=korea",
                "/search.atom",
            ):
                replies[path] = await get(path)
            status, headers, _ = replies["/search?q=korea"]
            replies["304"] = await get("/search?q=korea", **{"If-None-Match": headers["etag"]})

        assert run_driven(daemon, drive) == 0

    status, headers, body = replies["/search?q=korea"]
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "public, max-age=60"
    page = html.fromstring(body)
    found = [a.text_content() for a in find(page, "//article/h3/a")]
    assert found == ["Korea launches a satellite", "Trade talks resume"]  # title first

    status, headers, body = replies["/search.atom?q=korea&topic=asia"]
    assert status == 200 and headers["content-type"] == "application/atom+xml"
    atom = feedparser.parse(body)
    assert [e.title for e in atom.entries] == ["Korea launches a satellite"]  # include: rocket
    self_link = next(link.href for link in atom.feed.links if link.rel == "self")
    assert self_link == f"http://127.0.0.1:{port}/search.atom?q=korea&topic=asia"

    status, headers, body = replies["/search.json?q=korea"]
    assert status == 200 and headers["content-type"] == "application/feed+json"
    assert len(json.loads(body)["items"]) == 2
    assert feedparser.parse(replies["/search.rss?q=korea"][2]).entries

    status, _, body = replies["/search"]  # the empty form
    assert status == 200 and html.fromstring(body).xpath("//form/input[@name='q']")

    status, headers, body = replies['/search?q="']
    assert status == 400 and headers["content-type"].startswith("text/html")
    assert "no word to look for" in find(html.fromstring(body), "//p[@role='alert']")[0].text
    for path, message in [
        ("/search.atom?q=-korea", "only excludes"),
        ("/search.json?q=korea&topic=nope", "no topic 'nope'"),
        ("/search.json?q=korea&since=soon", "since: expected a duration"),
        ("/search.json?q=" + "x" * 2000, "too long"),
        ("/search.atom", "empty"),
    ]:
        status, headers, body = replies[path]
        assert status == 400 and headers["content-type"].startswith("text/plain"), path
        assert message in body.decode() and "Traceback" not in body.decode(), path
    assert replies["/search.json?q=" + urllib.parse.quote("NEAR(korea*")][0] == 200
    assert replies["/search.xml?q=korea"][0] == 404
    assert replies["304"][0] == 304
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_the_search_form_page_is_valid_html_without_a_query() -> None:
    body = render.render_search_html("Search", [], config_with_topics().topics, [])
    page = etree.fromstring(body, etree.HTMLParser())
    assert [o.get("value") for o in page.iter("option")] == ["", "asia", "quiet"]
    assert not page.xpath("//link[@rel='alternate']")  # nothing to subscribe to yet


def test_a_query_matching_more_than_the_window_ranks_its_newest_matches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newest as stored: the window's matches are the last three stored (the removed
    feed's story among them, then left out as always)."""
    import aggregator.store

    assert "Korea launches a satellite" in titles(store, "korea")  # stored first
    monkeypatch.setattr(aggregator.store, "RANK_WINDOW", 3)
    assert sorted(titles(store, "korea")) == ["Korea in history", "Quiet news from Korea"]
    assert titles(store, "satellite") == ["Korea launches a satellite"]  # one match: found


def test_search_reads_a_database_it_cannot_write(
    cli_config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(cls: type[Store], path: object) -> Store:
        raise StoreError(f"{path}: cannot open database: attempt to write a readonly database")

    monkeypatch.setattr(Store, "open", classmethod(refuse))
    assert cli.main(["-c", str(cli_config), "search", "--json", "korea satellite"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["title"] == "Korea launches a satellite"
