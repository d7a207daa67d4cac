"""`aggregator add`, `remove` and `import`: feeds.yaml changed from the command line.

    add URL     fetch URL (fetch.Fetcher, the config's limits) ─ a feed? that one.
                Else discover.feed_links (<link rel="alternate">), else discover.usual_urls
                (/feed, /rss, …) ─ the chosen one fetched and parsed (parse.parse_feed, in
                a ParsePool worker under `parse_timeout`) ─ feedsfile.append_feeds
    remove X    the feed whose URL (canonical_url) or name is X ─ feedsfile.remove_feed
    import F    opml.read_opml ─ feeds not present yet, none fetched ─ append_feeds

Every edit is a text edit that keeps the rest of the file byte for byte (feedsfile.py),
validated with the config loader's parse_config before it is written, and written
atomically (temporary file, fsync, rename), so a running daemon reloads a whole, valid
file or nothing. Anything that stops a command raises NotChanged, the file untouched.

A feed is "already present" when its canonical URL (urls.canonical_url: http and https,
case, default port, trailing slash, tracking parameters) is a configured feed's.

A missing feeds.yaml is created by `add` and `import` (a new user may start with an
OPML export), holding only the feeds: every setting has a default.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aggregator import discover, feedsfile, opml
from aggregator.config import feed_url_problem, feeds_named, not_utf8, parse_config
from aggregator.errors import ConfigError, FeedError, NotChanged, ParseError
from aggregator.fetch import Fetcher
from aggregator.model import Config, FeedSource, FeedState, Fetched, ParsedFeed, Settings
from aggregator.parse import parse_feed
from aggregator.pipeline import ParsePool, run_loop
from aggregator.progress import Progress
from aggregator.text import single_line
from aggregator.timeutil import utcnow
from aggregator.urls import canonical_url, redact_text, redact_url

#: the start of a feeds.yaml that `add` or `import` creates
NEW_FILE_HEADER = (
    "# aggregator configuration: the feeds to poll (and topics to publish, optional).\n"
    '# Reference: the README\'s "feeds.yaml reference". Validate with: aggregator check\n'
)

#: a body that is a page, not a feed, need not be given to the parser (which starts a
#: worker process): served as HTML and with no feed's root element near its start
_FEED_ROOT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(?:rss|feed|RDF)[\s>/]")

Say = Callable[[str], None]

#: of the feeds a page advertises, at most this many are listed (and the one picked)
MAX_LISTED = 20
#: a feed's name taken from an OPML outline is cut to this many characters
MAX_NAME_CHARS = 200


# --- feeds.yaml ------------------------------------------------------------------------


def read_text(path: Path) -> str | None:
    """feeds.yaml's text; None when there is no such file. ConfigError when it cannot
    be read."""
    try:
        return _read(path)
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from error
    except OSError as error:
        raise ConfigError(str(path), None, "", f"cannot read: {error.strerror}") from error


def _read(path: Path) -> str:
    """A file's text with its line endings as they are: read_text() would turn CRLF into
    LF, and the edit written back would change every line of the file."""
    with path.open(encoding="utf-8", newline="") as file:
        return file.read()


def current_config(text: str | None, path: Path, *, feeds_optional: bool) -> Config | None:
    """The config as it is (ConfigError when invalid); None when there is no file yet,
    or, with `feeds_optional`, it is valid but for having no feeds."""
    if text is None:
        return None
    try:
        return parse_config(text, path)
    except ConfigError as error:
        if feeds_optional and error.what.startswith(("no feeds configured", "missing: at least")):
            return None
        raise


def write_text(path: Path, before: str | None, after: str) -> None:
    """Write feeds.yaml's new text: only when the config loader accepts it, and only if
    the file still reads `before` (nobody saved it meanwhile); atomically, keeping the
    file's permissions, through a symlink to wherever it points."""
    try:
        parse_config(after, path)
    except ConfigError as error:
        raise NotChanged(f"{path} not changed: the result would be invalid: {error}") from error
    target = Path(os.path.realpath(path))
    try:
        now = _read(target) if target.exists() else None
    except (OSError, UnicodeError) as error:
        raise NotChanged(f"{path} not changed: cannot read it again: {error}") from error
    if now != before:
        raise NotChanged(f"{path} not changed: it was edited meanwhile; run the command again")
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    temporary = None
    try:
        fd, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(after)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
        temporary = None
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise NotChanged(f"{path} not changed: cannot write: {error}") from error
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _present(config: Config | None) -> dict[str, tuple[int, FeedSource]]:
    """Configured feeds by canonical URL, with their index."""
    if config is None:
        return {}
    return {canonical_url(feed.url): (index, feed) for index, feed in enumerate(config.feeds)}


