"""Archive pages (paging.py): cursor tokens, pages from the store, their files, and the
daemon serving them over HTTP while new items arrive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlsplit

import feedparser
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from aggregator import paging
from aggregator.config import parse_config
from aggregator.daemon import Daemon
from aggregator.model import Config
from aggregator.paging import ArchivePage, BadCursor, Cursor
from aggregator.publish import (
    display_names,
    is_not_modified,
    publish,
    render_archive_page,
    topic_pages,
)
from aggregator.render import PageLinks, render_atom, render_json, render_rss
from aggregator.store import Store
from tests.feedserver import FeedServer
from tests.test_daemon import Reply, Story, free_port, make_story, request, rss, write_config
from tests.test_daemon_inprocess import run_driven
from tests.test_store import NOW, make_item, save

ATOM = "{http://www.w3.org/2005/Atom}"
UUID_ID = "urn:uuid:0f8a4c2e-1b3d-4e5f-8a9b-0c1d2e3f4a5b"
WHEN = datetime(2026, 11, 23, 13, 21, 45, tzinfo=UTC)


# --- tokens -------------------------------------------------------------------------------


def test_a_uuid_cursor_is_a_short_readable_token() -> None:
    token = paging.encode_cursor(Cursor(WHEN, UUID_ID))
    assert token == "20261123T132145Z-u0f8a4c2e1b3d4e5f8a9b0c1d2e3f4a5b"
    assert paging.decode_cursor(token) == Cursor(WHEN, UUID_ID)


@given(st.text(min_size=1, max_size=40), st.datetimes(min_value=datetime(1000, 1, 1)))
def test_any_id_round_trips_through_a_url_safe_token(item_id: str, moment: datetime) -> None:
    cursor = Cursor(moment.replace(microsecond=0, tzinfo=UTC), item_id)
    token = paging.encode_cursor(cursor)
    if len(item_id.encode("utf-8", "surrogatepass")) > paging.MAX_ID_BYTES:
        assert token is None
        return
    assert token is not None and len(token) <= paging.MAX_TOKEN
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in token)
    try:
        assert paging.decode_cursor(token) == cursor
    except BadCursor:  # a lone surrogate: stored text is UTF-8, so no item has one
        assert any("\ud800" <= c <= "\udfff" for c in item_id)


def test_an_id_too_long_for_a_token_has_none() -> None:
    assert paging.encode_cursor(Cursor(WHEN, "x" * (paging.MAX_ID_BYTES + 1))) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "20261123T132145Z",
        "20261123T132145Z-",
        "20261123T132145Z-u0f8a",  # too short for a uuid
        "20261123T132145Z-u0F8A4C2E1B3D4E5F8A9B0C1D2E3F4A5B",  # upper case: another alias
        "20261340T132145Z-u0f8a4c2e1b3d4e5f8a9b0c1d2e3f4a5b",  # month 13
        "2026-11-23T13:21:45Z-u0f8a4c2e1b3d4e5f8a9b0c1d2e3f4a5b",
        "20261123T132145Z-iYQ=",  # padding is not part of the token
        "20261123T132145Z-iYR",  # not canonical base64 of anything
        "20261123T132145Z-i_w",  # not UTF-8
        "20261123T132145Z-i" + "YWFh" * 300,  # too long
        "20261123T132145Z-i dA",
    ],
)
def test_a_bad_token_is_refused(token: str) -> None:
    with pytest.raises(BadCursor):
        paging.decode_cursor(token)


def test_requests_name_a_page_by_path_or_by_query() -> None:
    token = "20261123T132145Z-u0f8a4c2e1b3d4e5f8a9b0c1d2e3f4a5b"
    page = ArchivePage("north-korea", "atom", Cursor(WHEN, UUID_ID))
    assert paging.parse_archive_request(f"north-korea.before-{token}.atom") == page
    assert paging.parse_archive_request("north-korea.atom", f"before={token}".encode()) == page
    assert page.name == f"north-korea.before-{token}.atom"
    # not a page: first pages, other files, other parameters
    assert paging.parse_archive_request("north-korea.atom") is None
    assert paging.parse_archive_request("north-korea.atom", b"utm_source=x") is None
    assert paging.parse_archive_request("healthz", f"before={token}") is None
    assert paging.parse_archive_request(f"north-korea.before-{token}.opml") is None
    for path, query in [
        ("north-korea.atom", "before="),
        ("north-korea.atom", f"before={token}&before={token}"),
        (f"north-korea.before-{token}.atom", f"before={token}"),
        ("north-korea.before-nonsense.json", ""),
        ("north-korea.before-.rss", ""),
    ]:
        with pytest.raises(BadCursor):
            paging.parse_archive_request(path, query)


# --- the links in each format -----------------------------------------------------------

ARCHIVE_LINKS = PageLinks(
    older="north-korea.before-20261123T132145Z-u0f8a4c2e1b3d4e5f8a9b0c1d2e3f4a5b",
    newer="north-korea",
    page="north-korea.before-20261124T000000Z-u1f8a4c2e1b3d4e5f8a9b0c1d2e3f4a5b",
)


def test_atom_pages_link_next_and_first_and_keep_the_feed_id() -> None:
    from tests.test_render import BASE_URL, ITEM_PLAIN, TOPIC, AtomSchema, convert_atom_rnc

    body = render_atom(TOPIC, [ITEM_PLAIN], BASE_URL, ARCHIVE_LINKS)
    assert AtomSchema(convert_atom_rnc()).errors(body) == []
    root = etree.fromstring(body)
    links = {link.get("rel"): link.get("href") for link in root.findall(f"{ATOM}link")}
    assert links["next"] == f"{BASE_URL}{ARCHIVE_LINKS.older}.atom"
    assert links["first"] == f"{BASE_URL}north-korea.atom"
    assert links["self"] == f"{BASE_URL}{ARCHIVE_LINKS.page}.atom"
    assert root.findtext(f"{ATOM}id") == f"{BASE_URL}north-korea.atom"  # one feed, many pages
    parsed = feedparser.parse(body)
    assert {link["rel"] for link in parsed.feed.links} >= {"next", "first", "self"}
    plain = etree.fromstring(render_atom(TOPIC, [ITEM_PLAIN], BASE_URL))
    assert {link.get("rel") for link in plain.findall(f"{ATOM}link")} == {"self", "alternate"}


def test_rss_pages_link_next_and_first_as_atom_links_in_the_channel() -> None:
    from tests.test_render import BASE_URL, ITEM_PLAIN, TOPIC

    channel = etree.fromstring(render_rss(TOPIC, [ITEM_PLAIN], BASE_URL, ARCHIVE_LINKS))[0]
    links = {link.get("rel"): link.get("href") for link in channel.findall(f"{ATOM}link")}
    assert links == {
        "self": f"{BASE_URL}{ARCHIVE_LINKS.page}.rss",
        "next": f"{BASE_URL}{ARCHIVE_LINKS.older}.rss",
        "first": f"{BASE_URL}north-korea.rss",
    }
    plain = etree.fromstring(render_rss(TOPIC, [ITEM_PLAIN], BASE_URL))[0]
    assert [link.get("rel") for link in plain.findall(f"{ATOM}link")] == ["self"]


def test_json_feed_pages_have_next_url_and_keep_the_feed_url() -> None:
    from tests.test_render import BASE_URL, ITEM_PLAIN, TOPIC

    feed = json.loads(render_json(TOPIC, [ITEM_PLAIN], BASE_URL, ARCHIVE_LINKS))
    assert feed["next_url"] == f"{BASE_URL}{ARCHIVE_LINKS.older}.json"
    assert feed["feed_url"] == f"{BASE_URL}north-korea.json"
    assert "next_url" not in json.loads(render_json(TOPIC, [ITEM_PLAIN], BASE_URL))


# --- pages from the store ----------------------------------------------------------------

FEED_A, FEED_B = "https://a.test/feed", "https://b.test/feed"


def paged_config(
    tmp_path: Path, max_items: int, topics: str = "  all:\n    title: All\n"
) -> Config:
    text = (
        f"settings:\n  max_items: {max_items}\n  output_dir: out\n"
        f"topics:\n{topics}feeds:\n  - url: {FEED_A}\n  - url: {FEED_B}\n"
    )
    return parse_config(text, tmp_path / "feeds.yaml")


def fill(store: Store, count: int, feed: str = FEED_A, start: int = 0, group: int = 3) -> None:
    """`count` items, `group` of them at each moment, so pages end inside a group."""
    for n in range(start, start + count):
        moment = NOW - timedelta(minutes=10 * (n // group))
        save(store, make_item(feed, f"{feed[8]}{n}", published=moment, updated=moment))


def walk(config: Config, store: Store, slug: str = "all") -> list[list[str]]:
    """Every page of a topic by its cursors, as lists of item titles."""
    topic = next(t for t in config.topics if t.slug == slug)
    names = display_names(config, store.feed_states())
    pages, cursor = [], None
    while True:
        [page] = topic_pages(config, store, topic, names, before=cursor)
        pages.append([item.title for item in page.items])
        if page.older is None:
            return pages
        cursor = page.older


def test_walking_the_cursors_gives_every_item_once_in_order(tmp_path: Path) -> None:
    config = paged_config(tmp_path, max_items=5)
    with Store.open(":memory:") as store:
        fill(store, 23)
        pages = walk(config, store)
        everything = [i.title for i in store.newest_items([FEED_A], 100, lambda i, t: True, {})]
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    assert [title for page in pages for title in page] == everything
    assert len(set(everything)) == 23


def test_an_exact_last_page_has_no_older_link(tmp_path: Path) -> None:
    config = paged_config(tmp_path, max_items=5)
    with Store.open(":memory:") as store:
        fill(store, 10)
        assert [len(page) for page in walk(config, store)] == [5, 5]
    with Store.open(":memory:") as store:
        assert walk(config, store) == [[]]  # no items: one empty first page


def test_pages_read_in_one_pass_are_the_pages_their_cursors_give(tmp_path: Path) -> None:
    topics = "  capped:\n    max_per_feed: 2\n    exclude: ['a7']\n"
    config = paged_config(tmp_path, max_items=4, topics=topics)
    [topic] = config.topics
    with Store.open(":memory:") as store:
        fill(store, 20, FEED_A)
        fill(store, 6, FEED_B, group=4)
        names = display_names(config, store.feed_states())
        at_once = topic_pages(config, store, topic, names, pages=50)
        by_cursor = walk(config, store, "capped")
    assert [[i.title for i in page.items] for page in at_once] == by_cursor
    assert all(len(page) <= 4 for page in by_cursor)
    for page in by_cursor:  # max_per_feed holds on every page
        assert sum(title.startswith("Title a") for title in page) <= 2
    assert "Title a7" not in {title for page in by_cursor for title in page}


def test_new_items_do_not_shift_an_older_page(tmp_path: Path) -> None:
    config = paged_config(tmp_path, max_items=5)
    [topic] = config.topics
    with Store.open(":memory:") as store:
        fill(store, 17)
        names = display_names(config, store.feed_states())
        first, second = topic_pages(config, store, topic, names, pages=2)
        assert first.older is not None
        before = topic_pages(config, store, topic, names, before=first.older)
        for n in range(4):  # newer than everything
            save(store, make_item(FEED_B, f"new{n}", published=NOW + timedelta(minutes=n + 1)))
        after = topic_pages(config, store, topic, names, before=first.older)
        assert after == before
        assert [i.title for i in after[0].items] == [i.title for i in second.items]
        new_first = topic_pages(config, store, topic, names)[0]
        assert [i.title for i in new_first.items][:4] == [f"Title new{n}" for n in (3, 2, 1, 0)]


def test_an_archive_page_a_late_item_joined_is_not_modified_since_its_old_date(
    tmp_path: Path,
) -> None:
    """A late item (published inside an older page's span, updated no later than the
    page's items) changes the page without moving its items' latest `updated`: the page's
    Last-Modified must still move, or a client sending only If-Modified-Since keeps its
    stale copy."""
    config = paged_config(tmp_path, max_items=5)
    [topic] = config.topics
    with Store.open(":memory:") as store:
        fill(store, 17)
        names = display_names(config, store.feed_states())
        first = topic_pages(config, store, topic, names)[0]
        assert first.older is not None
        page = ArchivePage("all", "atom", first.older)
        before = render_archive_page(store, config, page)
        assert before is not None
        oldest = min(
            i.published
            for i in topic_pages(config, store, topic, names, before=first.older)[0].items
        )
        late = oldest + timedelta(seconds=1)
        save(store, make_item(FEED_B, "late", published=late, updated=late))
        changed_at = before.modified_at + 60  # the render after the late item was stored
        after = render_archive_page(store, config, page, changed_at)
        assert after is not None and after.body != before.body and b"Title late" in after.body
        # by its items alone, the page would not have moved
        by_items = render_archive_page(store, config, page)
        assert by_items is not None and by_items.modified_at == before.modified_at
    since = formatdate(before.modified_at, usegmt=True)
    assert after.modified_at == changed_at
    assert not is_not_modified(after.etag, after.modified_at, None, since)
    assert is_not_modified(after.etag, after.modified_at, None, formatdate(changed_at, usegmt=True))


# --- files ---------------------------------------------------------------------------------


def page_files(directory: Path, slug: str = "all") -> list[str]:
    return sorted(p.name for p in directory.iterdir() if paging.archive_slug(p.name) == slug)


def older_name(body: bytes) -> str | None:
    link = etree.fromstring(body).find(f"{ATOM}link[@rel='next']")
    return None if link is None else urlsplit(link.get("href", "")).path.lstrip("/")


def test_the_first_pages_are_files_that_link_each_other_and_stale_ones_go(
    tmp_path: Path,
) -> None:
    from aggregator.publish import ARCHIVE_FILES

    config = paged_config(tmp_path, max_items=5)
    out = config.settings.output_dir
    with Store.open(":memory:") as store:
        fill(store, 40)
        publish(store, config)
        chain = [older_name((out / "all.atom").read_bytes())]
        while chain[-1] is not None and (out / chain[-1]).exists():
            chain.append(older_name((out / chain[-1]).read_bytes()))
        # pages 2 to 1 + ARCHIVE_FILES are files; the last of them links page 5, served only
        assert len(chain) == ARCHIVE_FILES + 1 and chain[-1] is not None
        stems = [name.removesuffix(".atom") for name in chain[:-1] if name]
        expected = sorted(
            f"{stem}.{ext}" for stem in stems for ext in ("atom", "rss", "json", "html")
        )
        assert page_files(out) == expected
        json_next = json.loads((out / "all.json").read_bytes())["next_url"]
        assert json_next.endswith(f"/{stems[0]}.json")
        stale = set(page_files(out))
        save(store, make_item(FEED_B, "newest", published=NOW + timedelta(hours=1)))
        publish(store, config, only={"all"})
        # the boundaries moved by one item: a new set of page files, the old one gone
        assert len(page_files(out)) == len(expected) and not stale & set(page_files(out))
        # another topic's render leaves these pages alone
        publish(store, config, only={"other"})
        assert len(page_files(out)) == len(expected)


# --- served by the daemon ------------------------------------------------------------------

BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def dated_stories(count: int, prefix: str, group: int = 7) -> list[Story]:
    """`count` stories, newest first, `group` of them at each moment (pages end inside)."""
    return [
        replace(make_story(f"{prefix}{n}"), published=BASE - timedelta(minutes=n // group))
        for n in range(count)
    ]


async def get(port: int, path: str, **headers: str) -> Reply:
    return await asyncio.to_thread(request, port, path, "GET", headers)


def atom_page(body: bytes) -> tuple[list[str], str | None]:
    """(entry links, path of rel="next") of an Atom page."""
    links = []
    for entry in etree.fromstring(body).iter(f"{ATOM}entry"):
        link = entry.find(f"{ATOM}link[@rel='alternate']")
        assert link is not None
        links.append(link.get("href", ""))
    return links, older_name(body)


def rss_page(body: bytes) -> tuple[list[str], str | None]:
    root = etree.fromstring(body)
    nexts = root.findall(f"channel/{ATOM}link[@rel='next']")
    path = urlsplit(nexts[0].get("href", "")).path.lstrip("/") if nexts else None
    return [item.findtext("link", "") for item in root.iter("item")], path


def json_page(body: bytes) -> tuple[list[str], str | None]:
    feed = json.loads(body)
    path = urlsplit(feed["next_url"]).path.lstrip("/") if "next_url" in feed else None
    return [item["url"] for item in feed["items"]], path


def run_site(
    tmp_path: Path,
    stories: Sequence[Story],
    max_items: int,
    drive: Callable[[FeedServer, Daemon, int], object],
) -> None:
    """The daemon in process on a feed of `stories` (polled every second), driven by
    `drive(server, daemon, port)` once its first page shows the newest story."""
    config_path, port = tmp_path / "feeds.yaml", free_port()
    with FeedServer() as server:
        server.set("/a.rss", rss("A", stories))
        write_config(
            config_path,
            port,
            [server.url("/a.rss")],
            interval="1s",
            topics="  all:\n    title: All\n",
            settings=f"  max_items: {max_items}",
        )
        daemon = Daemon(config_path)

        async def drive_it() -> None:
            async def published() -> bool:
                reply = await get(port, "/all.atom")
                return reply.status == 200 and stories[0].link in atom_page(reply.body)[0]

            await wait_until_true(published, 60)
            await drive(server, daemon, port)  # type: ignore[misc]

        assert run_driven(daemon, drive_it) == 0


def assert_every_story_once(links: list[str], stories: Sequence[Story]) -> None:
    """Each story's link once, newest first (stories of one moment in the order of their
    ids, which the test does not know)."""
    assert sorted(links) == sorted(s.link for s in stories)
    assert len(set(links)) == len(links)
    published = {s.link: s.published for s in stories}
    dates = [published[link] for link in links]
    assert dates == sorted(dates, reverse=True)


async def wait_until_true(check: Callable[[], object], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():  # type: ignore[misc]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def test_walking_next_links_sees_every_item_once_while_new_items_arrive(tmp_path: Path) -> None:
    """500 items, 20 a page: the walk from the first page over HTTP sees each once, in
    order, while new items arrive and are published half-way; pages fetched before the
    arrival are served with the same bytes after it; static page files match the served
    pages and stale ones are gone."""
    stories = dated_stories(500, "s")
    fresh = [replace(make_story(f"new{n}"), published=BASE + timedelta(hours=1)) for n in range(3)]
    out = tmp_path / "public"
    seen: dict[str, object] = {}

    async def drive(server: FeedServer, daemon: Daemon, port: int) -> None:
        links: list[str] = []
        fetched: dict[str, bytes] = {}
        path: str | None = "all.atom"
        files_before: list[str] = []
        while path is not None:
            reply = await get(port, f"/{path}")
            assert reply.status == 200, (path, reply.body)
            assert reply.headers["content-type"].startswith("application/atom+xml")
            fetched[path] = reply.body
            entries, path = atom_page(reply.body)
            links += entries
            if len(fetched) == 3:  # new items arrive half-way through the walk
                files_before = page_files(out)
                server.set("/a.rss", rss("A", fresh + stories))

                async def arrived() -> bool:
                    first = await get(port, "/all.atom")
                    return fresh[0].link in atom_page(first.body)[0]

                await wait_until_true(arrived, 30)
        seen["links"] = links
        seen["pages"] = len(fetched)
        # the pages fetched before the arrival are the same bytes after it
        for name, body in list(fetched.items())[1:3]:
            assert (await get(port, f"/{name}")).body == body
        # the static pages are the current first ones, the same bytes as served
        assert len(files_before) == 4 * 3  # pages 2 to 4 in every format

        async def rewritten() -> bool:
            return page_files(out) != files_before

        await wait_until_true(rewritten, 10)
        for name in page_files(out):
            assert (await get(port, f"/{name}")).body == (out / name).read_bytes()
        seen["stale"] = set(files_before) & set(page_files(out))

    run_site(tmp_path, stories, 20, drive)
    assert_every_story_once(seen["links"], stories)  # type: ignore[arg-type]
    assert seen["pages"] == 25
    assert seen["stale"] == set()


def test_json_and_rss_walks_validators_and_bad_pages(tmp_path: Path) -> None:
    stories = dated_stories(45, "j", group=4)
    walks: dict[str, list[str]] = {}
    replies: dict[str, Reply] = {}

    async def drive(server: FeedServer, daemon: Daemon, port: int) -> None:
        for extension, read in (("json", json_page), ("rss", rss_page), ("atom", atom_page)):
            links: list[str] = []
            path: str | None = f"all.{extension}"
            while path is not None:
                reply = await get(port, f"/{path}")
                assert reply.status == 200, (path, reply.body)
                entries, path = read(reply.body)
                links += entries
            walks[extension] = links
        first = await get(port, "/all.atom")
        second = older_name(first.body)
        assert second is not None
        token = second.removeprefix("all.before-").removesuffix(".atom")
        replies["page"] = page = await get(port, f"/{second}")
        replies["query"] = await get(port, f"/all.atom?before={token}")
        replies["etag"] = await get(port, f"/{second}", **{"If-None-Match": page.headers["etag"]})
        since = page.headers["last-modified"]
        replies["since"] = await get(port, f"/{second}", **{"If-Modified-Since": since})
        replies["gzip"] = await get(port, f"/{second}", **{"Accept-Encoding": "gzip"})
        replies["head"] = await asyncio.to_thread(request, port, f"/{second}", "HEAD")
        replies["unknown"] = await get(port, f"/nothing.before-{token}.atom")
        replies["end"] = await get(port, "/all.json?before=19700101T000000Z-iYQ")
        for n, bad in enumerate(
            [
                "/all.atom?before=",
                "/all.atom?before=nonsense",
                f"/all.rss?before={token}x",
                "/all.before-20261340T000000Z-iYQ.atom",
                f"/all.before-{token}.json?before={token}",
                "/all.json?before=20261123T132145Z-i" + "YWFh" * 300,
            ]
        ):
            replies[f"bad{n}"] = await get(port, bad)

    run_site(tmp_path, stories, 10, drive)
    for links in walks.values():
        assert_every_story_once(links, stories)
    assert walks["json"] == walks["rss"] == walks["atom"]
    page = replies["page"]
    assert page.headers["content-type"].startswith("application/atom+xml")
    assert "max-age=" in page.headers["cache-control"]
    assert replies["query"].body == page.body
    assert replies["etag"].status == 304 and replies["since"].status == 304
    assert replies["gzip"].headers["content-encoding"] == "gzip"
    assert replies["head"].status == 200 and replies["head"].body == b""
    assert replies["unknown"].status == 404
    end = replies["end"]
    assert end.status == 200 and json.loads(end.body)["items"] == []
    assert "next_url" not in json.loads(end.body)
    for name, reply in replies.items():
        if name.startswith("bad"):
            assert reply.status == 400, (name, reply.body)
            assert reply.body.startswith(b"bad page: ")
