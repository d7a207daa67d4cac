"""publish.py and the table of formats, in process: content types, conditional requests,
the output cache and replacing files as a set."""

from __future__ import annotations

import gzip
import os
from email.utils import formatdate
from pathlib import Path

import pytest

from aggregator.config import parse_config
from aggregator.publish import (
    Output,
    OutputCache,
    is_not_modified,
    output_response,
    write_outputs,
)
from aggregator.render import TOPIC_FORMATS, media_type, output_names

#: the contract's table of published files and their content types
CONTRACT = {
    "nk.atom": "application/atom+xml",
    "nk.rss": "application/rss+xml",
    "nk.json": "application/feed+json",
    "nk.html": "text/html",
    "index.html": "text/html",
    "feeds.opml": "text/x-opml",
}


def test_every_published_name_has_the_contracts_content_type() -> None:
    config = parse_config(
        "topics:\n  nk:\n    title: NK\nfeeds:\n  - url: https://a.example/f\n",
        Path("feeds.yaml"),
    )
    names = output_names(config.topics)
    assert sorted(names) == sorted(CONTRACT)
    for name in names:
        assert media_type(name).split(";")[0] == CONTRACT[name]
    assert len({f.extension for f in TOPIC_FORMATS}) == len(TOPIC_FORMATS)


ETAG = '"abc"'
MODIFIED = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.mark.parametrize(
    "if_none_match, if_modified_since, expected",
    [
        (None, None, False),
        ('"abc"', None, True),
        ('W/"abc"', None, True),
        ('"x", "abc"', None, True),
        ("*", None, True),
        ('"other"', "Tue, 14 Nov 2023 22:13:20 GMT", False),  # If-None-Match decides alone
        (None, "Tue, 14 Nov 2023 22:13:20 GMT", True),
        (None, "Tue, 14 Nov 2023 22:13:19 GMT", False),
        (None, "not a date", False),
    ],
)
def test_conditional_requests(
    if_none_match: str | None, if_modified_since: str | None, expected: bool
) -> None:
    assert is_not_modified(ETAG, MODIFIED, if_none_match, if_modified_since) is expected


def test_the_cache_keeps_validators_of_unchanged_outputs_and_gzips_on_request() -> None:
    cache = OutputCache()
    cache.update({"a.atom": b"<feed/>" * 100}, now=MODIFIED)
    first = cache.get("a.atom")
    assert first is not None
    cache.update({"a.atom": b"<feed/>" * 100}, now=MODIFIED + 60)
    assert cache.get("a.atom") == first  # same bytes, same ETag and Last-Modified
    status, headers, body = output_response(first, "GET", "gzip", None, None)
    assert status == 200 and dict(headers)[b"content-encoding"] == b"gzip"
    assert len(body) < len(first.body)
    status, _, body = output_response(first, "GET", "gzip;q=0", first.etag, None)
    assert (status, body) == (304, b"")
    cache.retain([])
    assert cache.get("a.atom") is None


def test_a_change_within_the_second_of_the_last_gets_a_later_last_modified() -> None:
    cache = OutputCache()
    cache.update({"a.atom": b"<feed>1</feed>"}, now=MODIFIED + 0.2)
    first = served(cache, "a.atom")
    cache.update({"a.atom": b"<feed>2</feed>"}, now=MODIFIED + 0.7)
    second = served(cache, "a.atom")
    assert second.modified_at > first.modified_at
    since = formatdate(first.modified_at, usegmt=True)  # what the first client got
    assert not is_not_modified(second.etag, second.modified_at, None, since)


