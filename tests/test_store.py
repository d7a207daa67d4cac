"""The store: one item per story, stable ids, updates, merging, pruning, search."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aggregator.errors import StoreError
from aggregator.model import FeedState, Item
from aggregator.store import Store
from aggregator.update import FeedUpdate

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

STORY = (
    "Pyongyang launched a short range ballistic missile into the sea east of the peninsula "
    "on Tuesday morning, the South Korean military said, the third launch this month as "
    "talks between the two Koreas remain stalled and Washington urges restraint from all "
    "sides while regional partners convene an emergency session to weigh further measures."
)


def make_item(feed_url: str, key: str, **fields: object) -> Item:
    values: dict[str, object] = dict(
        feed_url=feed_url,
        entry_key=key,
        link=f"https://example.org/{key}",
        canonical_link=f"https://example.org/{key}",
        title=f"Title {key}",
        content_html=f"<p>Body of {key}</p>",
        summary_html="",
        excerpt=f"Body of {key}",
        text=f"Body of {key} " + " ".join(f"word{key}{i}" for i in range(40)),
        author=None,
        categories=(),
        published=NOW - timedelta(hours=1),
        updated=NOW - timedelta(hours=1),
        content_hash=f"hash-{key}",
    )
    values.update(fields)
    return Item(**values)  # type: ignore[arg-type]


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store.open(":memory:")
    yield s
    s.close()


def save(store: Store, *items: Item, now: datetime = NOW, round_id: str | None = None):
    """One poll of the items' feed; its own round unless `round_id` says."""
    round_id = round_id or uuid.uuid4().hex
    feed_url = items[0].feed_url
    state = FeedState(url=feed_url, fetch_url=feed_url)
    return store.save(FeedUpdate(state), [(i, None) for i in items], now=now, round_id=round_id)


def all_items(store: Store, feeds=("https://a.test/feed", "https://b.test/feed")):
    return store.newest_items(list(feeds), 100, lambda item, text: True, {})


def test_a_new_entry_is_one_item_and_saving_it_again_adds_nothing(store: Store) -> None:
    item = make_item("https://a.test/feed", "1")
    assert save(store, item).new == 1
    assert save(store, item).new == 0
    assert len(all_items(store)) == 1


def test_an_edited_entry_updates_the_item_keeps_its_id_and_moves_updated(store: Store) -> None:
    item = make_item("https://a.test/feed", "1")
    save(store, item)
    [before] = all_items(store)
    later = NOW + timedelta(hours=2)
    edited = replace(item, title="Corrected title", content_hash="hash-edited")
    outcome = save(store, edited, now=later)
    assert (outcome.new, outcome.updated) == (0, 1)
    [after] = all_items(store)
    assert after.id == before.id
    assert after.title == "Corrected title"
    assert after.updated == later
    assert after.published == before.published


def test_same_link_from_another_feed_is_merged_and_both_outlets_are_named(store: Store) -> None:
    first = make_item("https://a.test/feed", "1", title="Original headline")
    copy = make_item(
        "https://b.test/feed",
        "x",
        canonical_link=first.canonical_link,
        link=first.link + "?utm_source=rss",
        title="Other headline",
        published=NOW - timedelta(hours=3),
    )
    save(store, first)
    assert save(store, copy, now=NOW + timedelta(hours=1)).merged == 1
    [item] = all_items(store)
    # the first-seen copy stays the story's face; published is the earliest of the copies
    assert item.title == "Original headline"
    assert [s.feed_url for s in item.sources] == ["https://a.test/feed", "https://b.test/feed"]
    assert item.published == NOW - timedelta(hours=3)


def test_copies_seen_in_one_round_are_led_by_the_earliest_published(store: Store) -> None:
    syndicated = make_item("https://b.test/feed", "x", title="Syndicated copy")
    original = make_item(
        "https://a.test/feed",
        "1",
        title="Original",
        link=syndicated.link,
        canonical_link=syndicated.canonical_link,
        published=NOW - timedelta(hours=5),
    )
    save(store, syndicated, round_id="r1")  # the syndicating server answered first
    save(store, original, round_id="r1")
    [item] = all_items(store)
    assert item.title == "Original"
    assert [s.feed_url for s in item.sources] == ["https://a.test/feed", "https://b.test/feed"]


