"""What is published: the topics rendered from the store, written as files (atomic
replacement, only when their bytes change) and served (OutputCache, make_app).

The formats themselves are one table, render.TOPIC_FORMATS."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator import __version__, paging, render, topics
from aggregator.errors import AggregatorError, Busy, PublishError
from aggregator.memory import return_free_memory
from aggregator.model import Config, FeedState, PublishedItem, SourceRef, Topic
from aggregator.render import media_type
from aggregator.search import SearchRequest
from aggregator.store import Store

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("aggregator")

#: archive pages written as files per topic and format beyond the first page (the pages
#: 2 to 1 + ARCHIVE_FILES); the daemon serves every page, files or not
ARCHIVE_FILES = 3


# --- what is published: the topics rendered from the store ------------------------------


def display_names(config: Config, states: Mapping[str, FeedState]) -> dict[str, str]:
    """Feed URL → the name users see: the config's name, else the feed's title, else URL."""
    names = {}
    for source in config.feeds:
        state = states.get(source.url)
        names[source.url] = source.name or (state.title if state else None) or source.url
    return names


def topic_items(
    config: Config, store: Store, topic: Topic, names: dict[str, str]
) -> list[PublishedItem]:
    """The items of the topic's first page."""
    return topic_pages(config, store, topic, names)[0].items


@dataclass(frozen=True)
class TopicPage:
    """One page of a topic: its items, and the cursor of the next older page."""

    items: list[PublishedItem]
    #: where the next older page starts; None when no item is older (the last page)
    older: paging.Cursor | None


def topic_pages(
    config: Config,
    store: Store,
    topic: Topic,
    names: dict[str, str],
    before: paging.Cursor | None = None,
    pages: int = 1,
) -> list[TopicPage]:
    """The topic's first page (or, with `before`, the page after that cursor) and the
    pages that follow it, up to `pages` of them, in one pass over the items.

    Each page is what the page after its predecessor's cursor is on its own (a page's
    `max_per_feed` counts start afresh), so a page's items depend only on the items older
    than its cursor (paging.py)."""
    selected = [s.url for s in config.feeds if topics.selects_feed(topic, s)]
    matcher = topics.TopicMatcher(topic)
    size = config.settings.max_items
    #: items taken per leading feed on the current page, for the topic's `max_per_feed`
    per_feed: dict[str, int] = {}
    taken = 0

    def accept(item: PublishedItem, text: str) -> bool:
        nonlocal taken
        if taken % size == 0:
            per_feed.clear()  # a new page
        lead = item.sources[0].feed_url if item.sources else ""
        if topic.max_per_feed is not None and per_feed.get(lead, 0) >= topic.max_per_feed:
            return False  # one prolific outlet does not fill the page
        if not matcher.matches([item.title, item.summary_html, text, *item.categories]):
            return False
        per_feed[lead] = per_feed.get(lead, 0) + 1
        taken += 1
        return True

    # one item beyond the pages: whether the last of them has an older one
    after = None if before is None else (before.published, before.id)
    items = store.newest_items(selected, size * pages + 1, accept, names, after)
    for term in matcher.slow_terms:
        log.warning(
            "topic %s: the term %s took longer than %g s to search some items, which it"
            " did not match; simplify it",
            topic.slug,
            term,
            topics.SEARCH_TIMEOUT,
        )
    chunks = [items[start : start + size] for start in range(0, len(items), size)] or [[]]
    return [
        TopicPage(chunk, paging.cursor_of(chunk[-1]) if index + 1 < len(chunks) else None)
        for index, chunk in enumerate(chunks[:pages])
    ]


def render_pages(
    topic: Topic, pages: Sequence[TopicPage], base_url: str, hubs: tuple[str, ...] = ()
) -> Iterator[tuple[str, bytes]]:
    """Every format of the topic's first pages (topic_pages): (file name, bytes), the
    first page as `<slug>.<ext>`, the others as archive pages (paging.py)."""
    stem: str | None = topic.slug
    for page in pages:
        if stem is None:
            break  # an archive page we cannot name (paging.MAX_ID_BYTES)
        links, older = _page_links(topic, stem, page, hubs)
        yield from render.render_topic(topic, page.items, base_url, links).items()
        stem = older


def _hubs(config: Config) -> tuple[str, ...]:
    hub = config.settings.websub_hub
    return (hub,) if hub else ()


