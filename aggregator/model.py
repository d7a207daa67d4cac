"""The frozen data objects passed between pipeline stages. No I/O.

config ─ Config(Settings, Topic, FeedSource)
store  ─ FeedState ──► fetch ─ Fetched | NotModified ──► parse ─ ParsedFeed(ParsedEntry)
       ──► clean ─ Item ──► dedupe/store ─ PollResult
store  ─ PublishedItem(SourceRef) ──► render ─ bytes
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator.errors import FeedError
from aggregator.urls import redact_url

if TYPE_CHECKING:
    import regex

# --- configuration -----------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One include/exclude term of a topic."""

    #: the term as written in feeds.yaml ("DPRK" or "/Kim Jong[- ]?Un/")
    source: str
    #: compiled (the `regex` module), case-insensitive; plain terms match whole words
    pattern: regex.Pattern[str]


@dataclass(frozen=True)
class FeedAuth:
    """A feed's `auth:` block: the user name and where its password is kept, so that
    feeds.yaml itself holds no secret. `load_config` reads the password."""

    username: str
    #: a file holding the password (trailing newline ignored); `$VARS` expanded, e.g.
    #: `${CREDENTIALS_DIRECTORY}/feed.pw` under systemd's LoadCredential=
    password_file: Path | None = None
    #: an environment variable holding the password
    password_env: str | None = None
    #: read from the file or variable by load_config; "" until then
    password: str = field(default="", repr=False, compare=False)
    line: int | None = None

    def credentials(self) -> Credentials:
        return Credentials(self.username, self.password)


@dataclass(frozen=True)
class FeedSource:
    """A feed as configured in feeds.yaml."""

    #: the URL as written in feeds.yaml; the feed's identity in the store
    url: str
    #: the user's name for it, or None to use the feed's own title
    name: str | None = None
    tags: tuple[str, ...] = ()
    #: effective poll interval (the feed's own or settings.interval)
    interval: timedelta = timedelta(minutes=30)
    #: credentials kept outside feeds.yaml (userinfo in `url` is the other way)
    auth: FeedAuth | None = None
    #: False: kept in the config but not polled; its stored items stay published until
    #: the retention prunes them
    enabled: bool = True
    #: bounds of the adaptive interval; None when the feed's own `interval` fixes it
    min_interval: timedelta | None = None
    max_interval: timedelta | None = None
    #: replaces our User-Agent for this feed
    user_agent: str | None = None
    #: extra request headers (an API key, a cookie): secrets, sent only to the feed's
    #: origin as credentials are; repr() hides their values
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: at most this many new entries stored from one poll, the newest; None: no cap
    max_items_per_round: int | None = None
    #: line in feeds.yaml, for messages
    line: int | None = None

    @property
    def shown_name(self) -> str:
        """Its name in logs, `status` and metrics: the configured name, else its URL with
        credentials hidden."""
        return self.name or redact_url(self.url)


@dataclass(frozen=True)
class Topic:
    """A published merged feed."""

    #: [a-z0-9-]+, names the output files
    slug: str
    title: str
    description: str = ""
    include: tuple[Term, ...] = ()
    exclude: tuple[Term, ...] = ()
    #: feed names or tags; None selects every feed
    feeds: tuple[str, ...] | None = None
    #: at most this many items led by one feed in the topic's outputs; None: no cap
    max_per_feed: int | None = None
    line: int | None = None