def test_the_same_text_under_another_url_is_merged(store: Store) -> None:
    save(store, make_item("https://a.test/feed", "1", title="Missile launch", text=STORY))
    outcome = save(
        store,
        make_item(
            "https://b.test/feed",
            "2",
            title="N. Korea fires missile",
            text="By Staff Reporter. " + STORY,
        ),
    )
    assert outcome.merged == 1
    assert len(all_items(store)) == 1


def test_different_stories_sharing_a_title_stay_apart(store: Store) -> None:
    save(store, make_item("https://a.test/feed", "1", title="This Week in Korea"))
    outcome = save(store, make_item("https://a.test/feed", "2", title="This Week in Korea"))
    assert outcome.new == 1
    assert len(all_items(store)) == 2


def test_links_to_a_home_page_do_not_merge_stories(store: Store) -> None:
    home = "https://example.org/"
    save(
        store,
        make_item("https://a.test/feed", "1", link=home, canonical_link="https://example.org"),
    )
    outcome = save(
        store,
        make_item("https://b.test/feed", "2", link=home, canonical_link="https://example.org"),
    )
    assert outcome.new == 1


def test_a_link_a_feed_gives_several_of_its_entries_does_not_merge_them(store: Store) -> None:
    """A podcast linking every episode to the show's page, a live blog each of whose
    updates links to a fragment of it: the link names a page, not a story. The same
    headline under the same link and a new id is the entry re-issued: one story."""
    feed = "https://a.test/feed"
    for n, link in enumerate(
        ["https://pod.example/show/", "https://pod.example/show", "https://pod.example/show#ep-3"]
    ):
        outcome = save(
            store,
            make_item(
                feed,
                f"guid-{n}",
                link=link,
                canonical_link="https://pod.example/show",
                title=f"Episode {n}: guest number {n}",
            ),
        )
        assert outcome.new == 1, n
    # another outlet carrying the page's link still joins a story
    copy = make_item(
        "https://b.test/feed",
        "x",
        link="https://pod.example/show",
        canonical_link="https://pod.example/show",
        title="Listen: our favourite show",
    )
    assert save(store, copy).merged == 1
    assert len(all_items(store)) == 3
    # one entry, given a new id: the same headline under its link
    other = "https://c.test/feed"
    page = {"link": "https://c.example/a", "canonical_link": "https://c.example/a"}
    save(store, make_item(other, "old-id", title="Talks resume", **page))
    reissued = make_item(other, "new-id", title="Talks resume", text="Edited.", **page)
    assert save(store, reissued).merged == 1


def test_newest_items_are_newest_first_limited_and_filtered(store: Store) -> None:
    items = [
        make_item("https://a.test/feed", str(i), published=NOW - timedelta(hours=i))
        for i in range(1, 6)
    ]
    save(store, *items)
    newest = store.newest_items(["https://a.test/feed"], 3, lambda item, text: True, {})
    assert [i.title for i in newest] == ["Title 1", "Title 2", "Title 3"]
    odd = store.newest_items(
        ["https://a.test/feed"], 10, lambda item, text: item.title[-1] in "135", {}
    )
    assert [i.title for i in odd] == ["Title 1", "Title 3", "Title 5"]
    assert store.newest_items(["https://other.test/feed"], 10, lambda i, t: True, {}) == []


def test_prune_forgets_items_older_than_retention(store: Store) -> None:
    save(
        store,
        make_item("https://a.test/feed", "old", published=NOW - timedelta(days=400)),
        make_item("https://a.test/feed", "new"),
    )
    assert store.prune(NOW - timedelta(days=365)) == 1
    assert [i.title for i in all_items(store)] == ["Title new"]
    assert store.item_counts() == {"https://a.test/feed": 1}


def test_full_text_search_finds_items_by_a_word(store: Store) -> None:
    save(
        store,
        make_item("https://a.test/feed", "1", text=STORY),
        make_item("https://a.test/feed", "2"),
    )
    [hit] = store.search("ballistic")
    [item] = [i for i in all_items(store) if i.id == hit]
    assert item.title == "Title 1"