def test_outputs_are_written_only_when_their_bytes_change(tmp_path: Path) -> None:
    assert write_outputs(tmp_path, {"a.atom": b"1", "a.rss": b"1"}) == ["a.atom", "a.rss"]
    assert write_outputs(tmp_path, {"a.atom": b"1", "a.rss": b"2"}) == ["a.rss"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.atom", "a.rss"]


# --- the output cache ------------------------------------------------------------------

#: MODIFIED as an HTTP-date, and one second before it (written out, not computed)
MODIFIED_HTTP = "Tue, 14 Nov 2023 22:13:20 GMT"
BEFORE_HTTP = "Tue, 14 Nov 2023 22:13:19 GMT"
ATOM = b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>nk</title></feed>'


def served(cache: OutputCache, name: str) -> Output:
    output = cache.get(name)
    assert output is not None, f"{name} is not served"
    return output


def stamp(path: Path, when: float) -> None:
    """Give `path` the modification time `when` (POSIX seconds)."""
    os.utime(path, (when, when))


def test_an_output_carries_its_validators_caching_headers_and_a_gzip_copy() -> None:
    output = Output.of("nk.atom", ATOM, MODIFIED + 0.75)
    headers = dict(output.headers)
    assert output.etag.startswith('"') and output.etag.endswith('"') and len(output.etag) > 10
    assert headers[b"etag"] == output.etag.encode()
    # Last-Modified has whole seconds, and the comparison uses the same second
    assert headers[b"last-modified"] == MODIFIED_HTTP.encode()
    assert output.modified_at == MODIFIED
    assert b"must-revalidate" in headers[b"cache-control"]
    assert headers[b"vary"] == b"accept-encoding"
    assert output.content_type.startswith(b"application/atom+xml")
    assert gzip.decompress(output.gzipped) == ATOM
    assert output.gzipped[4:8] == bytes(4)  # no timestamp in the gzip header
    # the same bytes give the same validators and the same gzip bytes, whenever made
    again = Output.of("nk.atom", ATOM, MODIFIED + 3600)
    assert (again.etag, again.gzipped) == (output.etag, output.gzipped)
    assert Output.of("nk.atom", ATOM + b" ", MODIFIED).etag != output.etag


def test_update_replaces_only_changed_outputs_and_keeps_the_others() -> None:
    cache = OutputCache()
    cache.update({"nk.atom": ATOM, "nk.rss": b"<rss/>"}, now=MODIFIED)
    atom, rss = served(cache, "nk.atom"), served(cache, "nk.rss")
    cache.update({"nk.atom": ATOM + b"\n"}, now=MODIFIED + 60)
    changed = served(cache, "nk.atom")
    assert changed.body == ATOM + b"\n"
    assert changed.etag != atom.etag and changed.modified_at == MODIFIED + 60
    assert served(cache, "nk.rss") is rss  # not named in the update: kept as it was
    assert cache.names() == ["nk.atom", "nk.rss"]
    assert cache.get("nk.json") is None


def test_retain_drops_the_outputs_of_a_removed_topic_only() -> None:
    cache = OutputCache()
    cache.update({"a.atom": b"a", "b.atom": b"b", "index.html": b"i"}, now=MODIFIED)
    kept = served(cache, "a.atom")
    cache.retain(["a.atom", "index.html", "never-published.atom"])
    assert cache.names() == ["a.atom", "index.html"]
    assert served(cache, "a.atom") is kept


def test_load_dir_serves_the_files_of_an_earlier_run_with_their_modification_times(
    tmp_path: Path,
) -> None:
    (tmp_path / "nk.atom").write_bytes(ATOM)
    (tmp_path / "nk.rss").write_bytes(b"<rss/>")
    (tmp_path / "stray.txt").write_bytes(b"not published")
    stamp(tmp_path / "nk.atom", MODIFIED)
    cache = OutputCache()
    cache.update({"gone.atom": b"from before"}, now=MODIFIED)
    cache.load_dir(tmp_path, ["nk.atom", "nk.rss", "nk.json"])
    # only the names asked for that exist; what was in memory before is dropped
    assert cache.names() == ["nk.atom", "nk.rss"]
    atom = served(cache, "nk.atom")
    assert atom.body == ATOM
    assert dict(atom.headers)[b"last-modified"] == MODIFIED_HTTP.encode()
    assert atom.content_type.startswith(b"application/atom+xml")


def test_load_dir_of_a_missing_folder_serves_nothing(tmp_path: Path) -> None:
    cache = OutputCache()
    cache.load_dir(tmp_path / "never-built", ["nk.atom"])
    assert cache.names() == []


def test_refresh_picks_up_a_file_another_process_rewrote(tmp_path: Path) -> None:
    write_outputs(tmp_path, {"nk.atom": ATOM, "nk.rss": b"<rss/>"})
    stamp(tmp_path / "nk.atom", MODIFIED)
    cache = OutputCache()
    cache.load_dir(tmp_path, ["nk.atom", "nk.rss"])
    before = served(cache, "nk.atom")
    assert cache.refresh(tmp_path, ["nk.atom", "nk.rss"]) == []  # nothing changed on disk

    # a hand-run `build` replaces the file (a new inode, as write_outputs does)
    write_outputs(tmp_path, {"nk.atom": ATOM.replace(b"nk", b"NK")})
    stamp(tmp_path / "nk.atom", MODIFIED + 120)
    assert cache.refresh(tmp_path, ["nk.atom", "nk.rss"]) == ["nk.atom"]
    after = served(cache, "nk.atom")
    assert after.body == ATOM.replace(b"nk", b"NK")
    assert after.etag != before.etag
    assert dict(after.headers)[b"last-modified"] == b"Tue, 14 Nov 2023 22:15:20 GMT"
    assert cache.refresh(tmp_path, ["nk.atom", "nk.rss"]) == []


def test_refresh_sees_a_replacement_of_the_same_size_and_time(tmp_path: Path) -> None:
    """Coarse file system clocks: the new file may have the old one's mtime and size."""
    write_outputs(tmp_path, {"nk.atom": b"<feed>aaaa</feed>"})
    stamp(tmp_path / "nk.atom", MODIFIED)
    cache = OutputCache()
    cache.load_dir(tmp_path, ["nk.atom"])
    write_outputs(tmp_path, {"nk.atom": b"<feed>bbbb</feed>"})
    stamp(tmp_path / "nk.atom", MODIFIED)
    assert cache.refresh(tmp_path, ["nk.atom"]) == ["nk.atom"]
    assert served(cache, "nk.atom").body == b"<feed>bbbb</feed>"


def test_refresh_of_a_touched_but_unchanged_file_keeps_its_validators(tmp_path: Path) -> None:
    (tmp_path / "nk.atom").write_bytes(ATOM)
    stamp(tmp_path / "nk.atom", MODIFIED)
    cache = OutputCache()
    cache.load_dir(tmp_path, ["nk.atom"])
    before = served(cache, "nk.atom")
    stamp(tmp_path / "nk.atom", MODIFIED + 600)
    assert cache.refresh(tmp_path, ["nk.atom"]) == []
    # readers holding the old ETag or date still get 304s
    assert served(cache, "nk.atom") is before


def test_refresh_does_not_report_what_the_cache_was_given_itself(tmp_path: Path) -> None:
    """The daemon writes the files and updates the cache with the same bytes: its next
    refresh must not count them as changed by someone else, nor move Last-Modified."""
    cache = OutputCache()
    outputs = {"nk.atom": ATOM, "index.html": b"<html></html>"}
    cache.update(outputs, now=MODIFIED)
    write_outputs(tmp_path, outputs)
    assert cache.refresh(tmp_path, sorted(outputs)) == []
    assert served(cache, "nk.atom").modified_at == MODIFIED


def test_refresh_adds_a_new_file_and_keeps_serving_a_deleted_one(tmp_path: Path) -> None:
    write_outputs(tmp_path, {"a.atom": b"a"})
    cache = OutputCache()
    cache.load_dir(tmp_path, ["a.atom", "b.atom"])
    assert cache.names() == ["a.atom"]
    write_outputs(tmp_path, {"b.atom": b"b"})  # a topic added by a hand-run build
    (tmp_path / "a.atom").unlink()
    assert cache.refresh(tmp_path, ["a.atom", "b.atom"]) == ["b.atom"]
    # a file that cannot be read is not a reason to answer 404: `retain` decides that
    assert served(cache, "a.atom").body == b"a"
    assert served(cache, "b.atom").body == b"b"


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    found = [value for key, value in headers if key == name]
    assert len(found) <= 1, f"{name!r} sent {len(found)} times"
    return found[0] if found else None


@pytest.fixture
def atom_output() -> Output:
    cache = OutputCache()
    cache.update({"nk.atom": ATOM * 20}, now=MODIFIED)
    return served(cache, "nk.atom")


def test_a_plain_get_is_the_body_with_its_type_length_and_validators(atom_output: Output) -> None:
    status, headers, body = output_response(atom_output, "GET", None, None, None)
    assert (status, body) == (200, ATOM * 20)
    assert header(headers, b"content-length") == str(len(ATOM * 20)).encode()
    assert header(headers, b"content-type") == atom_output.content_type
    assert header(headers, b"content-encoding") is None
    assert header(headers, b"etag") == atom_output.etag.encode()
    assert header(headers, b"last-modified") == MODIFIED_HTTP.encode()


def test_head_sends_the_headers_of_the_get_without_a_body(atom_output: Output) -> None:
    for encoding in (None, "gzip"):
        get = output_response(atom_output, "GET", encoding, None, None)
        head = output_response(atom_output, "HEAD", encoding, None, None)
        assert head[0] == 200 and head[2] == b""
        assert head[1] == get[1]  # Content-Length of the body a GET would send
        assert header(head[1], b"content-length") == str(len(get[2])).encode()


@pytest.mark.parametrize(
    "accept_encoding, gzipped",
    [
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("br, *;q=0.1", True),
        ("", False),
        ("identity", False),
        ("br", False),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),  # gzip named and refused: * does not bring it back
        ("*;q=0", False),
        ("gzip;q=nonsense", False),
    ],
)
def test_gzip_only_when_the_client_accepts_it(
    atom_output: Output, accept_encoding: str, gzipped: bool
) -> None:
    status, headers, body = output_response(atom_output, "GET", accept_encoding, None, None)
    assert status == 200
    if gzipped:
        assert header(headers, b"content-encoding") == b"gzip"
        assert gzip.decompress(body) == ATOM * 20 and len(body) < len(ATOM * 20)
    else:
        assert header(headers, b"content-encoding") is None
        assert body == ATOM * 20
    assert header(headers, b"content-length") == str(len(body)).encode()
    assert header(headers, b"vary") == b"accept-encoding"


