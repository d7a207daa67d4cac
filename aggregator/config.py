"""feeds.yaml text → Config, or ConfigError(file, line, where, what).

`parse_config` is pure; `load_config` is its I/O shell. The schema is the one in CONTRACT.md.
Every error names the file, the 1-based line and the path of the key (`feeds[3].url`), and
parsing stops at the first problem. One validator per key; each takes the value and a `_Spot`
(where the value sits) and returns the typed value or raises through `_Spot.error`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import httpx
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver

from aggregator.errors import ConfigError
from aggregator.model import Config, FeedAuth, FeedSource, Settings, Term, Topic
from aggregator.timeutil import format_duration
from aggregator.topics import compile_term, selects_feed
from aggregator.urls import canonical_url, redact_text, redact_url

DEFAULT_SETTINGS = Settings()
#: the topic used when feeds.yaml configures none
DEFAULT_TOPIC_SLUG = "all"
DEFAULT_TOPIC_TITLE = "All feeds"

_TOP_KEYS = ("settings", "topics", "feeds")

_SLUG = re.compile(r"[a-z0-9-]+")
_TAG = re.compile(r"[A-Za-z0-9_-]+")
_DURATION_PART = re.compile(r"(\d+)([smhd])")
# at most 12 digits a part: a 5,000-digit number is no duration (and int() refuses it)
_DURATION = re.compile(r"(?:\d{1,12}[smhd]){1,8}")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d{1,15})\s*(B|KB|MB|GB)?")
_UNIT_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
#: characters no value may hold, whatever YAML escape wrote them: lone surrogates cannot be
#: encoded at all (every command that prints or stores the value would die on it), and
#: control characters and non-characters have no place in a URL, name, path or term
_UNUSABLE_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
#: bounds that keep every date computed from a setting (now + interval, now - retention,
#: the backoff) inside the years datetime can represent
MAX_DURATION = timedelta(days=36500)
MAX_ITEMS = 10_000
MAX_SIZE = 1 << 30
MAX_PER_HOST = 100
MAX_HEADERS = 20
MAX_HEADER_VALUE = 4096
_SPACING = re.compile(r"(\d{1,6}(?:\.\d{1,3})?)(ms|s)")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
#: headers a feed's `headers:` may not set, and why
RESERVED_HEADERS = {
    "host": "from the URL",
    "content-length": "a GET has no body",
    "transfer-encoding": "a GET has no body",
    "connection": "connections are pooled",
    "accept-encoding": "bodies are decoded with bounds",
    "if-none-match": "conditional GET",
    "if-modified-since": "conditional GET",
    "authorization": "use auth: or userinfo in the url",
    "user-agent": "use user_agent:",
}
#: slugs name files (`<slug>.atom`): well within any file system's name limit
MAX_SLUG = 100
#: `index.html` is the list of topics; `/search` is the daemon's search page
RESERVED_SLUGS = frozenset({"index", "search"})

T = TypeVar("T")


# --- where a value sits ------------------------------------------------------------


@dataclass(frozen=True)
class _Spot:
    """A value's place in feeds.yaml: the file, its key path and its 1-based line."""

    file: str
    path: str
    line: int | None

    def error(self, what: str) -> NoReturn:
        raise ConfigError(self.file, self.line, self.path, what)

    def key(self, mapping: CommentedMap, key: str) -> _Spot:
        path = f"{self.path}.{key}" if self.path else key
        return _Spot(self.file, path, _key_line(mapping, key, self.line))

    def missing(self, key: str) -> _Spot:
        """Where a required key is missing: its would-be path, the mapping's line."""
        return _Spot(self.file, f"{self.path}.{key}" if self.path else key, self.line)

    def item(self, sequence: CommentedSeq, index: int) -> _Spot:
        line = self.line
        try:
            line = sequence.lc.item(index)[0] + 1
        except (AttributeError, KeyError, IndexError, TypeError):
            pass
        return _Spot(self.file, f"{self.path}[{index}]", line)


#: checks one value at its spot and returns it typed, or raises ConfigError
Validator = Callable[[object, _Spot], object]