def test_feed_state_round_trips(store: Store) -> None:
    state = FeedState(
        url="https://a.test/feed",
        fetch_url="https://a.test/new-feed",
        etag='"abc"',
        last_modified="Wed, 18 Nov 2026 10:00:00 GMT",
        last_fetched=NOW,
        last_status=200,
        next_due=NOW + timedelta(minutes=30),
        failures=2,
        moved_to="https://a.test/new-feed",
        title="A",
    )
    store.save(FeedUpdate(state), now=NOW, round_id="r")
    assert store.feed_state("https://a.test/feed") == state
    assert store.feed_state("https://unknown.test/") == FeedState(
        url="https://unknown.test/", fetch_url="https://unknown.test/"
    )


def test_entry_chunks_are_kept_until_the_next_parsed_body(store: Store) -> None:
    state = FeedState(url="https://a.test/feed", fetch_url="https://a.test/feed")
    assert store.known_entries(state.url).chunks == {}
    store.save(
        FeedUpdate(state, entry_chunks=(("0a1b", "k1"), ("2c3d", "k2"))), now=NOW, round_id="r"
    )
    # a 304 leaves them as they were
    store.save(FeedUpdate(replace(state, last_status=304)), now=NOW, round_id="r")
    assert store.known_entries(state.url).chunks == {"0a1b": "k1", "2c3d": "k2"}
    store.save(
        FeedUpdate(state, entry_chunks=()), now=NOW, round_id="r"
    )  # a body that could not be split
    assert store.known_entries(state.url).chunks == {}


def test_a_file_database_is_in_wal_mode_and_reopens_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "agg.db"
    with Store.open(path) as store:
        save(store, make_item("https://a.test/feed", "1"))
    with Store.open(path) as store:
        assert len(all_items(store)) == 1
        assert store.integrity_ok()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_search_finds_new_items_and_follows_edits_and_deletions(store: Store) -> None:
    item = make_item("https://a.test/feed", "1", text=STORY)
    save(store, item)
    assert store.index_for_search() == 1
    assert store.index_for_search() == 0
    [hit] = store.search("ballistic")
    edited = replace(item, text="A ceasefire was agreed " + STORY[40:], content_hash="edited")
    save(store, edited, now=NOW + timedelta(hours=1))
    assert store.search("ceasefire") == [hit]
    assert store.search("Pyongyang") == []  # the edit removed the word from the text
    store.prune(NOW + timedelta(days=1))
    assert store.search("ceasefire") == []
    # FTS5 raises "database disk image is malformed" if its index disagrees with items
    store.db.execute("INSERT INTO items_fts (items_fts, rank) VALUES ('integrity-check', 1)")


def test_reopening_recomputes_dedupe_keys_stored_by_an_older_scheme(tmp_path: Path) -> None:
    path = tmp_path / "agg.db"
    with Store.open(path) as store:
        save(store, make_item("https://a.test/feed", "1", title="Missile launch", text=STORY))
        # as a database whose keys were made by another scheme of dedupe.index_keys
        store.db.execute("DELETE FROM item_keys")
        store.db.execute("INSERT INTO item_keys (key, item) SELECT 1, rowid FROM items")
        store.db.execute("UPDATE meta SET value = 'older' WHERE name = 'dedupe_key_scheme'")
        store.db.conn.commit()
    with Store.open(path) as store:
        copy = make_item("https://b.test/feed", "2", title="Launch", text="By Staff. " + STORY)
        assert save(store, copy).merged == 1


def _keys_as_before_011(store: Store) -> None:
    """Turn the database's key rows back into the layout before migration 011 (the item
    named by its id), with the migration pending again."""
    store.db.executescript(
        """
        CREATE TABLE old_keys (
            key INTEGER NOT NULL,
            item_id TEXT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
            PRIMARY KEY (key, item_id)
        ) WITHOUT ROWID;
        INSERT INTO old_keys SELECT k.key, i.id FROM item_keys k JOIN items i
            ON i.rowid = k.item;
        DROP TRIGGER items_keys_delete;
        DROP TABLE item_keys;
        ALTER TABLE old_keys RENAME TO item_keys;
        CREATE INDEX item_keys_item ON item_keys (item_id);
        DELETE FROM _sqlite_migrations WHERE name = '011_item_keys_by_rowid';
        """
    )