def conditional(output: Output, if_none_match: str | None, if_modified_since: str | None) -> int:
    return output_response(output, "GET", "gzip", if_none_match, if_modified_since)[0]


def test_304_for_a_current_copy_by_etag_or_date(atom_output: Output) -> None:
    etag = atom_output.etag
    assert conditional(atom_output, etag, None) == 304
    assert conditional(atom_output, f"W/{etag}", None) == 304
    assert conditional(atom_output, f'"stale", {etag}', None) == 304
    assert conditional(atom_output, "*", None) == 304
    assert conditional(atom_output, None, MODIFIED_HTTP) == 304
    assert conditional(atom_output, None, "Wed, 15 Nov 2023 00:00:00 GMT") == 304
    # If-None-Match decides alone: a stale tag with a current date is a 200
    assert conditional(atom_output, '"stale"', MODIFIED_HTTP) == 200
    assert conditional(atom_output, None, BEFORE_HTTP) == 200
    assert conditional(atom_output, None, "yesterday") == 200
    assert conditional(atom_output, None, None) == 200


def test_a_304_has_no_body_and_keeps_the_validators(atom_output: Output) -> None:
    status, headers, body = output_response(atom_output, "GET", "gzip", atom_output.etag, None)
    assert (status, body) == (304, b"")
    assert header(headers, b"etag") == atom_output.etag.encode()
    assert header(headers, b"last-modified") == MODIFIED_HTTP.encode()
    assert header(headers, b"cache-control") is not None
    for absent in (b"content-length", b"content-encoding", b"content-type"):
        assert header(headers, absent) is None, absent