def _key_line(mapping: CommentedMap, key: object, fallback: int | None) -> int | None:
    try:
        return int(mapping.lc.key(key)[0]) + 1
    except (AttributeError, KeyError, TypeError):
        # a key that came in through a merge (`<<: *base`) has no position of its own
        return fallback


# --- entry points ------------------------------------------------------------------


def load_config(path: Path) -> Config:
    """Read and validate feeds.yaml; ConfigError (line None) if it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from error
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(str(path), None, "", f"cannot read: {reason}") from error
    return read_secrets(parse_config(text, path))


def not_utf8(path: Path, error: UnicodeDecodeError) -> ConfigError:
    """The error for a config file that is not UTF-8: the line of the first bad byte."""
    line = error.object[: error.start].count(b"\n") + 1
    return ConfigError(str(path), line, "", f"not UTF-8 text: {error.reason}")


#: a password file larger than this is not a password file
MAX_SECRET_BYTES = 4096
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_secrets(config: Config, environ: Mapping[str, str] | None = None) -> Config:
    """`config` with each feed's `auth` password read from its file or environment
    variable; ConfigError naming the feed's auth line when it cannot be."""
    env = os.environ if environ is None else environ
    feeds = []
    for index, feed in enumerate(config.feeds):
        auth = feed.auth
        if auth is not None:
            key = "password_env" if auth.password_env is not None else "password_file"
            spot = _Spot(str(config.path), f"feeds[{index}].auth.{key}", auth.line)
            feeds.append(replace(feed, auth=replace(auth, password=_password(auth, spot, env))))
        else:
            feeds.append(feed)
    return replace(config, feeds=tuple(feeds))