def test_a_database_whose_keys_name_items_by_id_keeps_matching_after_the_upgrade(
    tmp_path: Path,
) -> None:
    """Migration 011 turns key rows that named their story by id into rows that name it by
    rowid: a copy arriving after the upgrade still joins its story, and the keys of a
    pruned story go with it."""
    path = tmp_path / "agg.db"
    with Store.open(path) as store:
        save(store, make_item("https://a.test/feed", "1", title="Missile launch", text=STORY))
        other = "Flooding closed the river port for a week. " * 12
        save(store, make_item("https://a.test/feed", "2", title="Port closed", text=other))
        keys_before = store.db.execute("SELECT count(*) FROM item_keys").fetchone()[0]
        _keys_as_before_011(store)
    with Store.open(path) as store:
        columns = [c.name for c in store.db.table("item_keys").columns]
        assert columns == ["key", "item"]
        assert store.db.execute("SELECT count(*) FROM item_keys").fetchone()[0] == keys_before
        copy = make_item("https://b.test/feed", "3", title="Launch", text="By Staff. " + STORY)
        assert save(store, copy).merged == 1
        store.prune(NOW + timedelta(days=3650))
        assert store.db.execute("SELECT count(*) FROM items").fetchone()[0] == 0
        assert store.db.execute("SELECT count(*) FROM item_keys").fetchone()[0] == 0


def test_gone_fingerprints_are_read_back_whatever_their_first_character(tmp_path) -> None:
    """SQLite reads a bare TEXT column in WHERE as a number: "a1…" is 0, "1a…" is 1."""
    from aggregator.model import FeedState

    with Store.open(tmp_path / "agg.db") as store:
        urls = {"http://a/": "a1b2c3d4", "http://b/": "1a2b3c4d"}
        for url, fingerprint in urls.items():
            state = FeedState(url=url, fetch_url=url, gone=True, gone_fingerprint=fingerprint)
            store.save(FeedUpdate(state), now=NOW, round_id="r")
        states = store.feed_states()
        assert {url: states[url].gone_fingerprint for url in urls} == urls


def test_the_schema_in_the_docstring_is_the_database_s(tmp_path: Path) -> None:
    """store.py lists the current schema in one place; it must say what the migrations
    build, column for column."""
    import re

    from aggregator import store as store_module

    documented = {
        name: [c.strip() for c in columns.split(",")]
        for name, columns in re.findall(
            r"^  (\w+)\(([^)]*)\)", store_module.__doc__ or "", re.MULTILINE
        )
    }
    with Store.open(tmp_path / "agg.db") as store:
        actual = {name: [column.name for column in store.db[name].columns] for name in documented}
        tables = set(store.db.table_names())
    assert documented == actual
    assert {t for t in tables if not t.startswith(("_", "items_fts_"))} == set(documented)


def test_an_item_matching_two_stories_stored_apart_joins_them(store: Store) -> None:
    """Two copies that do not match each other (each outlet's own trailer names another
    figure) are stored apart until the original, which matches both, joins them: one story,
    three outlets, its earliest date."""
    body = STORY + " " + STORY.replace("Pyongyang", "the capital")
    a = make_item(
        "https://a.test/feed", "a", text=body + " Tribune 49 is a member of the press association."
    )
    b = make_item(
        "https://b.test/feed",
        "b",
        text=body + " Bulletin 81 is a member of the press association.",
        published=NOW - timedelta(hours=9),
    )
    save(store, a)
    save(store, b)
    assert len(all_items(store, feeds=("https://a.test/feed", "https://b.test/feed"))) == 2
    original = make_item("https://c.test/feed", "c", text=body)
    assert save(store, original).merged == 1
    feeds = ("https://a.test/feed", "https://b.test/feed", "https://c.test/feed")
    [story] = all_items(store, feeds=feeds)
    assert {s.feed_url for s in story.sources} == set(feeds)
    assert story.published == NOW - timedelta(hours=9)