def _describe(config: Config, index: int, feed: FeedSource) -> str:
    name = f" ({single_line(feed.name)})" if feed.name else ""
    line = f", line {feed.line}" if feed.line else ""
    return f"feeds[{index}] {redact_url(feed.url)}{name}{line}"


# --- add -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """The feed `add` settled on."""

    #: as it goes into feeds.yaml: where it was found, or where it moved for good (301/308)
    url: str
    #: the feed's own title
    title: str | None
    #: the URLs that led there (the page, redirects), for the duplicate check
    seen: tuple[str, ...] = ()


def normalize_input_url(url: str) -> str:
    """A URL as typed: `example.org/blog` means https://example.org/blog."""
    url = url.strip()
    if "://" not in url and not url.startswith("//"):
        url = "https://" + url
    return url


def add(
    path: Path,
    url: str,
    *,
    name: str | None = None,
    tags: Sequence[str] = (),
    pick: int | None = None,
    say: Say,
) -> str:
    """Find the feed at `url` and append it to feeds.yaml; the line to print."""
    url = normalize_input_url(url)
    problem = feed_url_problem(url)
    if problem:
        raise NotChanged(problem)
    if name is not None:
        name = single_line(name)
        if not name:
            raise NotChanged("--name must not be empty")
    text = read_text(path)
    config = current_config(text, path, feeds_optional=True)
    present = _present(config)
    _check_absent(config, present, url)
    if config is not None and name is not None:
        for index, feed in enumerate(config.feeds):
            if feed.name == name:
                raise NotChanged(f"the name {name!r} is taken by {_describe(config, index, feed)}")
    settings = config.settings if config is not None else _settings_without_feeds(text, path)

    found = run_loop(find_feed(url, settings, pick=pick, say=say))
    for seen in (found.url, *found.seen):
        _check_absent(config, present, seen)

    new = feedsfile.NewFeed(found.url, name, tuple(dict.fromkeys(tags)))
    # read again: the fetching took time, and the file may have been saved meanwhile
    text = read_text(path)
    try:
        after = feedsfile.append_feeds(text if text is not None else NEW_FILE_HEADER, [new])
    except feedsfile.EditError as error:
        raise NotChanged(f"{path} not changed: {error}") from error
    write_text(path, text, after)
    title = f" ({single_line(found.title)})" if found.title else ""
    created = " (created)" if text is None else ""
    return f"added {redact_url(found.url)}{title} to {path}{created}"


def _settings_without_feeds(text: str | None, path: Path) -> Settings:
    """The settings of a feeds.yaml that lists no feed yet (its limits apply to `add`'s
    requests too): those of the same text with a placeholder feed; the defaults when
    there is no file."""
    if text is None:
        return Settings()
    placeholder = feedsfile.NewFeed("https://placeholder.invalid/feed", None, ())
    try:
        return parse_config(feedsfile.append_feeds(text, [placeholder]), path).settings
    except (ConfigError, feedsfile.EditError):
        return Settings()


def _check_absent(
    config: Config | None, present: dict[str, tuple[int, FeedSource]], url: str
) -> None:
    entry = present.get(canonical_url(url))
    if config is not None and entry is not None:
        index, feed = entry
        shown = redact_url(url)
        raise NotChanged(f"already in {config.path}: {shown} is {_describe(config, index, feed)}")