def _page_links(
    topic: Topic, stem: str, page: TopicPage, hubs: tuple[str, ...] = ()
) -> tuple[render.PageLinks, str | None]:
    """The links of the page named `stem`, and the stem of the next older page. Only the
    first page names the hubs: it is the one that changes, and the one pinged."""
    token = paging.encode_cursor(page.older) if page.older is not None else None
    older = paging.page_stem(topic.slug, token) if token is not None else None
    is_first = stem == topic.slug
    links = render.PageLinks(
        older=older,
        newer=None if is_first else topic.slug,
        page=None if is_first else stem,
        hubs=hubs if is_first else (),
    )
    return links, older


def render_archive_page(
    store: Store, config: Config, page: paging.ArchivePage, changed_at: float = 0.0
) -> Output | None:
    """An archive page as served: rendered from the store now (no file needed); None when
    no topic has that slug. `changed_at`: when the store last changed in a way the page
    may show (the caller's last render)."""
    topic = next((t for t in config.topics if t.slug == page.slug), None)
    if topic is None:
        return None
    names = display_names(config, store.feed_states())
    [found] = topic_pages(config, store, topic, names, before=page.cursor)
    token = paging.encode_cursor(page.cursor)
    assert token is not None
    stem = paging.page_stem(page.slug, token)
    links, _ = _page_links(topic, stem, found)
    formats = {f.extension: f for f in render.TOPIC_FORMATS}
    body = formats[page.extension].render(topic, found.items, config.settings.base_url, links)
    # The latest change among its items, or the store's last change if later: a page
    # also changes when an item joins it late, leaves it (pruned) or a feed is renamed,
    # none of which moves an item's `updated`, and a client sending only
    # If-Modified-Since must not be told its copy of such a page is current.
    latest = max((item.updated.timestamp() for item in found.items), default=0.0)
    return Output.of(page.name, body, max(latest, changed_at))


def search_items(
    store: Store, config: Config, request: SearchRequest, now: datetime
) -> list[tuple[PublishedItem, float]]:
    """The stories of the configured feeds matching a search, best first, with their
    relevance: narrowed to what `request.topic` publishes (its feeds, include and exclude
    terms; not its max_per_feed, which only shares out a page) and to `request.since`."""
    names = display_names(config, store.feed_states())
    topic = request.topic
    feeds = [s.url for s in config.feeds if topic is None or topics.selects_feed(topic, s)]
    accept = None
    if topic is not None and (topic.include or topic.exclude):
        matcher = topics.TopicMatcher(topic)

        def accept(item: PublishedItem, text: str) -> bool:
            return matcher.matches([item.title, item.summary_html, text, *item.categories])

    return store.search_items(
        request.query.match(),
        limit=request.limit,
        display_names=names,
        feed_urls=feeds,
        since=now - request.since if request.since is not None else None,
        accept=accept,
    )


def render_search(
    store: Store, config: Config, request: SearchRequest, extension: str, now: datetime
) -> bytes:
    """A search's results in one of render.SEARCH_FORMATS, as /search serves them."""
    hits = search_items(store, config, request, now)
    items = [item for item, _ in hits]
    parameters = request.parameters()
    if extension == "html":
        return render.render_search_html(request.title(), items, config.topics, parameters)
    return render.render_search_feed(
        extension, request.title(), items, config.settings.base_url, parameters
    )


def render_outputs(
    config: Config, store: Store, only: Collection[str] | None = None
) -> dict[str, bytes]:
    """Published file name → bytes, for every topic or the slugs in `only`; the index and
    OPML always. Same database, same bytes."""
    return dict(iter_outputs(config, store, only))


def iter_outputs(
    config: Config, store: Store, only: Collection[str] | None = None, site_files: bool = True
) -> Iterator[tuple[str, bytes]]:
    """render_outputs as it goes, a page's formats at a time: written as they come, the
    files of a topic's pages are never all in memory at once. Without `site_files`, the
    index and feeds.opml are left out."""
    base_url = config.settings.base_url
    if not site_files and only is not None and not only:
        return  # nothing to render: not even every feed's state is read
    states = store.feed_states()
    names = display_names(config, states)
    hubs = _hubs(config)
    for topic in config.topics:
        if only is not None and topic.slug not in only:
            continue
        pages = topic_pages(config, store, topic, names, pages=1 + ARCHIVE_FILES)
        yield from render_pages(topic, pages, base_url, hubs)
    if not site_files:
        return
    yield "index.html", render.render_index(config.topics, base_url)
    sources = []
    for source in config.feeds:
        state = states.get(source.url)
        site = state.site_url if state and state.site_url else source.url
        sources.append(
            SourceRef(title=names[source.url], url=site, feed_url=source.url, tags=source.tags)
        )
    yield "feeds.opml", render.render_opml("aggregator sources", sources)