def test_a_feeds_fetch_history_keeps_its_last_fetches_newest_first(store: Store) -> None:
    """Written with the poll's state, trimmed in the same write: HISTORY_LENGTH per feed,
    whatever the other feeds do."""
    from aggregator.store import HISTORY_LENGTH, FetchRecord

    for n in range(HISTORY_LENGTH + 5):
        for url in ("https://a.test/feed", "https://b.test/feed"):
            when = NOW + timedelta(minutes=n)
            fetch = FetchRecord(fetched_at=when, duration=0.25, status=200, outcome="ok")
            item = make_item(url, f"{url[8]}{n}")
            state = FeedState(url=url, fetch_url=url, last_fetched=when)
            store.save(FeedUpdate(state), [(item, None)], now=when, round_id="r", fetch=fetch)
    history = store.fetch_history("https://a.test/feed")
    assert len(history) == HISTORY_LENGTH
    assert history[0].fetched_at == NOW + timedelta(minutes=HISTORY_LENGTH + 4)
    assert history[-1].fetched_at == NOW + timedelta(minutes=5)
    assert (history[0].new, history[0].updated, history[0].status) == (1, 0, 200)
    assert store.db.execute("SELECT count(*) FROM fetches").fetchone() == (2 * HISTORY_LENGTH,)
    assert len(store.fetch_history("https://b.test/feed", limit=3)) == 3
    assert store.fetch_history("https://c.test/feed") == []


def test_a_poll_without_a_fetch_record_adds_no_history(store: Store) -> None:
    save(store, make_item("https://a.test/feed", "1"))
    assert store.fetch_history("https://a.test/feed") == []


def test_images_and_icons_reach_the_published_item(store: Store) -> None:
    feed = "https://a.test/feed"
    state = FeedState(url=feed, fetch_url=feed, title="A", icon_url="https://a.test/icon.png")
    item = make_item(feed, "1", image_url="https://a.test/lead.jpg")
    store.save(FeedUpdate(state), [(item, None)], now=NOW, round_id="r")
    assert store.feed_state(feed).icon_url == "https://a.test/icon.png"
    [published] = all_items(store)
    assert published.image_url == "https://a.test/lead.jpg"
    assert published.sources[0].icon_url == "https://a.test/icon.png"
    # the story changed when it was stored, after its own dates
    assert published.changed_at == NOW
    # an entry stored before images were (or whose image alone changed) gets the new one
    # without being an edit: same content hash, not "updated"
    moved = replace(item, image_url="https://a.test/other.jpg")
    assert save(store, moved, now=NOW + timedelta(hours=1)).updated == 0
    [published] = all_items(store)
    assert published.image_url == "https://a.test/other.jpg"
    assert published.changed_at == NOW


def test_polls_sharing_a_group_commit_keep_their_own_failures_and_reach_the_file(
    tmp_path: Path,
) -> None:
    """StoreThread runs the polls that follow one another in one transaction: a poll that
    fails half-way leaves nothing of itself, the others' writes are committed, and they
    are in the file (another connection sees them) once the thread has gone quiet."""
    import asyncio

    from aggregator.store import StoreThread

    class Broken(Exception):
        pass

    class BrokenItem:
        """Fails the save after the good item before it was written."""

        def __getattr__(self, name: str) -> object:
            raise Broken(name)

    path = tmp_path / "agg.db"
    good = [make_item(f"https://f{n}.test/feed", f"k{n}") for n in range(30)]
    broken_feed = "https://broken.test/feed"
    half = make_item(broken_feed, "half")

    async def poll_all() -> list[object]:
        db = await StoreThread.open(path)

        async def poll(item: Item, *more: Any) -> object:
            state = FeedState(url=item.feed_url, fetch_url=item.feed_url, etag='"new"')
            pairs: list[tuple[Item, str | None]] = [(item, None)]
            pairs += [(extra, None) for extra in more]
            return await db.run(Store.save, FeedUpdate(state), pairs, now=NOW, round_id="r")

        try:
            polls = [poll(item) for item in good[:15]]
            polls.append(poll(half, BrokenItem()))
            polls += [poll(item) for item in good[15:]]
            results = await asyncio.gather(*polls, return_exceptions=True)
            await asyncio.sleep(StoreThread.BATCH_LINGER * 4)
            with sqlite3.connect(path) as other:  # committed: seen from outside
                seen = {url for (url,) in other.execute("SELECT feed_url FROM entries")}
            assert seen == {item.feed_url for item in good}
        finally:
            await db.close(5)
        return results

    results = asyncio.run(poll_all())
    assert isinstance(results[15], Broken)
    assert all(not isinstance(result, BaseException) for i, result in enumerate(results) if i != 15)
    with Store.open(path) as reopened:
        assert reopened.feed_state(broken_feed).etag is None  # its state was not written
        assert reopened.feed_state(good[0].feed_url).etag == '"new"'
        assert len(all_items(reopened, [item.feed_url for item in good] + [broken_feed])) == 30