async def find_feed(url: str, settings: Settings, *, pick: int | None, say: Say) -> Found:
    """The feed at `url`, or the one the page at `url` leads to; NotChanged when none.

    Every request is made for the URL the user typed: a page there may lead to feeds
    anywhere, but a public page never to an address on the private network (fetch.py's
    rule for a configured feed and its redirects)."""
    parser = ParsePool(1, timeout=settings.parse_timeout.total_seconds())
    try:
        async with Fetcher(settings.fetch_limits()) as fetcher:
            finder = _Finder(url, fetcher, parser)
            return await finder.find(pick, say)
    finally:
        parser.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Finder:
    typed: str
    fetcher: Fetcher
    parser: ParsePool
    tried: list[str] = field(default_factory=list)

    async def fetch(self, url: str) -> Fetched:
        result = await self.fetcher.fetch(FeedState(url=self.typed, fetch_url=url), utcnow())
        if not isinstance(result, Fetched):  # no validators are sent: a 304 makes no sense
            raise FeedError(url, f"HTTP {result.status} without a body")
        return result

    async def parse(self, fetched: Fetched) -> ParsedFeed:
        """The body as a feed; ParseError when it is none (or an empty one)."""
        content_type = fetched.headers.get("content-type", "").lower()
        if "html" in content_type and not _FEED_ROOT.search(fetched.body[:65536]):
            raise ParseError(fetched.url, "not a feed (an HTML page)")
        feed = await self.parser.run(
            parse_feed, fetched.body, dict(fetched.headers), fetched.url, url=fetched.url
        )
        if not feed.entries and not feed.title:
            raise ParseError(fetched.url, "an empty feed: no title and no entries")
        return feed

    async def find(self, pick: int | None, say: Say) -> Found:
        shown = redact_url(self.typed)
        try:
            page = await self.fetch(self.typed)
        except FeedError as error:
            raise NotChanged(f"cannot fetch {shown}: {error.message}") from error
        seen = (page.url, *((page.moved_to,) if page.moved_to else ()))
        try:
            feed = await self.parse(page)
        except ParseError as page_error:
            reason = page_error.message
        else:
            _check_pick(pick, 1)
            return Found(page.moved_to or self.typed, feed.title, seen)

        candidates = discover.feed_links(page.body, page.url, _charset(page))
        if candidates:
            return await self._choose(candidates, pick, say, seen)
        # none advertised: the usual places on the page's site
        for candidate in discover.usual_urls(page.url):
            try:
                fetched = await self.fetch(candidate)
                feed = await self.parse(fetched)
            except FeedError:
                continue
            _check_pick(pick, 1)
            say(f"found a feed at {redact_url(candidate)} (the page advertises none)")
            return Found(fetched.moved_to or candidate, feed.title, (*seen, fetched.url))
        paths = ", ".join(discover.USUAL_PATHS)
        raise NotChanged(
            f"no feed found at {shown}: it is not a feed ({reason}), it advertises none "
            f'(<link rel="alternate">), and there is none at {paths} on its site'
        )

    async def _choose(
        self,
        candidates: Sequence[discover.Candidate],
        pick: int | None,
        say: Say,
        seen: tuple[str, ...],
    ) -> Found:
        _check_pick(pick, len(candidates))
        chosen = candidates[(pick or 1) - 1]
        if len(candidates) > 1:
            say(f"{redact_url(self.typed)} advertises {len(candidates)} feeds:")
            # a page may advertise thousands: the first ones and the picked one are listed
            listed = set(range(1, MAX_LISTED + 1)) | {pick or 1}
            for number, candidate in enumerate(candidates, 1):
                if number in listed:
                    title = f" ({single_line(candidate.title)})" if candidate.title else ""
                    say(f"  {number}. {redact_url(candidate.url)}{title}")
            if len(candidates) > len(listed):
                say(f"  … and {len(candidates) - len(listed)} more (--pick K takes any of them)")
            if pick is None:
                say("taking 1, the first; choose another with --pick K")
        shown = redact_url(chosen.url)
        try:
            fetched = await self.fetch(chosen.url)
            feed = await self.parse(fetched)
        except FeedError as error:
            raise NotChanged(f"the page's feed {shown} is not usable: {error.message}") from error
        return Found(fetched.moved_to or chosen.url, feed.title, (*seen, fetched.url))


def _charset(fetched: Fetched) -> str | None:
    """The charset the response's Content-Type names (it overrides the page's own
    <meta charset>, as in a browser)."""
    for param in fetched.headers.get("content-type", "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip(" \"'"):
            return value.strip(" \"'")
    return None


def _check_pick(pick: int | None, count: int) -> None:
    if pick is not None and not 1 <= pick <= count:
        found = "1 feed" if count == 1 else f"{count} feeds"
        raise NotChanged(f"--pick {pick}: found {found}, so --pick takes 1 to {count}")


# --- remove ----------------------------------------------------------------------------


def remove(path: Path, target: str) -> list[str]:
    """Remove the feed whose URL or name is `target`; the lines to print."""
    text = read_text(path)
    if text is None:
        raise ConfigError(str(path), None, "", "cannot read: No such file or directory")
    config = parse_config(text, path)
    index = _find(config, target)
    feed = config.feeds[index]
    try:
        removed = feedsfile.remove_feed(text, index)
    except feedsfile.EditError as error:
        raise NotChanged(f"{path} not changed: {error}") from error
    write_text(path, text, removed.text)
    said = [f"removed {_describe(config, index, feed)} from {path}"]
    if removed.kept_comment_lines:
        first, last = removed.kept_comment_lines[0], removed.kept_comment_lines[-1]
        lines = f"line {first}" if first == last else f"lines {first}-{last}"
        said.append(f"kept the comment above it ({lines}): edit it if it was about this feed")
    return said