@dataclass(frozen=True)
class Settings:
    """The `settings:` block; paths are already resolved against the config file."""

    database: Path = Path("aggregator.db")
    output_dir: Path = Path("public")
    #: "host:port", or "" for no HTTP server
    listen: str = "127.0.0.1:8080"
    #: ends with "/"
    base_url: str = "http://127.0.0.1:8080/"
    interval: timedelta = timedelta(minutes=30)
    max_items: int = 50
    retention: timedelta = timedelta(days=365)
    #: the most one feed's fetch may take, redirects and body included
    timeout: timedelta = timedelta(seconds=60)
    #: the largest feed body accepted, before and after decompression
    max_feed_size: int = 10 * 1024 * 1024
    #: the most parsing and cleaning one feed's body may take
    parse_timeout: timedelta = timedelta(seconds=60)
    #: requests in flight to one server at most
    per_host_concurrency: int = 4
    #: between the starts of two requests to one server (0: none, as for a local test
    #: server that serves many feeds)
    per_host_spacing: timedelta = timedelta(milliseconds=300)
    #: bounds of the adaptive interval that follows a feed's own rhythm (update.py)
    min_interval: timedelta = timedelta(minutes=10)
    max_interval: timedelta = timedelta(hours=12)
    #: a WebSub hub (https://www.w3.org/TR/websub/) announced in every published feed and
    #: pinged when one changes; None: no hub
    websub_hub: str | None = None

    def fetch_limits(self) -> FetchLimits:
        seconds = self.timeout.total_seconds()
        return FetchLimits(
            max_body_bytes=self.max_feed_size,
            total_timeout=seconds,
            connect_timeout=min(10.0, seconds),
            read_timeout=min(20.0, seconds),
            max_per_host=self.per_host_concurrency,
            per_host_spacing=self.per_host_spacing.total_seconds(),
        )


@dataclass(frozen=True)
class Config:
    path: Path
    settings: Settings
    topics: tuple[Topic, ...]
    feeds: tuple[FeedSource, ...]

    @functools.cached_property
    def feed_by_url(self) -> Mapping[str, FeedSource]:
        """The configured feed of each URL (the first, should a URL repeat): looked up on
        every poll, so not a scan of 100,000 feeds."""
        found: dict[str, FeedSource] = {}
        for feed in self.feeds:
            found.setdefault(feed.url, feed)
        return found

    @functools.cached_property
    def topics_by_feed(self) -> Mapping[str, frozenset[str]]:
        """Slugs of the topics that select each configured feed's URL."""
        from aggregator.topics import selects_feed  # topics imports this module

        found: dict[str, set[str]] = {}
        for topic in self.topics:
            for feed in self.feeds:
                if selects_feed(topic, feed):
                    found.setdefault(feed.url, set()).add(topic.slug)
        return {url: frozenset(slugs) for url, slugs in found.items()}


@dataclass(frozen=True)
class FetchLimits:
    """How politely and defensively we fetch. Defaults are the product's defaults."""

    max_body_bytes: int = 10 * 1024 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    #: the whole fetch of one feed, so a server that drips a byte a second is cut off
    total_timeout: float = 60.0
    max_redirects: int = 5
    max_connections: int = 20
    #: requests in flight to one server (host and port) at most
    max_per_host: int = 4
    #: seconds between the starts of two requests to one server; 0: none
    per_host_spacing: float = 0.3


@dataclass(frozen=True)
class Credentials:
    """HTTP Basic credentials for one feed (its `auth:`, or the userinfo of its URL).

    repr() and str() never show the password, so a credential cannot reach a log line or a
    message by being printed.
    """

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"

    __str__ = __repr__


# --- store → fetch -----------------------------------------------------------------


@dataclass(frozen=True)
class FeedState:
    """What the store remembers about a feed between polls."""

    #: the configured URL (identity)
    url: str
    #: where to fetch: the configured URL, or the target of a permanent redirect
    fetch_url: str
    etag: str | None = None
    last_modified: str | None = None
    #: sha256 of the last body parsed, so an unchanged body costs no parse
    body_hash: str | None = None
    last_fetched: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    next_due: datetime | None = None
    #: a server's Retry-After: not polled before this unless forced
    retry_after: datetime | None = None
    #: 410 seen: not polled until the config changes or forced
    gone: bool = False
    #: with `gone`: the feed's config fingerprint then (update.feed_fingerprint); an edit
    #: of its entry in feeds.yaml changes it, and the feed is tried again
    gone_fingerprint: str | None = None
    #: consecutive failures, for backoff
    failures: int = 0
    #: target of a permanent redirect, shown in `status`
    moved_to: str | None = None
    #: the feed's own title, for names and OPML
    title: str | None = None
    #: the feed's site link
    site_url: str | None = None
    #: the feed's icon (Atom icon/logo, RSS image, JSON Feed favicon/icon): absolute http(s)
    icon_url: str | None = None
    #: the feed's own hint of how often to poll (RSS <ttl>, Cache-Control max-age), seconds
    hint_seconds: int | None = None
    #: new entries a day, from its entries' dates (update.entry_rate); None: not known
    entries_per_day: float | None = None
    #: the WebSub hub the feed declares and the topic (its self URL) to subscribe to
    #: there (update.decide, websub.discover); None: it declares none
    websub_hub: str | None = None
    websub_topic: str | None = None


