"""publish.py and the table of formats, in process: content types, conditional requests,
the output cache and replacing files as a set."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import parse_config
from aggregator.publish import OutputCache, is_not_modified, output_response, write_outputs
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


def test_outputs_are_written_only_when_their_bytes_change(tmp_path: Path) -> None:
    assert write_outputs(tmp_path, {"a.atom": b"1", "a.rss": b"1"}) == ["a.atom", "a.rss"]
    assert write_outputs(tmp_path, {"a.atom": b"1", "a.rss": b"2"}) == ["a.rss"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.atom", "a.rss"]