def _find(config: Config, target: str) -> int:
    """The index of the one feed `target` names (config.feeds_named)."""
    matches = feeds_named(config, target)
    if len(matches) > 1:
        listed = "; ".join(_describe(config, i, config.feeds[i]) for i in matches)
        raise NotChanged(f"{target.strip()!r} matches {len(matches)} feeds: {listed}")
    if not matches:
        raise NotChanged(f"no feed with the URL or name {target.strip()!r} in {config.path}")
    return matches[0]


# --- import ----------------------------------------------------------------------------


@dataclass
class ImportReport:
    added: int = 0
    skipped: int = 0
    invalid: int = 0

    def summary(self) -> str:
        return (
            f"added {self.added}, skipped {self.skipped} (already present), invalid {self.invalid}"
        )


def import_opml(
    path: Path,
    opml_file: Path,
    *,
    tags: Sequence[str] = (),
    say: Say,
    start_progress: Callable[[int], Progress] | None = None,
) -> ImportReport:
    """Append every feed of an OPML file that feeds.yaml lacks; none is fetched.
    `start_progress(total)` makes the Progress shown while the outlines are gone through
    (the lines said meanwhile are printed above it)."""
    try:
        data = opml_file.read_bytes()
    except OSError as error:
        raise NotChanged(f"cannot read {opml_file}: {error.strerror or error}") from error
    try:
        outlines = opml.read_opml(data)
    except opml.OPMLError as error:
        raise NotChanged(f"{opml_file}: not an OPML subscription list: {error}") from error

    text = read_text(path)
    config = current_config(text, path, feeds_optional=True)
    present = _present(config)
    names = {feed.name for feed in config.feeds if feed.name} if config else set()
    report = ImportReport()
    new: dict[str, feedsfile.NewFeed] = {}
    dropped: dict[str, None] = {}
    progress = start_progress(len(outlines)) if start_progress is not None else None

    def tell(line: str) -> None:
        # what an OPML file says reaches the terminal as one line, credentials hidden, as
        # through `say`
        shown = single_line(redact_text(line))
        (progress.print if progress is not None else say)(shown)

    def one(outline: opml.Outline) -> bool:
        """Whether it was invalid."""
        label = outline.label or redact_url(outline.url)
        problem = feed_url_problem(outline.url) if outline.url else "no xmlUrl (its address)"
        if problem:
            report.invalid += 1
            tell(f"invalid: {single_line(label)!r}: {problem}")
            return True
        key = canonical_url(outline.url)
        feed_tags = tuple(dict.fromkeys((*outline.tags, *tags)))
        dropped.update(dict.fromkeys(outline.dropped))
        if key in present:
            report.skipped += 1
            return False
        if key in new:  # listed twice (in two folders): one feed, both folders' tags
            earlier = new[key]
            merged = tuple(dict.fromkeys((*earlier.tags, *feed_tags)))
            new[key] = feedsfile.NewFeed(earlier.url, earlier.name, merged)
            report.skipped += 1
            return False
        # a name is for a person to read: an export's runaway title is cut (and the cut
        # stripped, as the config loader strips every name: else two could differ here only)
        name: str | None = single_line(outline.label)[:MAX_NAME_CHARS].rstrip() or None
        if name is not None and (name == outline.url or redact_url(outline.url) == name):
            name = None  # an export names an untitled feed by its URL
        if name is not None and name in names:
            tell(f"note: the name {name!r} is taken; {redact_url(outline.url)} added unnamed")
            name = None
        if name is not None:
            names.add(name)
        new[key] = feedsfile.NewFeed(outline.url, name, feed_tags)
        report.added += 1
        return False

    with progress if progress is not None else contextlib.nullcontext():
        for outline in outlines:
            invalid = one(outline)
            if progress is not None:
                progress.advance(failed=invalid)
    for label in dropped:
        say(
            f"note: the folder or category {label!r} gives no tag (tags hold only "
            "letters, digits, '_' and '-'); its feeds are imported without it"
        )
    if new:
        try:
            after = feedsfile.append_feeds(
                text if text is not None else NEW_FILE_HEADER, list(new.values())
            )
        except feedsfile.EditError as error:
            raise NotChanged(f"{path} not changed: {error}") from error
        write_text(path, text, after)
    return report