def test_store_calls_handed_over_together_come_back_in_time_and_a_cancelled_one_never_runs(
    tmp_path: Path,
) -> None:
    """Calls made in one turn of the event loop reach the store's thread as one message.
    A save queued ahead of a slow call (a render) still gets its result before the slow
    call ends, and a call whose caller gave up before its turn is not run at all."""
    import asyncio
    import time

    from aggregator.store import StoreThread

    ran: list[str] = []

    def slow(store: Store, seconds: float) -> str:
        time.sleep(seconds)
        ran.append("slow")
        return "rendered"

    def note(store: Store, name: str) -> str:
        ran.append(name)
        return name

    item = make_item("https://f.test/feed", "k")
    update = FeedUpdate(FeedState(url=item.feed_url, fetch_url=item.feed_url))

    async def scenario() -> tuple[float, float, list[object]]:
        db = await StoreThread.open(tmp_path / "agg.db")
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()
            saved = asyncio.ensure_future(
                db.run(Store.save, update, [(item, None)], now=NOW, round_id="r")
            )
            rendered = asyncio.ensure_future(db.run(slow, 2.0))
            given_up = asyncio.ensure_future(db.run(note, "given up"))
            after = asyncio.ensure_future(db.run(note, "after"))
            outcome = await saved
            save_back = loop.time() - started
            given_up.cancel()
            results = await asyncio.gather(rendered, given_up, after, return_exceptions=True)
            return save_back, loop.time() - started, [outcome.new, *results]
        finally:
            await db.close(5)

    save_back, all_back, results = asyncio.run(scenario())
    assert save_back < 1.0 < 2.0 <= all_back  # the save did not wait for the render
    assert results[0] == 1
    assert results[1] == "rendered"
    assert isinstance(results[2], asyncio.CancelledError)
    assert results[3] == "after"
    assert ran == ["slow", "after"]  # the cancelled call never ran


def test_a_read_is_not_held_behind_a_save_waiting_for_another_process_s_lock(
    tmp_path: Path,
) -> None:
    """Another process (a hand-run `poll --once`) holds the write lock: a save waits for
    it, but the feed-state read handed over with it comes back at once."""
    import asyncio

    from aggregator.store import StoreThread

    path = tmp_path / "agg.db"
    Store.open(path).close()
    item = make_item("https://f.test/feed", "k")
    update = FeedUpdate(FeedState(url=item.feed_url, fetch_url=item.feed_url))

    async def scenario() -> tuple[float, float]:
        db = await StoreThread.open(path)
        loop = asyncio.get_running_loop()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        loop.call_later(1.5, other.execute, "COMMIT")
        try:
            started = loop.time()
            read = asyncio.ensure_future(db.run(Store.feed_state, item.feed_url))
            saved = asyncio.ensure_future(
                db.run(Store.save, update, [(item, None)], now=NOW, round_id="r")
            )
            await read
            read_back = loop.time() - started
            await saved
            return read_back, loop.time() - started
        finally:
            await db.close(5)
            other.close()

    read_back, save_back = asyncio.run(scenario())
    assert read_back < 0.5 < 1.4 < save_back