def test_a_change_within_the_same_second_is_told_by_the_etag() -> None:
    """Last-Modified has whole seconds, the ETag follows the bytes."""
    cache = OutputCache()
    cache.update({"nk.atom": ATOM}, now=MODIFIED + 0.1)
    old_etag = served(cache, "nk.atom").etag
    cache.update({"nk.atom": ATOM + b" "}, now=MODIFIED + 0.9)
    new = served(cache, "nk.atom")
    assert conditional(new, old_etag, None) == 200
    assert conditional(new, new.etag, None) == 304
    # the date sent with it (whole seconds) is not "older" than the fractional time
    last_modified = header(list(new.headers), b"last-modified")
    assert last_modified is not None
    assert conditional(new, None, last_modified.decode()) == 304


def test_a_rewritten_file_is_a_200_for_a_reader_of_the_old_one(tmp_path: Path) -> None:
    write_outputs(tmp_path, {"nk.atom": ATOM})
    stamp(tmp_path / "nk.atom", MODIFIED)
    cache = OutputCache()
    cache.load_dir(tmp_path, ["nk.atom"])
    old = served(cache, "nk.atom")
    write_outputs(tmp_path, {"nk.atom": ATOM + b"\n"})
    stamp(tmp_path / "nk.atom", MODIFIED + 60)
    cache.refresh(tmp_path, ["nk.atom"])
    new = served(cache, "nk.atom")
    assert conditional(new, old.etag, None) == 200
    assert conditional(new, None, MODIFIED_HTTP) == 200
    assert conditional(new, new.etag, None) == 304