@dataclass(frozen=True)
class Subscription:
    """A WebSub subscription (websub.py): our callback `id` at `hub` for `topic`, on
    behalf of the configured feed `feed_url`."""

    #: opaque and random: the callback is {base_url}websub/{id}
    id: str
    feed_url: str
    hub: str
    topic: str
    #: the HMAC key the hub signs pushed content with; never logged or shown
    secret: str = field(repr=False)
    #: "pending" (asked, not verified yet), "active" (verified), "denied" (the hub said
    #: no), "unsubscribing" (we asked to end it)
    state: str = "pending"
    #: when the hub's lease ends (active)
    lease_expires: datetime | None = None
    #: when we last asked the hub (subscribe or unsubscribe)
    requested_at: datetime | None = None
    #: why the last request failed or the hub denied it (one line, bounded)
    error: str | None = None


#: the raw hash (Store.known_entries) of an entry whose story was pruned: not stored again
PRUNED = "pruned"


# --- fetch → parse -----------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """A 200 response with its (decompressed) body."""

    #: the URL finally fetched, after redirects
    url: str
    status: int
    body: bytes
    #: response headers, keys lower-cased
    headers: Mapping[str, str]
    etag: str | None = None
    last_modified: str | None = None
    #: the new URL when every redirect on the way was permanent (301/308)
    moved_to: str | None = None


@dataclass(frozen=True)
class NotModified:
    """A 304 to our conditional GET."""

    url: str
    status: int = 304
    etag: str | None = None
    last_modified: str | None = None
    moved_to: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


# --- parse → clean -----------------------------------------------------------------


@dataclass(frozen=True)
class ParsedEntry:
    """One entry as the feed gave it: HTML not yet sanitized, URLs maybe relative."""

    entry_id: str | None
    link: str | None
    title: str
    #: full content (content:encoded, atom:content, content_html); may be ""
    content_html: str
    #: summary/description; may be ""
    summary_html: str
    author: str | None
    categories: tuple[str, ...]
    #: timezone-aware, or None when the feed gave no usable date
    published: datetime | None
    updated: datetime | None
    #: base URL for resolving this entry's relative links (xml:base or the feed URL)
    base_url: str
    #: the entry's lead image as the feed names it (media:thumbnail, media:content,
    #: an image enclosure, JSON Feed image); maybe relative, not yet checked
    image_url: str | None = None


@dataclass(frozen=True)
class ParsedFeed:
    title: str | None
    #: the site's home page (http(s) only, without credentials)
    site_url: str | None
    entries: tuple[ParsedEntry, ...]
    #: the feed's icon, small and square first (Atom icon, JSON Feed favicon), else its
    #: logo (Atom logo, RSS image, JSON Feed icon); http(s) only, without credentials
    icon_url: str | None = None
    #: RSS <ttl> in minutes, a hint for the poll interval
    ttl_minutes: int | None = None
    #: feedparser's complaint about a malformed feed that still gave entries
    warning: str | None = None
    #: the body did not decode in the encoding it declared (or its server did), so
    #: feedparser tried others: which one it settles on depends on every byte
    encoding_guessed: bool = False
    #: WebSub hubs the feed declares (<link rel="hub">, JSON Feed `hubs`): absolute
    #: http(s) URLs without credentials, in the feed's order
    hubs: tuple[str, ...] = ()
    #: the feed's own URL as it declares it (<link rel="self">, JSON Feed `feed_url`):
    #: the WebSub topic
    self_url: str | None = None