def test_a_failure_of_the_store_s_thread_fails_its_callers_instead_of_hanging_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug outside any call (here, in the group commit's bookkeeping) stops the thread:
    the calls handed over with it and every later call fail with StoreError, none waits
    forever, and closing still returns."""
    import asyncio

    from aggregator.store import StoreThread

    def broken(self: StoreThread, call: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(StoreThread, "_batch_step", broken)
    update = FeedUpdate(FeedState(url="https://f.test/feed", fetch_url="https://f.test/feed"))

    async def scenario() -> list[object]:
        db = await StoreThread.open(tmp_path / "agg.db")
        try:
            calls = [
                db.run(Store.feed_state, "https://f.test/feed"),
                db.run(Store.save, update, now=NOW, round_id="r"),
            ]
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
            later = await asyncio.wait_for(
                asyncio.gather(db.run(Store.feed_states), return_exceptions=True), 5
            )
            return [*results, *later]
        finally:
            await asyncio.wait_for(db.close(5), 10)

    results = asyncio.run(scenario())
    assert [type(r) for r in results] == [StoreError, StoreError, StoreError]


def test_a_migration_that_fails_half_way_leaves_the_old_keys_to_migrate_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 011 runs in one transaction: when its last statement fails, the old
    table is still there (not half rewritten), and the next open migrates it."""
    from sqlite_utils import Database

    path = tmp_path / "agg.db"
    with Store.open(path) as store:
        save(store, make_item("https://a.test/feed", "1", title="Missile launch", text=STORY))
        keys = store.db.execute("SELECT count(*) FROM item_keys").fetchone()[0]
        _keys_as_before_011(store)
    real_execute = Database.execute

    def failing(self: Database, sql: str, *args: Any) -> Any:
        if sql.startswith("CREATE TRIGGER items_keys_delete"):
            raise sqlite3.OperationalError("disk I/O error")
        return real_execute(self, sql, *args)

    monkeypatch.setattr(Database, "execute", failing)
    with pytest.raises(StoreError):
        Store.open(path)
    monkeypatch.setattr(Database, "execute", real_execute)
    with sqlite3.connect(path) as raw:
        assert [c[1] for c in raw.execute("PRAGMA table_info(item_keys)")] == ["key", "item_id"]
    with Store.open(path) as store:
        assert [c.name for c in store.db.table("item_keys").columns] == ["key", "item"]
        assert store.db.execute("SELECT count(*) FROM item_keys").fetchone()[0] == keys


def test_a_topic_of_more_feeds_than_sqlite_takes_parameters_still_reads_and_searches(
    store: Store,
) -> None:
    """One `?` per feed stopped at SQLite's parameter limit (32,766 by default, lower on
    some builds): a topic of 100,000 feeds could not render. The limit is lowered here."""
    store.db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 50)
    feeds = [f"https://f{n}.test/feed" for n in range(200)]
    save(store, make_item(feeds[150], "late", title="Launch seen from Seoul"))
    store.index_for_search()
    assert [i.title for i in store.newest_items(feeds, 10, lambda i, t: True, {})] == [
        "Launch seen from Seoul"
    ]
    found = store.search_items('"seen from Seoul"', limit=5, display_names={}, feed_urls=feeds)
    assert [item.title for item, _ in found] == ["Launch seen from Seoul"]


def test_a_poll_without_entries_whose_feed_row_fails_in_a_group_commit_is_not_stored(
    store: Store,
) -> None:
    """Inside a group commit a poll that brought no entries is written without a
    savepoint, the feed's row first: if that fails, the caller gets StoreError and
    nothing of the poll is written (the feed is fetched again)."""
    from aggregator.store import FetchRecord

    url = "https://a.test/feed"
    store.save(FeedUpdate(FeedState(url=url, fetch_url=url, etag='"1"')), now=NOW, round_id="r")
    store.db.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON feeds BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    fetch = FetchRecord(fetched_at=NOW, duration=0.1, status=304, outcome="not_modified")
    store.db.execute("BEGIN IMMEDIATE")  # as StoreThread's batch does
    with pytest.raises(StoreError, match="cannot write the database: full"):
        store.save(
            FeedUpdate(FeedState(url=url, fetch_url=url, etag='"2"')),
            now=NOW,
            round_id="r",
            fetch=fetch,
        )
    # not a database error: a value the database cannot take (a lone surrogate)
    with pytest.raises(UnicodeEncodeError):
        store.save(
            FeedUpdate(FeedState(url=url, fetch_url=url, title="Bad \ud800 title")),
            now=NOW,
            round_id="r",
            fetch=fetch,
        )
    store.db.execute("COMMIT")
    assert store.feed_state(url).etag == '"1"'
    assert store.fetch_history(url) == []