def test_max_per_feed_keeps_one_prolific_outlet_from_filling_a_topic() -> None:
    """`topics.X.max_per_feed`: at most that many items led by one feed, the newest; the
    other feeds' items fill the rest of `max_items`."""
    from datetime import timedelta

    from aggregator.config import parse_config
    from aggregator.publish import display_names, topic_items
    from aggregator.store import Store
    from tests.test_store import NOW, make_item, save

    busy, quiet = "https://busy.example/feed", "https://quiet.example/feed"
    config = parse_config(
        "settings:\n  per_host_spacing: 0\n  max_items: 5\n"
        "topics:\n  capped:\n    max_per_feed: 2\n  open:\n    title: Open\n"
        f"feeds:\n  - url: {busy}\n  - url: {quiet}\n",
        Path("/tmp/feeds.yaml"),
    )
    capped, uncapped = config.topics
    assert capped.max_per_feed == 2 and uncapped.max_per_feed is None
    with Store.open(":memory:") as store:
        for n in range(6):  # the busy feed's items are the newest
            save(store, make_item(busy, f"b{n}", published=NOW - timedelta(minutes=n)))
        for n in range(2):
            save(store, make_item(quiet, f"q{n}", published=NOW - timedelta(hours=3 + n)))
        names = display_names(config, store.feed_states())
        titles = [item.title for item in topic_items(config, store, capped, names)]
        everything = [item.title for item in topic_items(config, store, uncapped, names)]
    assert titles == ["Title b0", "Title b1", "Title q0", "Title q1"]
    assert everything == [f"Title b{n}" for n in range(5)]


@pytest.mark.parametrize("value", ["0", "-3", "two", "yes", "100001"])
def test_max_per_feed_must_be_a_positive_integer(value: str) -> None:
    from aggregator.config import parse_config
    from aggregator.errors import ConfigError

    text = f"topics:\n  t:\n    max_per_feed: {value}\nfeeds:\n  - url: https://a.example/f\n"
    with pytest.raises(ConfigError) as error:
        parse_config(text, Path("feeds.yaml"))
    assert "feeds.yaml:3" in str(error.value) and "max_per_feed" in str(error.value)