def _password(auth: FeedAuth, spot: _Spot, env: Mapping[str, str]) -> str:
    if auth.password_env is not None:
        value = env.get(auth.password_env)
        if not value:
            spot.error(f"the environment variable {auth.password_env} is not set")
        return value
    assert auth.password_file is not None
    path = Path(os.path.expandvars(str(auth.password_file)))
    try:
        # non-blocking: a FIFO (or a device) must not hang check or a reload
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                spot.error(f"{path} is not a regular file")
            data = os.read(fd, MAX_SECRET_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as error:
        spot.error(f"cannot read {path}: {error.strerror or error}")
    if len(data) > MAX_SECRET_BYTES:
        spot.error(f"{path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        spot.error(f"{path} is not UTF-8 text")
    password = text.removesuffix("\n").removesuffix("\r")
    if not password or _UNUSABLE_CHARACTER.search(password):
        spot.error(f"{path} is empty or holds control characters")
    return password


def parse_config(text: str, path: Path) -> Config:
    """Validate feeds.yaml's text; relative paths in it are resolved against `path`'s folder."""
    file = str(path)
    try:
        document = _load_yaml(text, file)
    except (ValueError, OverflowError, RecursionError, UnicodeError) as error:
        # deeper than the parser's stack, a number beyond int()'s digits: not YAMLErrors
        what = f"cannot be read ({type(error).__name__}): {redact_text(str(error))[:200]}"
        raise ConfigError(file, None, "yaml", what) from error
    root = _Spot(file, "", 1)
    if document is None:
        root.error("no feeds configured: the file is empty")
    if not isinstance(document, CommentedMap):
        root.error(f"expected a mapping with settings, topics and feeds, got {_kind(document)}")
    for key in document:
        _check_key(document, key, root, _TOP_KEYS)

    settings = _parse_settings(document.get("settings"), root.key(document, "settings"), path)
    if "feeds" not in document:
        root.missing("feeds").error("missing: at least one feed is required")
    feeds = _parse_feeds(document["feeds"], root.key(document, "feeds"), settings)
    topics = _parse_topics(document.get("topics"), root.key(document, "topics"), feeds)
    return Config(path=path, settings=settings, topics=topics, feeds=feeds)


def feed_url_problem(url: str) -> str | None:
    """Why `url` cannot be a feed's `url:` (what `check` would say), or None if it can."""
    if _UNUSABLE_CHARACTER.search(url):
        return f"not an http(s) URL: {redact_url(url)!r}"
    try:
        _http_url(url, _Spot("", "url", None))
    except ConfigError as error:
        return error.what
    return None


def is_tag(text: str) -> bool:
    """Whether `text` may be a feed's tag: letters, digits, '_' and '-'."""
    return _TAG.fullmatch(text) is not None


def tag_from_label(label: str) -> str:
    """A folder's or category's label as a tag: accents dropped, every run of other
    characters one '-' ("Tech & Science" → "Tech-Science"); "" when nothing is left.
    A valid tag comes back unchanged."""
    if is_tag(label):
        return label
    ascii_text = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_text).strip("-")


# --- YAML --------------------------------------------------------------------------


def _load_yaml(text: str, file: str) -> Any:
    # Round-trip mode keeps every key's and item's line (`.lc`), which plain loading drops.
    yaml = YAML(typ="rt")
    version = _YAML_DIRECTIVE.search(text)
    if version:
        raise ConfigError(
            file,
            text.count("\n", 0, version.start()) + 1,
            "yaml",
            "a %YAML directive is not supported (feeds.yaml is read as YAML 1.2); remove it",
        )
    # Composed once, then checked and constructed from the same node tree. Our own
    # duplicate check comes first: it names both lines, ruamel names only the second.
    try:
        node = compose_fast(text)
        if node is not None:
            constructor, _ = yaml.get_constructor_parser("")
        else:
            constructor, _ = yaml.get_constructor_parser(text)
            node = constructor.composer.get_single_node()
        _check_duplicate_keys(node, file)
        _check_characters(node, file)
        return constructor.construct_document(node) if node is not None else None
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = error.problem or error.context or str(error)
        raise ConfigError(file, line, "yaml", problem) from error
    except YAMLError as error:
        # ReaderError (a control character) has a character position, not a line
        line = text.count("\n", 0, getattr(error, "position", 0)) + 1
        what = str(getattr(error, "reason", None) or error)
        character = getattr(error, "character", None)
        if isinstance(character, int):
            what = f"character U+{character:04X}: {what}"
        raise ConfigError(file, line, "yaml", what) from error


# a byte-order mark may come first (YAML allows one before each document)
_DIRECTIVE = re.compile(r"^\ufeff?%", re.MULTILINE)
_YAML_DIRECTIVE = re.compile(r"^\ufeff?%YAML\b", re.MULTILINE)


def compose_fast(text: str) -> Node | None:
    """The node tree from libyaml (ruamel.yaml.clib), ten times faster than ruamel's
    Python composer on a long feed list; None when the C extension is missing, the
    document is empty, or libyaml rejects the text, so ruamel's own composer decides and
    words the error; and when there are directives, which only ruamel's own parser
    passes on."""
    if _DIRECTIVE.search(text):
        return None
    try:
        from ruamel.yaml.cyaml import CParser  # type: ignore[attr-defined]
    except ImportError:
        return None

    class Composer(CParser, VersionedResolver):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            VersionedResolver.__init__(self, loader=self)
            # the YAML version is the default one (a directive sends the text to ruamel's
            # own parser), so its implicit resolvers are looked up once, not for every
            # scalar: a fifth of the time a 100,000-feed config took
            self._resolvers = super().versioned_resolver

        @property
        def versioned_resolver(self) -> Any:
            return self._resolvers

    try:
        node: Node | None = Composer(text).get_single_node()
    except YAMLError:
        return None
    return node


def _check_duplicate_keys(node: Node | None, file: str) -> None:
    for mapping in _mapping_nodes(node):
        first_lines: dict[str, int] = {}
        for key_node, _ in mapping.value:
            if not isinstance(key_node, ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first_lines:
                first = first_lines[key_node.value]
                what = f"duplicate key {key_node.value!r} (first on line {first})"
                raise ConfigError(file, line, "yaml", what)
            first_lines[key_node.value] = line


def _check_characters(node: Node | None, file: str) -> None:
    """Refuse a key or value holding a character another command would choke on; checked
    on the composed nodes, where YAML escapes (`"\\ud800"`) are already resolved."""
    for scalar in _scalar_nodes(node):
        value = scalar.value if isinstance(scalar.value, str) else ""
        if scalar.style == ">":
            # ruamel's own composer marks the folds of a folded scalar with "\a"
            value = value.replace("\a", "")
        found = _UNUSABLE_CHARACTER.search(value)
        if found is not None:
            line = scalar.start_mark.line + 1
            code = f"U+{ord(found.group()):04X}"
            if "\ud800" <= found.group() <= "\udfff":
                kind = "a lone surrogate"
            elif found.group() in "\ufffe\uffff":
                kind = "a non-character"
            else:
                kind = "a control character"
            what = f"character {code} ({kind}) is not allowed in a value"
            raise ConfigError(file, line, "yaml", what)


def _scalar_nodes(node: Node | None) -> Iterator[ScalarNode]:
    for current in _nodes(node):
        if isinstance(current, ScalarNode):
            yield current


def _mapping_nodes(node: Node | None) -> Iterator[MappingNode]:
    for current in _nodes(node):
        if isinstance(current, MappingNode):
            yield current


def _nodes(node: Node | None) -> Iterator[Node]:
    """Every node once, in document order (so the first problem in the file is named).
    Iterative and guarded: anchors and aliases can make the node graph share subtrees."""
    pending = [node] if node is not None else []
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, MappingNode):
            for key_node, value_node in reversed(current.value):
                pending += [value_node, key_node]
        elif isinstance(current, SequenceNode):
            pending += reversed(current.value)


# --- generic validators ------------------------------------------------------------


def _kind(value: object) -> str:
    """How a YAML value is named in messages: 'a string', 'a list', 'null'…"""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _check_key(mapping: CommentedMap, key: object, spot: _Spot, allowed: Iterable[str]) -> str:
    if not isinstance(key, str):
        line = _key_line(mapping, key, spot.line)
        _Spot(spot.file, spot.path, line).error(f"keys must be strings, got {_kind(key)} ({key!r})")
    if key not in allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "expected one of " + ", ".join(allowed)
        spot.key(mapping, key).error(f"unknown key; {hint}")
    return key


def _fields(value: object, spot: _Spot, validators: Mapping[str, Validator]) -> dict[str, Any]:
    """Check a mapping's keys and values in file order; null or absent keys are left out.

    The keys are the dataclass fields they fill, so defaults stay in one place: model.py.
    """
    if value is None:
        return {}
    if not isinstance(value, CommentedMap):
        spot.error(f"expected a mapping, got {_kind(value)}")
    fields = {}
    for key, item in value.items():
        name = _check_key(value, key, spot, validators)
        if item is not None:
            where = spot.key(value, name)
            try:
                fields[name] = validators[name](item, where)
            except (ValueError, OverflowError, RecursionError, UnicodeError) as error:
                # a validator's own check missed a value (a number beyond int()'s digits,
                # nesting beyond the stack): still an error that names its line
                where.error(f"unusable value ({type(error).__name__}): {redact_text(str(error))}")
    return fields


def _list(value: object, spot: _Spot) -> CommentedSeq:
    if not isinstance(value, CommentedSeq):
        spot.error(f"expected a list, got {_kind(value)}")
    return value


def _boolean(value: object, spot: _Spot) -> bool:
    if not isinstance(value, bool):
        spot.error(f"expected true or false, got {_kind(value)}")
    return value


def _string(value: object, spot: _Spot) -> str:
    """A non-empty string, surrounding whitespace removed."""
    if not isinstance(value, str):
        spot.error(f"expected a string, got {_kind(value)}")
    text = value.strip()
    if not text:
        spot.error("must not be empty")
    return text


def _text(value: object, spot: _Spot) -> str:
    """Any string, possibly empty (descriptions)."""
    if not isinstance(value, str):
        spot.error(f"expected a string, got {_kind(value)}")
    return value.strip()


def _positive_int(value: object, spot: _Spot, most: int) -> int:
    # bool is an int in Python, but `max_items: yes` is a mistake
    if isinstance(value, bool) or not isinstance(value, int):
        spot.error(f"expected a positive integer, got {_kind(value)}")
    if value < 1:
        spot.error(f"must be at least 1, got {value}")
    if value > most:
        spot.error(f"must be at most {most:,}, got {value}")
    return int(value)


def _duration(value: object, spot: _Spot) -> timedelta:
    """`90s`, `15m`, `2h`, `1d`, or a sum such as `1h30m`; always positive."""
    if isinstance(value, int) and not isinstance(value, bool):
        spot.error(f"expected a duration with a unit (s, m, h or d), got {value}; e.g. {value}m")
    if not isinstance(value, str):
        spot.error(f"expected a duration such as 30m, got {_kind(value)}")
    try:
        return parse_duration(value)
    except ValueError as e:
        spot.error(str(e))


def parse_duration(value: str) -> timedelta:
    """The config's duration syntax (`90s`, `15m`, `2h`, `1d`, `1h30m`), also for command
    options such as `search --since`; ValueError saying what is wrong."""
    text = value.strip()
    if not _DURATION.fullmatch(text):
        raise ValueError(f"expected a duration such as 90s, 15m, 2h or 1d, got {text!r}")
    seconds = sum(
        int(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(text)
    )
    if seconds < 1:
        raise ValueError(f"must be at least 1s, got {text!r}")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"must be at most {MAX_DURATION.days}d (100 years), got {text!r}")
    return timedelta(seconds=seconds)


def _path(value: object, spot: _Spot) -> Path:
    """A file system path; `~` expanded. Joining it to the config's folder keeps it if absolute."""
    return Path(_string(value, spot)).expanduser()


def _http_url(value: object, spot: _Spot) -> str:
    """An absolute http(s) URL with a host, as written."""
    if not isinstance(value, str):
        spot.error(f"expected an http(s) URL, got {_kind(value)}")
    url = value.strip()
    # messages show the URL as logs do: a password in it is not repeated on the terminal
    if not url or _WHITESPACE.search(url):
        spot.error(f"not an http(s) URL: {redact_url(url)!r}")
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            spot.error(f"not an http(s) URL: {redact_url(url)!r}")
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        # the parser the fetcher uses must read it too, host name included ("xn--")
        httpx.URL(url).host  # noqa: B018
    except (ValueError, UnicodeError, httpx.InvalidURL):
        spot.error(f"not a valid http(s) URL: {redact_url(url)!r}")
    return url


#: what str.isspace() calls white space (the same test, one C call for the whole URL)
_WHITESPACE = re.compile(r"\s")


def _list_of(value: object, spot: _Spot, check: Callable[[object, _Spot], T]) -> tuple[T, ...]:
    items = _list(value, spot)
    return tuple(check(item, spot.item(items, index)) for index, item in enumerate(items))


# --- settings ----------------------------------------------------------------------


def _parse_settings(value: object, spot: _Spot, config_path: Path) -> Settings:
    fields = _fields(value, spot, _SETTINGS_VALIDATORS)
    settings = replace(DEFAULT_SETTINGS, **fields)
    # the default interval always lies within the adaptive bounds it did not set: a
    # `interval: 5m` is not lengthened to a default min_interval of 10m
    if "min_interval" not in fields:
        settings = replace(settings, min_interval=min(settings.min_interval, settings.interval))
    if "max_interval" not in fields:
        settings = replace(settings, max_interval=max(settings.max_interval, settings.interval))
    if settings.min_interval > settings.max_interval:
        assert isinstance(value, CommentedMap)  # not the defaults: one of them was given
        where = "max_interval" if "max_interval" in value else "min_interval"
        spot.key(value, where).error(
            f"min_interval ({format_duration(settings.min_interval)}) is longer than"
            f" max_interval ({format_duration(settings.max_interval)})"
        )
    config_dir = config_path.parent
    # relative to feeds.yaml, not to wherever the daemon happens to be started
    return replace(
        settings,
        database=config_dir / settings.database,
        output_dir=config_dir / settings.output_dir,
    )


def _listen(value: object, spot: _Spot) -> str:
    """ "" (no HTTP server) or host:port, host an IPv4 address, a name or [IPv6]."""
    if not isinstance(value, str):
        spot.error(f'expected "host:port" or "", got {_kind(value)}')
    listen = value.strip()
    if not listen:
        return ""
    host, colon, port = listen.rpartition(":")
    if not colon or not host:
        spot.error(f"expected host:port such as 127.0.0.1:8080, got {listen!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        spot.error(f"port must be a number from 1 to 65535, got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            spot.error(f"not an IPv6 address: {host!r}")
    elif ":" in host:
        spot.error(f"write an IPv6 address in brackets, e.g. [::1]:8080, got {listen!r}")
    elif not _HOSTNAME.fullmatch(host):
        spot.error(f"not a host name or address: {host!r}")
    return listen


def _base_url(value: object, spot: _Spot) -> str:
    url = _http_url(value, spot)
    parts = urlsplit(url)
    if parts.username is not None:
        spot.error("must not hold a user name or password: it is published in every feed")
    if parts.query or parts.fragment:
        spot.error(f"must not have a query or fragment: {url!r}")
    return url if url.endswith("/") else url + "/"


def _public_url(value: object, spot: _Spot, what: str) -> str:
    """An http(s) URL without user name, password or fragment: `what` says why."""
    url = _http_url(value, spot)
    parts = urlsplit(url)
    if parts.username is not None:
        spot.error(f"must not hold a user name or password: {what}")
    if parts.fragment:
        spot.error(f"must not have a fragment: {url!r}")
    return url


def _size(value: object, spot: _Spot) -> int:
    """`10MB`, `512KB`, `1GB` (powers of 1024) or a number of bytes; at least 1 KB."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip().upper())):
        size = int(match.group(1)) * _UNIT_BYTES[match.group(2) or "B"]
    else:
        spot.error(f"expected a size such as 512KB, 10MB or 1GB, got {value!r}")
    if size < 1024:
        spot.error(f"must be at least 1KB, got {value!r}")
    if size > MAX_SIZE:
        spot.error(f"must be at most 1GB, got {value!r}")
    return size


def _spacing(value: object, spot: _Spot) -> timedelta:
    """`0` (none), `300ms`, `0.5s` or `2s`: at most a minute."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return timedelta(0)
    if not isinstance(value, str) or not (match := _SPACING.fullmatch(value.strip())):
        spot.error(f"expected 0 or a duration such as 300ms or 1s, got {value!r}")
    amount, unit = float(match.group(1)), match.group(2)
    seconds = amount / 1000 if unit == "ms" else amount
    if seconds > 60:
        spot.error(f"must be at most 60s, got {value!r}")
    return timedelta(seconds=seconds)


_SETTINGS_VALIDATORS: dict[str, Validator] = {
    "database": _path,
    "output_dir": _path,
    "listen": _listen,
    "base_url": _base_url,
    "interval": _duration,
    "max_items": partial(_positive_int, most=MAX_ITEMS),
    "retention": _duration,
    "timeout": _duration,
    "max_feed_size": _size,
    "parse_timeout": _duration,
    "per_host_concurrency": partial(_positive_int, most=MAX_PER_HOST),
    "per_host_spacing": _spacing,
    "min_interval": _duration,
    "max_interval": _duration,
    "websub_hub": partial(_public_url, what="it is published in every feed"),
}


# --- feeds -------------------------------------------------------------------------


def _parse_feeds(value: object, spot: _Spot, settings: Settings) -> tuple[FeedSource, ...]:
    if value is None:
        spot.error("no feeds configured: at least one is required")
    items = _list(value, spot)
    if not items:
        spot.error("no feeds configured: at least one is required")
    feeds: list[FeedSource] = []
    seen_urls: dict[str, tuple[str, int | None]] = {}
    seen_names: dict[str, tuple[str, int | None]] = {}
    for index, item in enumerate(items):
        item_spot = spot.item(items, index)
        feed = _parse_feed(item, item_spot, settings)
        mapping: CommentedMap = item
        url_spot = item_spot.key(mapping, "url")
        _check_unique(_url_key(feed.url), url_spot, seen_urls, "the same URL as")
        if feed.name is not None:
            name_spot = item_spot.key(mapping, "name")
            _check_unique(feed.name, name_spot, seen_names, "the same name as")
        feeds.append(feed)
    return tuple(feeds)


def _check_unique(
    key: str, spot: _Spot, seen: dict[str, tuple[str, int | None]], same_as: str
) -> None:
    if key in seen:
        first_path, first_line = seen[key]
        spot.error(f"{same_as} {first_path} on line {first_line}")
    seen[key] = (spot.path, spot.line)


def _url_key(url: str) -> str:
    """A feed URL as compared for duplicates: scheme and host lower-cased, no trailing slash.
    The user name and password keep their case: two accounts' private feeds are two feeds."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    return parts._replace(
        scheme=parts.scheme.lower(),
        netloc=userinfo + at + host.lower(),
        path=parts.path.rstrip("/"),
    ).geturl()


def _parse_feed(value: object, spot: _Spot, settings: Settings) -> FeedSource:
    if not isinstance(value, CommentedMap):
        spot.error(f"expected a mapping with a url, got {_kind(value)}")
    fields = _fields(value, spot, _FEED_VALIDATORS)
    if "url" not in fields:
        spot.missing("url").error("missing: every feed needs a url")
    if "interval" not in fields:  # the feed's own interval is fixed; else adaptive
        fields["min_interval"] = settings.min_interval
        fields["max_interval"] = settings.max_interval
    return FeedSource(**{"interval": settings.interval, **fields}, line=spot.line)


def _tags(value: object, spot: _Spot) -> tuple[str, ...]:
    return _list_of(value, spot, _tag)


def _tag(value: object, spot: _Spot) -> str:
    tag = _string(value, spot)
    if not _TAG.fullmatch(tag):
        spot.error(f"a tag may hold only letters, digits, '_' and '-', got {tag!r}")
    return tag


def _auth(value: object, spot: _Spot) -> FeedAuth:
    """`{username, password_file}` or `{username, password_env}`: the password itself is
    never written in feeds.yaml (userinfo in the URL is the inline way)."""
    validators: dict[str, Validator] = {
        "username": _string,
        "password_file": _secret_path,
        "password_env": _env_name,
    }
    if not isinstance(value, CommentedMap):
        spot.error("expected a mapping with username and password_file or password_env")
    fields = _fields(value, spot, validators)
    if "username" not in fields:
        spot.missing("username").error("missing: auth needs a username")
    if ":" in fields["username"]:
        spot.key(value, "username").error("a Basic auth user name cannot hold ':'")
    sources = [key for key in ("password_file", "password_env") if key in fields]
    if len(sources) != 1:
        spot.error("give exactly one of password_file or password_env")
    return FeedAuth(**fields, line=spot.key(value, sources[0]).line)


def _secret_path(value: object, spot: _Spot) -> Path:
    return Path(_string(value, spot))


def _env_name(value: object, spot: _Spot) -> str:
    name = _string(value, spot)
    if not _ENV_NAME.fullmatch(name):
        spot.error(f"not an environment variable name: {name!r}")
    return name


def _user_agent(value: object, spot: _Spot) -> str:
    agent = _string(value, spot)
    if len(agent) > MAX_HEADER_VALUE or any(c in agent for c in "\r\n\t"):
        spot.error(f"expected one line of at most {MAX_HEADER_VALUE} characters")
    return agent


def _headers(value: object, spot: _Spot) -> tuple[tuple[str, str], ...]:
    """Extra request headers, `{Name: value}`. Values are secrets (an API key, a cookie):
    no message repeats one."""
    if not isinstance(value, CommentedMap):
        spot.error(f"expected a mapping of header names to values, got {_kind(value)}")
    if len(value) > MAX_HEADERS:
        spot.error(f"at most {MAX_HEADERS} headers, got {len(value)}")
    headers: list[tuple[str, str]] = []
    for name, header_value in value.items():
        where = spot.key(value, name)
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            where.error(f"not an HTTP header name: {redact_text(str(name))!r}")
        if name.lower() in RESERVED_HEADERS:
            reason = RESERVED_HEADERS[name.lower()]
            where.error(f"{name} is set by the aggregator itself ({reason})")
        if isinstance(header_value, bool) or not isinstance(header_value, str | int):
            where.error(f"expected a string value, got {_kind(header_value)}")
        text = str(header_value).strip()
        if not text or len(text) > MAX_HEADER_VALUE or any(c in text for c in "\r\n"):
            where.error(
                f"the value must be one non-empty line of at most {MAX_HEADER_VALUE} characters"
            )
        headers.append((name, text))
    return tuple(headers)


_FEED_VALIDATORS: dict[str, Validator] = {
    "url": _http_url,
    "name": _string,
    "tags": _tags,
    "interval": _duration,
    "auth": _auth,
    "enabled": _boolean,
    "user_agent": _user_agent,
    "headers": _headers,
    "max_items_per_round": partial(_positive_int, most=MAX_ITEMS),
}


# --- topics ------------------------------------------------------------------------


def _parse_topics(value: object, spot: _Spot, feeds: tuple[FeedSource, ...]) -> tuple[Topic, ...]:
    if value is None or (isinstance(value, CommentedMap) and not value):
        return (Topic(slug=DEFAULT_TOPIC_SLUG, title=DEFAULT_TOPIC_TITLE),)
    if not isinstance(value, CommentedMap):
        spot.error(f"expected a mapping of topic slugs, got {_kind(value)}")
    topics: list[Topic] = []
    for slug in value:
        topic_spot = spot.key(value, slug)
        topics.append(_parse_topic(_slug(slug, topic_spot), value[slug], topic_spot, feeds))
    return tuple(topics)


def _slug(slug: object, spot: _Spot) -> str:
    if not isinstance(slug, str):
        spot.error(f"a topic slug must be a string, got {_kind(slug)}; quote it")
    if not _SLUG.fullmatch(slug):
        spot.error("a topic slug may hold only a-z, 0-9 and '-'")
    if len(slug) > MAX_SLUG:
        spot.error(f"a topic slug may be at most {MAX_SLUG} characters (it names files)")
    if slug in RESERVED_SLUGS:
        spot.error(f"{slug!r} is taken by the daemon's own pages; choose another slug")
    return str(slug)


def _parse_topic(slug: str, value: object, spot: _Spot, feeds: tuple[FeedSource, ...]) -> Topic:
    validators: dict[str, Validator] = {
        "title": _string,
        "description": _text,
        "include": _terms,
        "exclude": _terms,
        "feeds": partial(_topic_feeds, feeds=feeds),
        "max_per_feed": partial(_positive_int, most=MAX_ITEMS),
    }
    fields = _fields(value, spot, validators)
    return Topic(**{"title": slug, **fields}, slug=slug, line=spot.line)


def _terms(value: object, spot: _Spot) -> tuple[Term, ...]:
    return _list_of(value, spot, _term)


def _term(value: object, spot: _Spot) -> Term:
    if not isinstance(value, str):
        spot.error(f"expected a string, got {_kind(value)}")
    try:
        return compile_term(value)
    except ValueError as error:
        spot.error(str(error))


def _topic_feeds(value: object, spot: _Spot, feeds: tuple[FeedSource, ...]) -> tuple[str, ...]:
    items = _list(value, spot)
    if not items:
        spot.error("selects no feed: the list is empty (leave `feeds` out to select all)")
    wanted = []
    for index, item in enumerate(items):
        item_spot = spot.item(items, index)
        name = _string(item, item_spot)
        probe = Topic(slug="probe", title="probe", feeds=(name,))
        if not any(selects_feed(probe, feed) for feed in feeds):
            item_spot.error(f"selects no feed: {name!r} is no feed name or tag")
        wanted.append(name)
    return tuple(wanted)


def feeds_named(config: Config, target: str) -> list[int]:
    """Indexes of the configured feeds `target` names, by the first rule any feed meets:
    its URL as written, as shown (credentials hidden), in canonical form, its name exactly,
    its name in any case. (`status --feed` and `remove` name feeds alike.)"""
    target = target.strip()
    folded = target.casefold()
    rules: list[Callable[[FeedSource], bool]] = [
        lambda feed: target in (feed.url, redact_url(feed.url)),
        lambda feed: canonical_url(feed.url) == canonical_url(target),
        lambda feed: feed.name == target,
        lambda feed: feed.name is not None and feed.name.casefold() == folded,
    ]
    for rule in rules:
        matches = [index for index, feed in enumerate(config.feeds) if rule(feed)]
        if matches:
            return matches
    return []