def output_names(config: Config) -> list[str]:
    """Every file name the config publishes."""
    return render.output_names(config.topics)


def topics_of_feed(config: Config, feed_url: str) -> set[str]:
    """Slugs of the topics that select this feed: the ones a poll of it can change."""
    return set(config.topics_by_feed.get(feed_url, ()))


def index_and_publish(
    store: Store,
    config: Config,
    only: Collection[str] | None = None,
    trust: bool = False,
    keep: bool = True,
    site: bool = True,
) -> tuple[dict[str, bytes], list[str]]:
    """After a round or a burst of polls: the new items join the search index in one
    batch, then `publish`."""
    store.index_for_search()
    return_free_memory(0)  # the round's and the index's leftovers, before the render's peak
    return publish(store, config, only, trust, keep, site)


def publish(
    store: Store,
    config: Config,
    only: Collection[str] | None = None,
    trust: bool = False,
    keep: bool = True,
    site: bool = True,
) -> tuple[dict[str, bytes], list[str]]:
    """Render outputs (every topic, or those in `only`) and write the ones whose bytes
    changed; returns the rendered files other than archive pages (none without `keep`),
    and the names written.

    With `trust`, `only` is what changed in the store since the last publish (a round's
    changed topics), and the other topics' files are taken to be current, unless the
    config they were rendered with (config_fingerprint, kept in the store) changed since
    or a file is missing: then every topic is rendered. The index and the OPML are
    rendered too (they cost little) unless `site` is False: the caller knows that
    neither the config nor any feed's name or site changed. So a `poll --once` in which
    nothing changed renders nothing, and reads no feed's state."""
    if trust and only is not None and not _outputs_current(store, config):
        only, site = None, True
    rendered: list[str] = []
    kept: dict[str, bytes] = {}

    def noted(outputs: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
        for name, data in outputs:
            rendered.append(name)
            if keep and not paging.is_archive_name(name):
                kept[name] = data
            yield name, data

    outputs = iter_outputs(config, store, only, site)
    written = write_outputs(config.settings.output_dir, noted(outputs))
    slugs = {t.slug for t in config.topics if only is None or t.slug in only}
    remove_stale_pages(config.settings.output_dir, slugs, set(rendered))
    if only is None:
        store.set_meta(PUBLISHED_CONFIG, config_fingerprint(config))
    return kept, written


#: meta row: the config_fingerprint every topic was last rendered with
PUBLISHED_CONFIG = "published_config"
#: meta row: "1" from the start of a `poll --once` round until its publish has written
#: the index and the OPML; a round that finds it set renders them (poll_and_publish)
SITE_OWED = "site_owed"


def config_fingerprint(config: Config) -> str:
    """Changes with anything of the config a rendered file depends on (and the version)."""
    shown = (
        __version__,
        config.settings.base_url,
        config.settings.max_items,
        config.settings.websub_hub,
        config.topics,
        [(f.url, f.name, f.tags) for f in config.feeds],
    )
    return hashlib.sha256(repr(shown).encode()).hexdigest()


def _outputs_current(store: Store, config: Config) -> bool:
    """Whether every topic's files were rendered with this config and are all there."""
    if store.get_meta(PUBLISHED_CONFIG) != config_fingerprint(config):
        return False
    output_dir = config.settings.output_dir
    return all((output_dir / name).is_file() for name in output_names(config))


# --- writing them -------------------------------------------------------------------------


def write_outputs(
    output_dir: Path, outputs: Mapping[str, bytes] | Iterable[tuple[str, bytes]]
) -> list[str]:
    """Replace the files among `outputs` (a mapping, or name and bytes as they are
    rendered) whose bytes changed, as one set; returns their names, sorted (the others
    are not touched).

    Every new file is first written in full to a temporary file in the same directory
    and fsynced; only then are they all renamed over their targets. So a reader sees
    each file old or new, never half-written (even after kill -9 or power loss), and a
    failure while writing (a full disk) leaves the previous set whole, not newer Atom
    beside older RSS.
    """
    staged: list[tuple[str, Path, str]] = []
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, data in outputs.items() if isinstance(outputs, Mapping) else outputs:
            path = output_dir / name
            if _holds(path, data):
                continue
            if path.is_dir():
                # os.replace would fail on it half-way through the renames
                raise IsADirectoryError(errno.EISDIR, "a directory is in the way", str(path))
            staged.append((_write_temporary(path, data), path, name))
        staged.sort(key=lambda staging: staging[2])
        for temporary, path, _ in staged:
            os.replace(temporary, path)
        if staged:
            _fsync_dir(output_dir)
    except BaseException as e:  # a failed render as well: no temporary file stays behind
        for temporary, _, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        if isinstance(e, OSError):
            raise PublishError(f"cannot write outputs in {output_dir}: {e}") from e
        raise
    return [name for _, _, name in staged]


#: a temporary output file this old is a leftover of a process killed while it published
#: (a render takes seconds), not one another process is writing
STALE_TEMPORARY_SECONDS = 3600


def remove_stale_pages(output_dir: Path, slugs: Collection[str], keep: Collection[str]) -> None:
    """Delete the archive page files of these topics that are not in `keep`: the pages
    that moved beyond the ARCHIVE_FILES first ones. Called once the new set is in place,
    so a reader of the new first page finds every page it links to. Temporary files that
    a killed process left (`_write_temporary`) go too, once STALE_TEMPORARY_SECONDS old."""
    removed = False
    try:
        names = os.listdir(output_dir)
    except OSError as e:
        log.warning("cannot list %s for old archive pages: %s", output_dir, e)
        return
    for name in names:
        stale = paging.archive_slug(name) in slugs and name not in keep
        if stale or _is_left_over_temporary(output_dir / name):
            try:
                os.unlink(output_dir / name)
                removed = True
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("cannot remove the old file %s: %s", name, e)
    if removed:
        with contextlib.suppress(OSError):
            _fsync_dir(output_dir)


def _is_left_over_temporary(path: Path) -> bool:
    if not (path.name.startswith(".") and path.name.endswith(_TEMPORARY_SUFFIX)):
        return False
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and time.time() - info.st_mtime > STALE_TEMPORARY_SECONDS


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except FileNotFoundError:
        return False


#: a temporary output file is ".<name>.<random><suffix>"
_TEMPORARY_SUFFIX = ".tmp"


def _write_temporary(path: Path, data: bytes) -> str:
    """`data` in a new temporary file beside `path`, fsynced; its name."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(name, 0o644)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    return name


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- serving ------------------------------------------------------------------------------


def entity_tag(body: bytes) -> str:
    """A strong ETag: the same bytes, the same tag, across restarts and processes."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class Output:
    """One published file as served: bytes, validators and a gzip copy made once."""

    body: bytes
    gzipped: bytes
    etag: str
    modified_at: float
    #: ETag, Last-Modified and caching headers, encoded once rather than per request
    headers: tuple[tuple[bytes, bytes], ...]
    content_type: bytes

    @classmethod
    def of(cls, name: str, body: bytes, modified_at: float) -> Output:
        etag = entity_tag(body)
        content_type = media_type(name)
        page_headers: tuple[tuple[bytes, bytes], ...] = ()
        if content_type.startswith("text/html"):
            # the pages' own inline <style> (by its hash), images over http(s), the search
            # form, and nothing else: no script runs even if a feed's text ever did get in
            page_headers = (
                (b"content-security-policy", render.PAGE_CSP.encode()),
                (b"x-content-type-options", b"nosniff"),
            )
        return cls(
            body=body,
            gzipped=gzip.compress(body, compresslevel=6, mtime=0),
            etag=etag,
            modified_at=int(modified_at),
            headers=(
                (b"etag", etag.encode()),
                (b"last-modified", formatdate(modified_at, usegmt=True).encode()),
                # readers should revalidate: a 304 is cheap, a stale feed is not
                (b"cache-control", b"public, max-age=60, must-revalidate"),
                (b"vary", b"accept-encoding"),
                *page_headers,
            ),
            content_type=content_type.encode(),
        )


class OutputCache:
    """The published files held in memory, so serving never touches the disk.

    Only names that were published are reachable: a request path is looked up in a dict,
    never joined to a filesystem path, so there is no traversal to guard against.
    `refresh` picks up files another process wrote (a hand-run `poll --once` or `build`).
    """

    def __init__(self) -> None:
        self._outputs: dict[str, Output] = {}
        #: (mtime_ns, size, inode) of each file when last read or written by us
        self._stamps: dict[str, tuple[int, int, int]] = {}

    def update(self, outputs: Mapping[str, bytes], now: float | None = None) -> None:
        """Take new bytes for these outputs; unchanged ones keep their validators."""
        moment = time.time() if now is None else now
        fresh = dict(self._outputs)
        for name, body in outputs.items():
            known = fresh.get(name)
            if known is None:
                fresh[name] = Output.of(name, body, moment)
            elif known.body != body:
                # Last-Modified has whole seconds: a change within the second of the last
                # one must still be a later date, or a client sending only
                # If-Modified-Since would be told its copy is current
                fresh[name] = Output.of(name, body, max(moment, known.modified_at + 1))
        self._outputs = fresh  # one assignment: requests see the old set or the new one

    def retain(self, names: Iterable[str]) -> None:
        """Stop serving outputs that are no longer published (a topic was removed)."""
        keep = set(names)
        self._outputs = {n: o for n, o in self._outputs.items() if n in keep}

    def load_dir(self, output_dir: Path, names: Iterable[str]) -> None:
        """Serve what an earlier run published, with the files' own modification times."""
        self._outputs = {}
        self._stamps = {}
        self.refresh(output_dir, names)

    def refresh(self, output_dir: Path, names: Iterable[str]) -> list[str]:
        """Re-read the files among `names` that changed on disk since last seen; returns
        the names whose served bytes changed. Files are replaced atomically, so a read
        sees a whole file."""
        fresh = dict(self._outputs)
        changed = []
        for name in names:
            path = output_dir / name
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if self._stamps.get(name) == stamp and name in fresh:
                    continue
                body = path.read_bytes()
            except OSError:
                continue
            self._stamps[name] = stamp
            known = fresh.get(name)
            if known is None or known.body != body:
                fresh[name] = Output.of(name, body, st.st_mtime)
                changed.append(name)
        self._outputs = fresh
        return changed

    def get(self, name: str) -> Output | None:
        return self._outputs.get(name)

    def names(self) -> list[str]:
        return sorted(self._outputs)


def output_response(
    output: Output,
    method: str,
    accept_encoding: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for a GET or HEAD of a published file: ETag and
    Last-Modified, 304 when the client's copy is current, gzip when asked."""
    headers = list(output.headers)
    if is_not_modified(output.etag, output.modified_at, if_none_match, if_modified_since):
        return 304, headers, b""
    body = output.body
    if accept_encoding and _accepts_gzip(accept_encoding):
        body = output.gzipped
        headers.append((b"content-encoding", b"gzip"))
    headers.append((b"content-type", output.content_type))
    headers.append((b"content-length", str(len(body)).encode()))
    return 200, headers, b"" if method == "HEAD" else body


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (RFC 9110 §12.5.3): `gzip;q=0` and
    `*;q=0` refuse it, `*` accepts it when gzip itself is not named."""
    weights: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.partition(";")
        weight = 1.0
        name, _, value = params.partition("=")
        if name.strip() == "q":
            try:
                weight = float(value)
            except ValueError:
                weight = 0.0
        weights[coding.strip()] = weight
    for coding in ("gzip", "x-gzip", "*"):
        if coding in weights:
            return weights[coding] > 0
    return False


def is_not_modified(
    etag: str, modified_at: float, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    """Whether a conditional request may be answered 304 (`modified_at`: POSIX seconds).

    RFC 9110 §13.2.2: If-None-Match, when sent, decides alone; else If-Modified-Since,
    unless it is not a date (a zone offset too large for Python, OverflowError, included)
    or a date later than now: we never sent it as Last-Modified, so the client's clock
    or cache is wrong, and a 304 would keep its copy until the file changes after that
    date (RFC 2616 §14.25 called such a date invalid; Apache ignores it too).
    """
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or etag in tags
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        if since.tzinfo is None:  # HTTP-dates are GMT
            since = since.replace(tzinfo=UTC)
        moment = since.timestamp()
        return int(modified_at) <= moment <= time.time()
    return False


@dataclass(frozen=True)
class Answer:
    """A response made elsewhere (the daemon's search): status, body and content type."""

    status: int
    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...] = ()


#: a search is answered by (format extension, URL parameters) → Answer
Search = Callable[[str, Mapping[str, str]], Awaitable[Answer]]


def make_app(
    outputs: OutputCache,
    health: Callable[[], tuple[int, dict[str, object]]],
    metrics: Callable[[], bytes],
    archive: Callable[[paging.ArchivePage], Awaitable[Output | None]] | None = None,
    websub: Callable[[Request], Awaitable[Response]] | None = None,
    search: Search | None = None,
) -> ASGIApp:
    """The ASGI app: published outputs, /healthz and /metrics; with `websub` the WebSub
    callbacks (/websub/<id>, websub.Subscriber.endpoint); with `search` /search (and
    /search.atom, .rss, .json); everything else is 404.

    Published files, the requests feed readers make all day, are answered straight from
    the cache without Starlette's request, routing and response objects, which cost more
    than the answer itself; Starlette serves the rest. (Imported here: one-shot commands
    do not serve.)

    `archive` renders a topic's archive page (`nk.before-<token>.atom` or
    `nk.atom?before=<token>`, paging.py) on request; None when there is no such topic. A
    bad token is 400; a store that fails (an AggregatorError) 503.
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    async def healthz(request: Request) -> Response:
        status, body = health()
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    async def prometheus(request: Request) -> Response:
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def not_found(request: Request) -> Response:
        return PlainTextResponse("not found\n", status_code=404)

    async def search_results(request: Request) -> Response:
        extension = request.path_params.get("extension", "html")
        if search is None or extension not in render.SEARCH_FORMATS:
            return await not_found(request)
        answer = await search(extension, request.query_params)
        headers = dict(answer.headers)
        # the query is echoed in every answer: never sniffed, and the page (results or
        # error) gets the published pages' policy, no script
        headers["X-Content-Type-Options"] = "nosniff"
        if answer.media_type.startswith("text/html"):
            headers["Content-Security-Policy"] = render.PAGE_CSP
        if answer.status == 200:
            etag = entity_tag(answer.body)
            headers.update({"ETag": etag, "Cache-Control": "public, max-age=60"})
            if is_not_modified(etag, 0, request.headers.get("if-none-match"), None):
                return Response(status_code=304, headers=headers)
        else:
            headers.setdefault("Cache-Control", "no-store")
        return Response(answer.body, answer.status, headers, answer.media_type)

    routes = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", prometheus, methods=["GET", "HEAD"]),
        Route("/search", search_results, methods=["GET", "HEAD"]),
        Route("/search.{extension}", search_results, methods=["GET", "HEAD"]),
    ]
    if websub is not None:
        routes.append(Route("/websub/{subscription_id}", websub, methods=["GET", "POST"]))
    routes.append(Route("/{name:path}", not_found, methods=["GET", "HEAD"]))
    others = Starlette(routes=routes)

    async def archive_page(path: str, query: bytes) -> Output | Response | None:
        """The archive page asked for, an error response, or None: not an archive page."""
        assert archive is not None
        try:
            page = paging.parse_archive_request(path, query)
        except paging.BadCursor as e:
            return PlainTextResponse(f"bad page: {e}\n", status_code=400)
        if page is None:
            return None
        try:
            found = await archive(page)
        except Busy as e:  # a crowd of requests: answered, not logged one by one
            headers = {"Retry-After": "5"}
            return PlainTextResponse(f"{e}\n", status_code=503, headers=headers)
        except AggregatorError as e:
            log.error("cannot render %s: %s", page.name, e)
            return PlainTextResponse("temporarily unavailable\n", status_code=503)
        return found or PlainTextResponse("not found\n", status_code=404)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path = scope["path"].removeprefix("/") or "index.html"
            query = scope.get("query_string", b"")
            # the cache first: the first pages are what feed readers ask for all day, and
            # only a query (?before=) can make one of their names an archive page
            found = None if query else outputs.get(path)
            if found is None and archive is not None:
                page = await archive_page(path, query)
                if isinstance(page, Response):
                    await page(scope, receive, send)
                    return
                found = page
            if found is None and query:
                found = outputs.get(path)
            if found is not None:
                wanted: dict[bytes, str] = {}
                for key, value in scope["headers"]:
                    if key in _CONDITIONAL_HEADERS and key not in wanted:  # the first wins
                        wanted[key] = value.decode("latin-1")
                status, headers, body = output_response(
                    found,
                    scope["method"],
                    wanted.get(b"accept-encoding"),
                    wanted.get(b"if-none-match"),
                    wanted.get(b"if-modified-since"),
                )
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await others(scope, receive, send)

    return app


#: request headers that decide how a published file is answered (ASGI gives them lowercased)
_CONDITIONAL_HEADERS = frozenset((b"accept-encoding", b"if-none-match", b"if-modified-since"))
