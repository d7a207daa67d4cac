"""Archive pages beyond a topic's first: cursors, their URL tokens and page names. No I/O.

A topic's pages are keyed by position in time, not by offset (RFC 5005 paged feeds,
section 3): the page after a cursor holds the `max_items` items strictly older than it in
the published order (newest first, then by id), and a page's cursor is its last item. New
items are newer than every page but the first, so they never shift an older page.

An archive page is named `<slug>.before-<token>.<ext>`, a file name in output_dir and a
path the daemon serves for any valid token; `/<slug>.<ext>?before=<token>` is the same page.
The token is `<published, YYYYmmddTHHMMSSZ>-<id>`, the id as `u` + the 32 hex digits of a
`urn:uuid:` (every stored id) or `i` + its UTF-8 in unpadded base64url: URL-safe, without
dots, one token per cursor, at most MAX_TOKEN characters.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime

from aggregator.model import PublishedItem
from aggregator.render import TOPIC_FORMATS
from aggregator.timeutil import to_utc

#: the longest id a cursor carries, in UTF-8 bytes; a page ending on a longer one has no
#: link to older pages (stored ids are `urn:uuid:…`, 45 bytes)
MAX_ID_BYTES = 150
#: the longest token: the date, "-", the kind and the base64 of MAX_ID_BYTES
MAX_TOKEN = 16 + 2 + (MAX_ID_BYTES * 4 + 2) // 3

_UUID_PREFIX = "urn:uuid:"
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_TOKEN = re.compile(r"(\d{8}T\d{6}Z)-(?:u([0-9a-f]{32})|i([A-Za-z0-9_-]+))")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EXTENSIONS = "|".join(re.escape(f.extension) for f in TOPIC_FORMATS)
_PAGE_NAME = re.compile(rf"([a-z0-9-]+)\.before-([^./]*)\.({_EXTENSIONS})")
_FIRST_PAGE_NAME = re.compile(rf"([a-z0-9-]+)\.({_EXTENSIONS})")


class BadCursor(ValueError):
    """A page token that is malformed, too long, or names no moment (HTTP 400)."""


@dataclass(frozen=True)
class Cursor:
    """A position in a topic's items: its page holds the items strictly older."""

    published: datetime
    id: str


@dataclass(frozen=True)
class ArchivePage:
    """A request for the page of `slug` after `cursor`, in the format `extension`."""

    slug: str
    extension: str
    cursor: Cursor

    @property
    def name(self) -> str:
        """Its canonical name (whichever URL form asked for it)."""
        token = encode_cursor(self.cursor)
        assert token is not None  # it was decoded from one
        return f"{page_stem(self.slug, token)}.{self.extension}"


def cursor_of(item: PublishedItem) -> Cursor:
    """The cursor after `item`: the next page starts with the item that follows it."""
    return Cursor(to_utc(item.published).replace(microsecond=0), item.id)


def encode_cursor(cursor: Cursor) -> str | None:
    """The URL token for `cursor`; None when its id is longer than MAX_ID_BYTES."""
    moment = to_utc(cursor.published).strftime(_TIME_FORMAT)
    rest = cursor.id.removeprefix(_UUID_PREFIX)
    if rest != cursor.id and _UUID.fullmatch(rest):
        return f"{moment}-u{rest.replace('-', '')}"
    raw = cursor.id.encode("utf-8", "surrogatepass")
    if not raw or len(raw) > MAX_ID_BYTES:
        return None
    return f"{moment}-i{base64.urlsafe_b64encode(raw).decode('ascii').rstrip('=')}"


def decode_cursor(token: str) -> Cursor:
    """The cursor a token names; BadCursor unless it is exactly what encode_cursor makes."""
    if len(token) > MAX_TOKEN:
        raise BadCursor("page token too long")
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise BadCursor("malformed page token")
    moment, hex_id, b64_id = match.groups()
    try:
        published = datetime.strptime(moment, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise BadCursor("page token names no valid time") from None
    if hex_id is not None:
        h = hex_id
        item_id = f"{_UUID_PREFIX}{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    else:
        try:
            item_id = base64.urlsafe_b64decode(b64_id + "=" * (-len(b64_id) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise BadCursor("malformed page token") from None
    cursor = Cursor(published, item_id)
    if encode_cursor(cursor) != token:  # one token per cursor: no aliases of a page
        raise BadCursor("malformed page token")
    return cursor


def page_stem(slug: str, token: str) -> str:
    """`north-korea.before-<token>`: an archive page's name without the extension."""
    return f"{slug}.before-{token}"


def is_archive_name(name: str) -> bool:
    """Whether a published file name is an archive page (not one of output_names)."""
    return _PAGE_NAME.fullmatch(name) is not None


def archive_slug(name: str) -> str | None:
    """The topic slug of an archive page's file name, else None."""
    match = _PAGE_NAME.fullmatch(name)
    return match.group(1) if match else None


def parse_archive_request(path: str, query: bytes | str = b"") -> ArchivePage | None:
    """The archive page a request asks for, by path (`nk.before-<token>.atom`, without the
    leading slash) or query (`nk.atom?before=<token>`); None when it asks for none.
    BadCursor when it does with a bad token. Whether the topic exists is not checked."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    match = _PAGE_NAME.fullmatch(path)
    if match is not None:
        slug, token, extension = match.groups()
        if query and "before" in urllib.parse.parse_qs(query, keep_blank_values=True):
            raise BadCursor("a page is named by its path or by ?before=, not both")
        return ArchivePage(slug, extension, decode_cursor(token))
    if not query:
        return None
    tokens = urllib.parse.parse_qs(query, keep_blank_values=True).get("before")
    if tokens is None:
        return None
    first = _FIRST_PAGE_NAME.fullmatch(path)
    if first is None:
        return None
    if len(tokens) != 1:
        raise BadCursor("one before= at most")
    slug, extension = first.groups()
    return ArchivePage(slug, extension, decode_cursor(tokens[0]))
