"""The exception tree. Library errors are mapped to these where they enter. A feed's
failure also has a kind in a word (`error_kind`), for `status` and /metrics.

AggregatorError
├── ConfigError          feeds.yaml is unreadable or invalid (file, line, where, what)
├── StoreError           the database cannot be opened or written
├── PublishError         an output file cannot be written
├── NotChanged           add/remove/import left feeds.yaml as it was (already present,
│                        no feed found, not found, malformed OPML, result invalid)
├── QueryError           a search cannot run as asked: malformed query, unknown topic,
│                        bad span (`search` exits 2, /search answers 400)
└── FeedError            one feed failed; carries its URL; never stops the others
    ├── FetchError       network trouble: DNS, refused, reset, TLS, bad HTTP
    │   ├── FetchTimeout     connect/read timeout or the per-feed deadline
    │   ├── TooLarge         body over the limit, before or after decompression
    │   ├── TooManyRedirects redirect loop or more than the limit
    │   └── HTTPStatusError  an unexpected status (4xx/5xx)
    │       ├── Gone             410: stop polling until the config changes
    │       └── RetryLater       429/503 with Retry-After
    └── ParseError       the body is not a feed we can read
        └── ParseTimeout     parsing and cleaning took longer than `parse_timeout`
"""

from __future__ import annotations

from datetime import datetime


class AggregatorError(Exception):
    """Base of every error aggregator raises on purpose."""


class ConfigError(AggregatorError):
    """feeds.yaml is invalid; str() is `FILE:LINE: where: what`."""

    def __init__(self, file: str, line: int | None, where: str, what: str) -> None:
        self.file = file
        self.line = line
        self.where = where
        self.what = what
        super().__init__(str(self))

    def __str__(self) -> str:
        location = f"{self.file}:{self.line}" if self.line is not None else self.file
        if self.where:
            return f"{location}: {self.where}: {self.what}"
        return f"{location}: {self.what}"


class StoreError(AggregatorError):
    """The database cannot be opened, migrated or written."""


class PublishError(AggregatorError):
    """An output file cannot be written (disk full, permissions)."""


class Busy(AggregatorError):
    """Work a request asked for cannot start now (too much of it at once): a 503."""


class NotChanged(AggregatorError):
    """`add`, `remove` or `import` did not change feeds.yaml; str() says why (exit 1)."""


class QueryError(AggregatorError):
    """A search cannot run as asked; str() says why, in words for the user."""


class FeedError(AggregatorError):
    """One feed failed. `message` is the one line shown to the user."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        self.message = message
        super().__init__(url, message)

    def __str__(self) -> str:
        return self.message

    def without_tracebacks(self) -> FeedError:
        """This error, and those it was raised from, without their tracebacks: the
        message and causes stay. A poll's result outlives the poll (`poll --once` keeps a
        round's), and a traceback keeps every frame of the failed fetch alive: a round of
        2,000 feeds whose servers all refused peaked at 107 MB instead of 66."""
        seen: set[int] = set()
        error: BaseException | None = self
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            error.__traceback__ = None
            error = error.__cause__ or error.__context__
        return self


class FetchError(FeedError):
    """The feed could not be fetched (network, TLS, malformed HTTP)."""


class FetchTimeout(FetchError):
    """A connect/read timeout or the per-feed total deadline expired."""


class TooLarge(FetchError):
    """The body (raw or decompressed) exceeded the size limit."""


class TooManyRedirects(FetchError):
    """A redirect loop, or more redirects than allowed."""


class HTTPStatusError(FetchError):
    """The server answered with a status we cannot use."""

    def __init__(self, url: str, status: int, message: str) -> None:
        self.status = status
        super().__init__(url, message)


class Gone(HTTPStatusError):
    """410 Gone: the feed is marked gone and no longer polled."""


class RetryLater(HTTPStatusError):
    """429 or 503: the server asked us to wait until `retry_after`."""

    def __init__(self, url: str, status: int, message: str, retry_after: datetime | None) -> None:
        self.retry_after = retry_after
        super().__init__(url, status, message)


class ParseError(FeedError):
    """The body is not a feed (HTML page, empty body, unreadable XML/JSON)."""


class ParseTimeout(ParseError):
    """Parsing and cleaning the body took longer than `parse_timeout`; the worker process
    doing it was killed."""


# --- what kind of failure, in a word -----------------------------------------------------

#: error kind → the few words `status` shows for it (an HTTP error shows its status)
ERROR_KINDS: dict[str, str] = {
    "http": "HTTP error",
    "timeout": "timeout",
    "dns": "DNS",
    "refused": "refused",
    "unreachable": "unreachable",
    "connection": "connection lost",
    "tls": "TLS",
    "blocked": "blocked address",
    "bad_url": "bad URL",
    "too_large": "too large",
    "redirects": "redirect loop",
    "bad_body": "bad encoding",
    "empty": "empty body",
    "bad_xml": "bad XML",
    "bad_json": "bad JSON",
    "not_a_feed": "not a feed",
    "parse_timeout": "parse timeout",
    "internal": "internal error",
    "other": "error",
}

#: (kind, phrases any of which marks it) in the order they are tried: the messages are
#: the ones fetch.py, parse.py and pipeline.py write, stored as `FeedState.last_error`
_KIND_PHRASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("internal", ("internal error", "parsing process died")),
    ("parse_timeout", ("parsing took longer",)),
    ("timeout", ("timed out", "read timeout")),
    ("dns", ("host not found", "dns lookup")),
    ("refused", ("connection refused",)),
    ("unreachable", ("host unreachable",)),
    ("blocked", ("non-public address",)),
    ("tls", ("tls certificate", "tls error")),
    ("too_large", ("body larger than",)),
    ("redirects", ("redirect loop", "redirects")),
    ("bad_url", ("invalid url", "unsupported url")),
    ("bad_body", ("content-encoding", "cannot decode")),
    (
        "connection",
        ("connection", "closed the connection", "cannot connect", "malformed http response"),
    ),
    ("empty", ("empty body",)),
    ("bad_json", ("invalid json feed",)),
    ("bad_xml", ("malformed xml", "malformed feed")),
    ("not_a_feed", ("not a feed",)),
)


def error_kind(status: int | None, message: str | None) -> str:
    """The kind of a feed's failure (a key of ERROR_KINDS) from what is stored of it: its
    HTTP status, else its message. Works on a FeedError's (`kind_of`) and on a stored
    `last_error` alike, so `status` can name the kind of errors stored before kinds were."""
    if status is not None:
        return "http"
    text = (message or "").lower()
    for kind, phrases in _KIND_PHRASES:
        if any(phrase in text for phrase in phrases):
            return kind
    return "other"


def kind_of(error: FeedError) -> str:
    """`error_kind` of a FeedError."""
    status = error.status if isinstance(error, HTTPStatusError) else None
    return error_kind(status, error.message)