# --- clean → store -----------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """A cleaned entry, ready to be deduplicated and stored."""

    feed_url: str
    #: identity within its feed: entry id, else link, else hash of title and content
    entry_key: str
    #: the publisher's link, absolute http(s), minus credentials and tracking parameters
    #: ("" if the entry had none, or none that is http(s))
    link: str
    #: canonical_url(link), for matching only ("" if no link)
    canonical_link: str
    title: str
    #: sanitized, absolute URLs, boilerplate removed
    content_html: str
    summary_html: str
    #: plain text, about 300 characters, cut at a word boundary
    excerpt: str
    #: plain text of title-less content (content, else summary), boilerplate removed
    text: str
    author: str | None
    categories: tuple[str, ...]
    #: UTC; first-seen time when the feed gave none; never later than the fetch
    published: datetime
    updated: datetime
    #: hash of title + content: a change means the entry was edited
    content_hash: str
    #: dedupe.index_keys(title, text), computed with the cleaning (in a worker process);
    #: None means the store computes them
    index_keys: frozenset[int] | None = None
    #: the lead image: the feed's (media:thumbnail, …) else the content's first <img>;
    #: absolute http(s) or "". Not part of `content_hash`: a new image is no edit
    image_url: str = ""


@dataclass(frozen=True)
class PollResult:
    """The outcome of polling one feed. Failure is a value, not an exception."""

    url: str
    status: int | None = None
    new: int = 0
    updated: int = 0
    #: copies of stories already stored (from this or another feed)
    merged: int = 0
    error: FeedError | None = None
    #: why the feed was not fetched (gone, Retry-After), or None
    skipped: str | None = None
    moved_to: str | None = None
    #: seconds spent on this feed
    duration: float = 0.0
    #: the parser complained but entries were used
    warning: str | None = None
    #: True when a body came back identical to the last one and was not parsed
    unchanged: bool = False
    #: the feed's state after the poll, as stored (None when skipped)
    state: FeedState | None = None
    #: the poll changed what the outputs show of the feed itself: its title (the outlet's
    #: name when the config gives none), site or icon
    feed_changed: bool = False

    @property
    def changed_items(self) -> bool:
        """Whether the poll stored new, edited or merged items (its topics may change)."""
        return bool(self.new or self.updated or self.merged)

    @property
    def changed_outputs(self) -> bool:
        """Whether the poll can have changed its topics' published outputs."""
        return self.changed_items or self.feed_changed


# --- store → render ----------------------------------------------------------------


@dataclass(frozen=True)
class SourceRef:
    """One outlet a story came through."""

    #: the feed's display name (config name, else its own title, else its URL)
    title: str
    #: the outlet's site (or the story's link on that outlet)
    url: str
    feed_url: str
    #: the feed's configured tags (the OPML export's `category`)
    tags: tuple[str, ...] = ()
    #: the feed's icon (FeedState.icon_url), or None
    icon_url: str | None = None


@dataclass(frozen=True)
class PublishedItem:
    """A stored story as it is published; one per story however many feeds carried it."""

    #: stable id, e.g. "urn:uuid:…"; never changes once published
    id: str
    link: str
    title: str
    content_html: str
    summary_html: str
    excerpt: str
    author: str | None
    categories: tuple[str, ...]
    #: earliest among the copies, UTC
    published: datetime
    #: latest change, UTC
    updated: datetime
    #: first outlet first
    sources: tuple[SourceRef, ...]
    #: the lead image (Item.image_url), or ""
    image_url: str = ""
    #: when the store last changed the story (a copy arrived, an edit), UTC; None: the
    #: `updated` date. The HTML page tells its times relative to its items' latest change
    changed_at: datetime | None = None
