"""Fetching feeds over HTTP: FeedState → Fetched | NotModified. The only module that does HTTP.

Decision: this is our own minimal client on httpx's transport (`httpx.AsyncHTTPTransport`),
not `httpx.AsyncClient` with its own redirects, proxies and content decoders, because
ours each do something the Client's do not:
- Redirects are followed by hand (`Fetcher._follow`): every hop needs decisions made
  before it is sent (may its target be a non-public address? do the feed's credentials go
  with it, only to the configured origin?), its own per-server slot, and a record after
  (loops, the count, whether every hop was permanent, which makes the feed's new URL; and
  whether credentials were withheld, which a 401 or 403 message then explains).
- The private-network check is made again where the connection is opened, by a network
  backend (`_PublicOnlyBackend`) put into each pool httpx's transport builds (httpx takes
  no backend). Proxies follow from using the transport: the environment's proxies, which
  the Client would read, are read here (`environment_proxies`, `Fetcher._exchange`).
- Direct connections go through a transport per server (`_ServerPools`), so that kept-alive
  connections to many servers do not make every request check all of them.
- Content decoding is ours (`_read_body`): the size limit holds while decompressing, each
  decoder call's output capped at the room left, so a gzip or brotli bomb is stopped
  before it is in memory; httpx's decoders inflate each chunk whole.
- One deadline covers the whole fetch, every hop and the body (`Fetcher.fetch`); httpx's
  timeouts are per operation (connect, read, write, pool).
The Client's other layers (cookies, URL merging, auth flows) we do not want, and they cost
time on every request (measured when they were dropped, c5bb73a).

Defensive by design: bounded concurrency (global and per host), conditional GET, a connect/read
timeout plus a total deadline per feed, redirects followed by hand (counted, loops detected,
permanence tracked), and a body limit enforced on the raw bytes *and* while decompressing, so
neither an endless body nor a gzip bomb is ever held in memory whole.

Credentials: the feed's explicit `Credentials`, else the userinfo of its configured URL, go out
as HTTP Basic auth (RFC 7617, UTF-8), and only to the configured URL's origin (scheme, host,
port; http → https on the same host counts as the same site): a redirect to another origin, or
from https down to http, gets no Authorization header. The userinfo goes nowhere else: it is
stripped from every URL we request or return, and every URL quoted in a message goes through
`redact_url` first. (FeedError.url stays the configured URL, the feed's identity: whoever
shows it redacts it.)

Besides feeds, `post_form` sends WebSub's requests to hubs (websub.py): a POST, no
redirects, the same deadline and private-network policy.

The private network: a feed configured at a public address may not redirect (any hop, or a
stored permanent redirect) to an address that is not public (`is_public_address`: loopback,
private, link-local, CGNAT, multicast, reserved…); a host name is resolved first and refused
when any of its addresses is not public. A feed configured on the LAN or on localhost may
redirect anywhere: its user meant the private network (decided the same way, by resolving the
configured host, once a minute at most; a host that does not resolve counts as public).
For a direct connection the check is made again where the connection is opened
(`_PublicOnlyBackend`), which connects to the very addresses it checked: a host name that
answers a public address to the check and a private one to the connection (DNS rebinding)
gets nowhere. Through a proxy the proxy resolves, so
only the check before the request applies there; and a kept-alive connection is reused
without a new connect, so a host name's current addresses are checked, not the one the
connection was opened to (which matters only for a name some feed configured on the private
network also uses).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import errno
import functools
import importlib
import ipaddress
import re
import socket
import ssl
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar

import httpcore
import httpx

from aggregator import USER_AGENT
from aggregator.errors import (
    FetchError,
    FetchTimeout,
    Gone,
    HTTPStatusError,
    RetryLater,
    TooLarge,
    TooManyRedirects,
)
from aggregator.model import Credentials, FeedState, Fetched, FetchLimits, NotModified
from aggregator.timeutil import to_iso
from aggregator.urls import redact_text, redact_url

__all__ = [
    "ACCEPT",
    "ACCEPT_ENCODING",
    "DEFAULT_LIMITS",
    "Fetcher",
    "cache_max_age",
    "is_public_address",
    "parse_retry_after",
    "server_key",
]

#: how long a configured host's verdict (public or not) is trusted, in seconds
_VERDICT_TTL = 60.0

#: feed types first; HTML last so a site's home page still comes back for the parser to judge
ACCEPT = (
    "application/atom+xml, application/rss+xml, application/feed+json, "
    "application/rdf+xml;q=0.9, application/xml;q=0.9, text/xml;q=0.9, "
    "application/json;q=0.8, text/html;q=0.2, */*;q=0.1"
)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_PERMANENT_REDIRECTS = frozenset({301, 308})
_RETRY_STATUSES = frozenset({429, 503})
_AUTH_STATUSES = frozenset({401, 403})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK = 64 * 1024
#: what is kept of the answer to a POST (`Fetcher.post_form`): a hub's reason, if any
MAX_ANSWER_BYTES = 1024

DEFAULT_LIMITS = FetchLimits()
T = TypeVar("T")
#: servers whose idle connections are kept open at once (`_ServerPools`)
IDLE_SERVERS_KEPT = 64
#: seconds an idle server's connections are kept: httpx's keep-alive expiry
KEEPALIVE_SECONDS = 5.0
#: connections a server's pool keeps once they are idle
IDLE_PER_SERVER = 2


@dataclass(frozen=True)
class _Redirect:
    """Internal: a 3xx answer still to be followed."""

    status: int
    location: str


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once: loading the CA bundle is slow."""
    return httpx.create_ssl_context()


def environment_proxies() -> dict[str, str]:
    """Proxy URL by scheme (http, https) from the environment: HTTP_PROXY, HTTPS_PROXY,
    ALL_PROXY (or their lower-case forms). Hosts in NO_PROXY bypass them per request."""
    found = urllib.request.getproxies_environment()
    proxies = {}
    for scheme in ("http", "https"):
        url = found.get(scheme) or found.get("all")
        if url:
            proxies[scheme] = url if "://" in url else "http://" + url
    return proxies


def _load_brotli() -> Any | None:
    """The brotli module if installed *and* able to bound its output (brotli ≥ 1.2), else None."""
    try:
        brotli = importlib.import_module("brotli")
    except ImportError:
        return None
    if not hasattr(brotli.Decompressor, "can_accept_more_data"):
        return None  # older versions cannot cap output, so a brotli bomb could not be stopped
    return brotli


_BROTLI = _load_brotli()
ACCEPT_ENCODING = "gzip, deflate, br" if _BROTLI is not None else "gzip, deflate"


# --- pure helpers ------------------------------------------------------------------


def parse_retry_after(value: str, now: datetime) -> datetime | None:
    """Retry-After (delta-seconds or HTTP-date, RFC 9110 §10.2.3) as a UTC time, else None."""
    value = value.strip()
    if value.isdigit():
        try:
            return (now + timedelta(seconds=int(value))).astimezone(UTC)
        except OverflowError:
            return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # Overflow: a huge zone offset
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


_MAX_AGE = re.compile(r'(?:^|,)\s*max-age\s*=\s*"?(\d+)"?\s*(?:,|$)', re.IGNORECASE)


def cache_max_age(headers: Mapping[str, str]) -> int | None:
    """Cache-Control max-age in seconds, or None when absent or malformed. No I/O."""
    value = headers.get("cache-control") or headers.get("Cache-Control")
    if not value:
        return None
    match = _MAX_AGE.search(value)
    return int(match.group(1)) if match else None


def _format_size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{round(size / scale, 1):g} {unit}"
    return f"{size} bytes"


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


# --- credentials and redaction -----------------------------------------------------


#: query parameters whose values are secrets: key, api_key, x-api-key, token, access_token,
#: auth, client_secret, password, sig (signed URLs)…
def _userinfo_credentials(url: str) -> Credentials | None:
    """The userinfo of `url` as credentials (percent-decoded), or None when it has none."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    if not parsed.userinfo:
        return None
    return Credentials(parsed.username, parsed.password)


def _basic_authorization(credentials: Credentials) -> str:
    """The Authorization header value for HTTP Basic (RFC 7617, charset UTF-8)."""
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 0)


def _origin_text(url: httpx.URL) -> str:
    default = _DEFAULT_PORTS.get(url.scheme)
    port = f":{url.port}" if url.port and url.port != default else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}"


def server_key(url: httpx.URL | str) -> str:
    """ "host:port" of a URL: the server per-host politeness is owed to."""
    if isinstance(url, str):
        return _server_of(url)
    return f"{url.host.lower()}:{url.port or _DEFAULT_PORTS.get(url.scheme, 0)}"


@functools.lru_cache(maxsize=1 << 16)
def _server_of(text: str) -> str:
    # cached: the poller asks on every poll of a feed, and parsing a URL with httpx takes
    # 30-80 µs, a tenth of a warm round's work per feed
    try:
        url = httpx.URL(text)
        url.host  # noqa: B018 - decodes the IDNA host, which can fail
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return text  # not fetchable either: a key of its own
    return server_key(url)


def _may_send_credentials(configured: httpx.URL, url: httpx.URL) -> bool:
    """Credentials go to the configured origin only; http → https on the same host too."""
    if _origin(url) == _origin(configured):
        return True
    return configured.scheme == "http" and url.scheme == "https" and url.host == configured.host


_AuthUse = Literal["none", "sent", "withheld"]


# --- public and private addresses --------------------------------------------------

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(address: _Address) -> bool:
    """Whether `address` is on the public internet: not loopback, private, link-local,
    unique-local, CGNAT, multicast, unspecified, reserved or otherwise non-global. An IPv6
    address that embeds an IPv4 one (IPv4-mapped, NAT64, 6to4) is judged by the IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


def _literal_address(host: str) -> _Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _first_non_public(addresses: Iterable[str]) -> str | None:
    for address in addresses:
        if not is_public_address(ipaddress.ip_address(address)):
            return address
    return None


async def _resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, in getaddrinfo's order, without blocking the loop.
    (A literal address, numeric forms like "127.1" included, comes back as itself.)"""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        if family in (socket.AF_INET, socket.AF_INET6) and address not in addresses:
            addresses.append(address)
    return addresses


def _refusal(host: str, address: str) -> str:
    named = f" ({host})" if _literal_address(host) is None else ""
    return f"redirect to a non-public address {address}{named} refused"


class _NonPublicAddress(Exception):
    """Internal: a connection for a public-only request would have gone to `address`."""

    def __init__(self, host: str, address: str) -> None:
        self.host = host
        self.address = address
        super().__init__(_refusal(host, address))


#: set while a request that may only reach public addresses is being sent
_PUBLIC_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aggregator_fetch_public_only", default=False
)


class _PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, checking where a public-only request connects.

    Other requests connect as httpcore always does. A public-only one (see `_PUBLIC_ONLY`)
    resolves the host here, refuses when any address is not public, and connects to the
    addresses it checked (in getaddrinfo's order, the connect timeout shared among them), so
    httpcore never resolves the name a second time (no DNS rebinding window). TLS still
    verifies the certificate against the host name: httpcore takes SNI from the URL.
    """

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if not _PUBLIC_ONLY.get():
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                literal = _literal_address(host)
                addresses = [host] if literal is not None else await _resolve(host, port)
        except TimeoutError as e:
            raise httpcore.ConnectTimeout(str(e)) from e
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        refused = _first_non_public(addresses)
        if refused is not None:
            raise _NonPublicAddress(host, refused)
        for index, address in enumerate(addresses):
            share = None
            if deadline is not None:
                share = max(0.0, deadline - loop.time()) / (len(addresses) - index)
            try:
                return await self._inner.connect_tcp(
                    address, port, share, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                if index == len(addresses) - 1:
                    raise
        raise httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# --- bounded decompression ---------------------------------------------------------


class _BodyTooLarge(Exception):
    """Internal: a decoder produced more than the room left."""


class _Decoder(Protocol):
    def decode(self, data: bytes, room: int) -> bytes:
        """Decode `data`; raise _BodyTooLarge rather than return more than `room` bytes."""

    def finish(self, room: int) -> bytes:
        """Flush at the end of the body; raise ValueError if the stream was cut short."""


class _ZlibDecoder:
    """gzip or deflate (zlib-wrapped, or raw as some servers send), output capped per call."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._pending = b""  # for deflate: bytes held until the header can be sniffed
        self._fed = False
        self._inflater: Any = None
        if encoding == "gzip":
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _start_deflate(self, data: bytes) -> None:
        # RFC 9110 says zlib-wrapped; a zlib header is CMF=8 (deflate) with (CMF*256+FLG) % 31 == 0
        is_zlib = data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
        self._inflater = zlib.decompressobj(zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS)

    def decode(self, data: bytes, room: int) -> bytes:
        self._fed = self._fed or bool(data)
        if self._inflater is None:
            self._pending += data
            if len(self._pending) < 2:
                return b""
            data, self._pending = self._pending, b""
            self._start_deflate(data)
        out = bytearray()
        while data:
            # room + 1 so that "exactly room" and "more than room" can be told apart
            chunk = self._inflater.decompress(data, room - len(out) + 1)
            out += chunk
            if len(out) > room:
                raise _BodyTooLarge
            data = b""
            # gzip allows several members back to back (RFC 1952 §2.2)
            if self._encoding == "gzip" and self._inflater.eof and self._inflater.unused_data:
                data = self._inflater.unused_data
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return bytes(out)

    def finish(self, room: int) -> bytes:
        if not self._fed:
            return b""  # an empty body: nothing was encoded
        if self._inflater is None:
            raise ValueError("truncated")
        out = self._inflater.flush()
        if len(out) > room:
            raise _BodyTooLarge
        if not self._inflater.eof:
            raise ValueError("truncated")
        return bytes(out)


class _BrotliDecoder:
    def __init__(self) -> None:
        assert _BROTLI is not None
        self._inflater = _BROTLI.Decompressor()

    def decode(self, data: bytes, room: int) -> bytes:
        assert _BROTLI is not None
        try:
            out: bytes = self._inflater.process(data, max_output_length=room + 1)
        except _BROTLI.error as e:
            raise ValueError(str(e)) from e
        if len(out) > room:
            raise _BodyTooLarge
        return out

    def finish(self, room: int) -> bytes:
        if not self._inflater.is_finished():
            raise ValueError("truncated")
        return b""


def _decoders_for(content_encoding: str) -> list[_Decoder] | None:
    """Decoders in the order to apply them, or None for an encoding we cannot read."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    decoders: list[_Decoder] = []
    for coding in reversed([c for c in codings if c and c != "identity"]):
        if coding in ("gzip", "x-gzip"):
            decoders.append(_ZlibDecoder("gzip"))
        elif coding == "deflate":
            decoders.append(_ZlibDecoder("deflate"))
        elif coding == "br" and _BROTLI is not None:
            decoders.append(_BrotliDecoder())
        else:
            return None
    return decoders


# --- error mapping -----------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


#: a server's pool: (scheme, host, port, whether its connections were checked public)
_Server = tuple[str, str, int | None, bool]


class _ServerPools:
    """Direct connections, one httpx transport (and connection pool) per server.

    httpcore's pool checks every idle connection it holds, with a poll() each, on every
    request it is given. One pool shared by all servers, holding a kept-alive connection
    to each of many, made each request pay for all of them; a pool per server pays for
    that server's own (at most max_per_host). So a server's connection can be kept and
    reused: a round of 304s from few servers opens few connections, which over TLS is a
    handshake saved per feed.

    A request that must reach only the public internet (`_PUBLIC_ONLY`) goes through a
    pool of its own for the server: `_PublicOnlyBackend` checks an address when it opens
    a connection, so such a request never reuses one opened without that check (a name
    that pointed at a private address then).

    The pools of at most `keep` idle servers stay open, each until it has been idle for
    `idle_for` seconds (httpx's own keep-alive expiry), checked on every request and by a
    timer while any is idle; the rest are closed as others go idle. Pools are closed in
    tasks of their own, never inside a request, so a request's deadline or cancellation
    cannot cut a close half-way (leaving its sockets to the garbage collector) or turn a
    finished fetch into a failure."""

    def __init__(
        self, make: Callable[[], httpx.AsyncHTTPTransport], keep: int, idle_for: float
    ) -> None:
        self._make = make
        self._keep = keep
        self._idle_for = idle_for
        self._pools: dict[_Server, httpx.AsyncHTTPTransport] = {}
        #: requests under way through each server's pool
        self._in_use: dict[_Server, int] = {}
        #: server → loop time it went idle, least recently used first
        self._idle: dict[_Server, float] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def take(self, url: httpx.URL) -> tuple[httpx.AsyncHTTPTransport, _Server]:
        """The transport for `url`'s server, and the server to `give_back` once the caller
        is done with it (the response read and closed). Plain calls, not a context
        manager: py-spy found 15 of a warm round's 382 poll samples in contextlib's
        generator-based ones."""
        server = (url.scheme, url.host, url.port, _PUBLIC_ONLY.get())
        pool = self._pools.get(server)
        if pool is None:
            pool = self._pools[server] = self._make()
        self._idle.pop(server, None)
        self._in_use[server] = self._in_use.get(server, 0) + 1
        return pool, server

    def give_back(self, server: _Server) -> None:
        left = self._in_use.get(server, 0) - 1
        if left > 0:
            self._in_use[server] = left
            return
        self._in_use.pop(server, None)
        if server in self._pools:  # not closed under the request (`aclose`)
            self._idle[server] = time.monotonic()
        self._close_surplus()

    def _close_surplus(self) -> None:
        now = time.monotonic()
        while self._idle:
            server, since = next(iter(self._idle.items()))
            if len(self._idle) <= self._keep and now - since < self._idle_for:
                break
            del self._idle[server]
            self._close(self._pools.pop(server))
        if self._idle and self._timer is None:  # for when the oldest idle pool expires
            due = next(iter(self._idle.values())) + self._idle_for - now
            self._timer = asyncio.get_running_loop().call_later(max(due, 0.0), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._close_surplus()

    def _close(self, pool: httpx.AsyncHTTPTransport) -> None:
        task = asyncio.ensure_future(pool.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pools, self._pools = self._pools, {}
        self._in_use.clear()
        self._idle.clear()
        for pool in pools.values():
            self._close(pool)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def _hub_answer(response: httpx.Response) -> tuple[int, str]:
    """A WebSub hub's status and the start of its answer (MAX_ANSWER_BYTES at most)."""
    answer = bytearray()
    async for chunk in response.aiter_raw():
        answer += chunk[: MAX_ANSWER_BYTES - len(answer)]
        if len(answer) >= MAX_ANSWER_BYTES:
            break
    return response.status_code, answer.decode("utf-8", "replace")


def _declares_no_body(response: httpx.Response) -> bool:
    """Whether a 304 says it has no body. HTTP gives a 304 none, so a server that sends
    one anyway (a Content-Length, a chunked body) leaves bytes that the next response on
    the connection would be read from: such a connection is closed, not reused."""
    length = response.headers.get("content-length", "0").strip()
    return length in ("", "0") and "transfer-encoding" not in response.headers


def _describe_transport_error(exc: httpx.TransportError) -> str:
    """One short line for a network failure, from the OS-level cause where there is one."""
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return "host not found (DNS lookup failed)"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not valid: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(cause, OSError) and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "host unreachable"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = redact_text(text)
    if isinstance(exc, httpx.RemoteProtocolError):
        if "without sending complete message body" in text:
            return "connection closed before the body was complete"
        if "disconnected without sending a response" in text:
            return "server closed the connection without a response"
        return f"malformed HTTP response: {text}" if text else "malformed HTTP response"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "unsupported URL scheme"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {text}" if text else "cannot connect"
    if isinstance(exc, httpx.ReadError):
        return f"connection broken while reading: {text}" if text else "connection broken"
    return text or type(exc).__name__


# --- the fetcher -------------------------------------------------------------------


class Fetcher:
    """Owns one HTTP client; `fetch()` any number of feeds concurrently within the limits.

    async with Fetcher(limits) as fetcher:
        result = await fetcher.fetch(state, now)
    """

    def __init__(self, limits: FetchLimits = DEFAULT_LIMITS, user_agent: str = USER_AGENT) -> None:
        self.limits = limits
        self.user_agent = user_agent
        self._direct: _ServerPools | None = None
        self._proxied: dict[str, httpx.AsyncHTTPTransport] = {}
        self._timeouts: dict[str, float | None] = {}
        self._all_hosts = asyncio.Semaphore(limits.max_connections)
        self._per_host: dict[str, asyncio.Semaphore] = {}
        #: server → loop time before which no request to it may begin (per_host_spacing)
        self._next_start: dict[str, float] = {}
        #: configured host → (on the public internet?, until when the verdict holds)
        self._verdicts: dict[str, tuple[bool, float]] = {}

    async def __aenter__(self) -> Fetcher:
        limits = self.limits
        # the servers' pools are made as their first requests come; the TLS context they
        # share is built here, so that no request waits on it (loading the CA bundle takes
        # tens of milliseconds: time a per-server spacing would not count)
        _ssl_context()
        # httpx's transport, not its Client: we follow redirects, keep no cookies and set
        # our own headers, so the Client's layers only cost time (about a tenth of a round
        # of 304s)

        def transport(proxy: str | None = None) -> httpx.AsyncHTTPTransport:
            # the semaphores are the real bound; the pool never gets in their way. A
            # server's pool keeps at most IDLE_PER_SERVER of its connections once idle
            most = limits.max_connections if proxy else limits.max_per_host
            kept = limits.max_connections if proxy else min(most, IDLE_PER_SERVER)
            made = httpx.AsyncHTTPTransport(
                verify=_ssl_context(),
                proxy=proxy,
                limits=httpx.Limits(max_connections=most, max_keepalive_connections=kept),
            )
            if proxy is None:
                # httpx takes no network backend, so it goes into the pool it made (before
                # any connection exists); fail loudly if httpx ever builds its pool otherwise
                pool = made._pool
                if type(pool) is not httpcore.AsyncConnectionPool:
                    raise RuntimeError(f"unexpected httpx connection pool {type(pool)!r}")
                pool._network_backend = _PublicOnlyBackend()
            return made

        self._direct = _ServerPools(transport, IDLE_SERVERS_KEPT, KEEPALIVE_SECONDS)
        # HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY, as httpx's Client honours them
        self._proxied = {scheme: transport(url) for scheme, url in environment_proxies().items()}
        self._timeouts = httpx.Timeout(
            connect=limits.connect_timeout,
            read=limits.read_timeout,
            write=limits.read_timeout,
            pool=limits.connect_timeout,
        ).as_dict()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for proxied in self._proxied.values():
            await proxied.aclose()
        self._proxied = {}
        if self._direct is not None:
            await self._direct.aclose()
            self._direct = None

    async def _exchange(
        self,
        url: httpx.URL,
        request: httpx.Request,
        read: Callable[[httpx.Response], Awaitable[T]],
    ) -> T:
        """`request` sent through the transport for `url` (the proxy's for its scheme,
        else the server's own pool), what `read` makes of the response, and the response
        closed: its connection back to the pool when read to its end, else closed."""
        assert self._direct is not None
        proxied = self._proxied.get(url.scheme)
        if proxied is not None and not urllib.request.proxy_bypass(url.host):
            transport, server = proxied, None
        else:
            transport, server = self._direct.take(url)
        try:
            response = await transport.handle_async_request(request)
            try:
                return await read(response)
            finally:
                await response.aclose()
        finally:
            if server is not None and self._direct is not None:
                self._direct.give_back(server)

    def _host_semaphore(self, host: str) -> asyncio.Semaphore:
        if host not in self._per_host:
            self._per_host[host] = asyncio.Semaphore(self.limits.max_per_host)
        return self._per_host[host]

    async def _wait_turn(self, host: str) -> None:
        """Wait until `per_host_spacing` has passed since the last request to `host` began.

        Turns are handed out in the order asked (each caller books the next start time
        before sleeping), so feeds of one host start at least the spacing apart however
        many wait."""
        spacing = self.limits.per_host_spacing
        if spacing <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_start.get(host, 0.0))
        self._next_start[host] = start + spacing
        if start > now:
            await asyncio.sleep(start - now)

    async def fetch(
        self,
        state: FeedState,
        now: datetime,
        credentials: Credentials | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        user_agent: str | None = None,
    ) -> Fetched | NotModified:
        """GET state.fetch_url conditionally; raise a FetchError subclass on failure.

        `credentials` (the feed's `auth:`) win over userinfo in state.url; either is sent as
        HTTP Basic auth to the configured URL's origin only. `headers` (the feed's own, an
        API key or a cookie) are secrets too and go where credentials go; `user_agent`
        replaces ours on every hop.
        """
        if self._direct is None:
            raise RuntimeError("Fetcher used outside `async with`")
        total = self.limits.total_timeout
        credentials = credentials or _userinfo_credentials(state.url)
        try:
            # the deadline starts once a connection slot is ours: queueing is not the feed's fault
            async with asyncio.timeout(None) as deadline:
                return await self._follow(
                    state, now, deadline, credentials, headers or {}, user_agent
                )
        except TimeoutError as e:
            message = f"timed out after {_format_seconds(total)} (total deadline)"
            raise FetchTimeout(state.url, message) from e

    async def _follow(
        self,
        state: FeedState,
        now: datetime,
        deadline: asyncio.Timeout,
        credentials: Credentials | None,
        secret_headers: Mapping[str, str],
        user_agent: str | None,
    ) -> Fetched | NotModified:
        headers = {
            "User-Agent": user_agent or self.user_agent,
            "Accept": ACCEPT,
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified

        url = self._checked_url(state.url, state.fetch_url)
        configured = url
        moved = state.fetch_url != state.url
        if moved:
            configured = self._checked_url(state.url, state.url)
            moved = url != configured  # not when the stored URL only lacks the userinfo
        authorization = _basic_authorization(credentials) if credentials else None
        seen = {str(url)}
        all_permanent = True
        redirects = 0
        while True:
            # every hop but the first was reached by a redirect; the first too when the feed
            # moved (a stored permanent redirect)
            public_only = (redirects > 0 or moved) and await self._is_public(configured)
            if public_only:
                await self._refuse_non_public(state.url, url)
            hop_headers: dict[str, str] = headers
            auth_use: _AuthUse = "none"
            if authorization is not None or secret_headers:
                if _may_send_credentials(configured, url):
                    hop_headers = {**headers, **secret_headers}
                    if authorization is not None:
                        hop_headers["Authorization"] = authorization
                        auth_use = "sent"
                elif authorization is not None:
                    auth_use = "withheld"
            host = server_key(url)
            # the host's slot, then its turn (spacing), then a slot of the global bound: a
            # feed waiting for its host's turn holds none of the slots other hosts need
            async with self._host_semaphore(host):
                await self._wait_turn(host)
                async with self._all_hosts:
                    if deadline.when() is None:
                        loop = asyncio.get_running_loop()
                        deadline.reschedule(loop.time() + self.limits.total_timeout)
                    outcome = await self._request(
                        state, url, hop_headers, now, public_only=public_only, auth_use=auth_use
                    )
            if not isinstance(outcome, _Redirect):
                moved_to = str(url) if redirects and all_permanent else None
                if isinstance(outcome, NotModified):
                    return NotModified(
                        url=str(url),
                        etag=outcome.etag,
                        last_modified=outcome.last_modified,
                        moved_to=moved_to,
                        headers=outcome.headers,
                    )
                return Fetched(
                    url=str(url),
                    status=outcome.status,
                    body=outcome.body,
                    headers=outcome.headers,
                    etag=outcome.etag,
                    last_modified=outcome.last_modified,
                    moved_to=moved_to,
                )
            target = self._checked_url(state.url, outcome.location, base=url)
            if str(target) in seen:
                back_to = redact_url(str(target))
                raise TooManyRedirects(state.url, f"redirect loop (back to {back_to})")
            redirects += 1
            if redirects > self.limits.max_redirects:
                raise TooManyRedirects(
                    state.url, f"more than {self.limits.max_redirects} redirects"
                )
            seen.add(str(target))
            all_permanent = all_permanent and outcome.status in _PERMANENT_REDIRECTS
            url = target

    async def is_public_origin(self, url: str) -> bool:
        """Whether `url`'s host is on the public internet (see `_is_public`): a feed
        configured there may only lead us to public addresses, its WebSub hub included."""
        return await self._is_public(self._checked_url(url, url))

    async def post_form(
        self,
        url: str,
        fields: Iterable[tuple[str, str]],
        *,
        public_only: bool = False,
        timeout: float | None = None,
    ) -> tuple[int, str]:
        """POST `fields` form-encoded to `url` (a WebSub hub: a subscription request, a
        publish ping); the status and the first MAX_ANSWER_BYTES of the answer as text.

        No redirect is followed (a hub answers 202 or 204, or fails), nothing but our
        User-Agent is sent, and the whole request has one deadline (`timeout`, else the
        fetch deadline). `public_only`: the hub must be on the public internet, checked
        as for a feed's redirect, again where the connection is opened. Raises FetchError
        (FeedError.url is `url`)."""
        if self._direct is None:
            raise RuntimeError("Fetcher used outside `async with`")
        target = self._checked_url(url, url)
        body = urllib.parse.urlencode(list(fields)).encode()
        headers = {
            "User-Agent": self.user_agent,
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "*/*",
        }
        request = httpx.Request(
            "POST", target, headers=headers, content=body, extensions={"timeout": self._timeouts}
        )
        seconds = self.limits.total_timeout if timeout is None else timeout
        host = server_key(target)
        token = _PUBLIC_ONLY.set(public_only)
        try:
            async with asyncio.timeout(seconds):
                if public_only:
                    await self._refuse_non_public(url, target)
                async with self._host_semaphore(host), self._all_hosts:
                    status, answer = await self._exchange(target, request, _hub_answer)
        except TimeoutError as e:
            raise FetchTimeout(url, f"timed out after {_format_seconds(seconds)}") from e
        except _NonPublicAddress as e:
            raise FetchError(url, str(e)) from e
        except httpx.TransportError as e:
            raise FetchError(url, _describe_transport_error(e)) from e
        except httpx.HTTPError as e:
            raise FetchError(url, redact_text(f"HTTP error: {e}")) from e
        finally:
            _PUBLIC_ONLY.reset(token)
        return status, answer

    async def _answer(
        self,
        state: FeedState,
        url: httpx.URL,
        response: httpx.Response,
        now: datetime,
        auth_use: _AuthUse,
    ) -> _Redirect | Fetched | NotModified:
        """What a GET's response says; the body is read only for a 2xx."""
        status = response.status_code
        response_headers = dict(response.headers.items())  # keys come lower-cased
        etag = response.headers.get("etag")
        last_modified = response.headers.get("last-modified")
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise HTTPStatusError(
                    state.url, status, f"HTTP {status} redirect without a Location"
                )
            return _Redirect(status, location)
        if status == 304:
            if _declares_no_body(response):
                # read to its end (a 304 has no body), so that its connection
                # goes back to the server's pool instead of being closed; raw,
                # past httpx's decoders, which have nothing to do
                async for _ in response.aiter_raw():
                    pass
            return NotModified(
                url=str(url),
                etag=etag,
                last_modified=last_modified,
                headers=response_headers,
            )
        if not 200 <= status < 300:
            raise _status_error(state.url, response, now, auth_use, url)
        body = await _read_body(state.url, response, self.limits.max_body_bytes)
        return Fetched(
            url=str(url),
            status=status,
            body=body,
            headers=response_headers,
            etag=etag,
            last_modified=last_modified,
        )

    @staticmethod
    def _checked_url(feed_url: str, location: str, base: httpx.URL | None = None) -> httpx.URL:
        """`location` (joined to `base`) as an http(s) URL without fragment or userinfo."""
        try:
            url = base.join(location) if base is not None else httpx.URL(location)
            url.host  # noqa: B018 - decodes the IDNA host, which can fail ("xn--")
        except (httpx.InvalidURL, UnicodeError, ValueError) as e:
            raise FetchError(feed_url, f"invalid URL {redact_url(location)!r}") from e
        if url.scheme not in ("http", "https"):
            what = "redirect to" if base is not None else "cannot fetch"
            raise FetchError(feed_url, f"{what} unsupported URL {redact_url(location)!r}")
        # copy_with re-parses the URL: only when there is something to drop. Userinfo is
        # never requested (a redirect's is ignored; the configured URL's is sent as auth)
        if url.fragment or url.userinfo:
            return url.copy_with(fragment=None, userinfo=b"")
        return url

    async def _is_public(self, configured: httpx.URL) -> bool:
        """Whether the configured URL's host is on the public internet: any address it
        resolves to is public (a name only the LAN resolves is a LAN feed; one that also
        has a private address is not, or its server could redirect us into the private
        network through it). Resolved at most once a minute per host; a host that does not
        resolve counts as public, the stricter choice."""
        host = configured.raw_host.decode("ascii")
        literal = _literal_address(host)
        if literal is not None:
            return is_public_address(literal)
        loop = asyncio.get_running_loop()
        verdict, until = self._verdicts.get(host, (True, 0.0))
        if loop.time() < until:
            return verdict
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                addresses = await _resolve(host, configured.port or 0)
            verdict = not addresses or any(
                is_public_address(ipaddress.ip_address(address)) for address in addresses
            )
        except (OSError, TimeoutError):
            verdict = True
        self._verdicts[host] = (verdict, loop.time() + _VERDICT_TTL)
        return verdict

    async def _refuse_non_public(self, feed_url: str, url: httpx.URL) -> None:
        """Raise when `url`'s host is, or resolves to, an address that is not public.

        A host that does not resolve passes: the request then fails on its own, or a proxy
        resolves it. For a direct connection `_PublicOnlyBackend` checks again, on the
        addresses it connects to.
        """
        host = url.raw_host.decode("ascii")
        literal = _literal_address(host)
        if literal is not None:
            addresses = [host]  # as written: "::ffff:127.0.0.1" says more than "::ffff:7f00:1"
        else:
            try:
                async with asyncio.timeout(self.limits.connect_timeout):
                    addresses = await _resolve(host, url.port or _DEFAULT_PORTS[url.scheme])
            except (OSError, TimeoutError):
                return
        refused = _first_non_public(addresses)
        if refused is not None:
            raise FetchError(feed_url, _refusal(host, refused))

    async def _request(
        self,
        state: FeedState,
        url: httpx.URL,
        headers: dict[str, str],
        now: datetime,
        *,
        public_only: bool = False,
        auth_use: _AuthUse = "none",
    ) -> _Redirect | Fetched | NotModified:
        """One GET, no redirects followed; the body is read only for a 2xx."""
        limits = self.limits
        request = httpx.Request("GET", url, headers=headers, extensions={"timeout": self._timeouts})
        public_only_token = _PUBLIC_ONLY.set(public_only)

        async def read(response: httpx.Response) -> _Redirect | Fetched | NotModified:
            return await self._answer(state, url, response, now, auth_use)

        try:
            return await self._exchange(url, request, read)
        except _NonPublicAddress as e:
            raise FetchError(state.url, str(e)) from e
        except httpx.TimeoutException as e:
            raise FetchTimeout(state.url, _describe_timeout(e, limits)) from e
        except httpx.TransportError as e:
            raise FetchError(state.url, _describe_transport_error(e)) from e
        except httpx.HTTPError as e:  # e.g. a malformed header value
            raise FetchError(state.url, redact_text(f"HTTP error: {e}")) from e
        finally:
            _PUBLIC_ONLY.reset(public_only_token)


def _describe_timeout(exc: httpx.TimeoutException, limits: FetchLimits) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connect timed out after {_format_seconds(limits.connect_timeout)}"
    if isinstance(exc, httpx.PoolTimeout):
        return "timed out waiting for a free connection"
    return f"no data for {_format_seconds(limits.read_timeout)} (read timeout)"


def _status_error(
    feed_url: str, response: httpx.Response, now: datetime, auth_use: _AuthUse, url: httpx.URL
) -> HTTPStatusError:
    status = response.status_code
    if status in _AUTH_STATUSES:
        return HTTPStatusError(feed_url, status, _auth_message(status, auth_use, url))
    if status == 410:
        return Gone(feed_url, status, "gone (HTTP 410)")
    if status in _RETRY_STATUSES:
        header = response.headers.get("retry-after")
        retry_after = parse_retry_after(header, now) if header else None
        if retry_after is not None:
            message = f"server asks to retry after {to_iso(retry_after)} (HTTP {status})"
        elif status == 429:
            message = "too many requests (HTTP 429)"
        else:
            message = "service unavailable (HTTP 503)"
        return RetryLater(feed_url, status, message, retry_after)
    reason = response.reason_phrase or ""
    return HTTPStatusError(feed_url, status, f"HTTP {status} {reason}".strip())


def _auth_message(status: int, auth_use: _AuthUse, url: httpx.URL) -> str:
    """What a 401 or 403 means for this feed, and what to do about it."""
    if auth_use == "sent":
        return f"credentials refused (HTTP {status})"
    what = "HTTP 401 Unauthorized" if status == 401 else "HTTP 403 Forbidden"
    if auth_use == "withheld":
        return (
            f"{what} at {_origin_text(url)}, where a redirect led: the feed's credentials"
            " are only sent to the origin of its configured URL"
        )
    if status == 401:
        return f"{what}: the server wants credentials (add auth: to this feed)"
    return f"{what}: access denied (if the feed is private, add auth: to this feed)"


async def _read_body(feed_url: str, response: httpx.Response, max_bytes: int) -> bytes:
    """Stream the raw body, decompressing as it comes, never holding more than max_bytes."""
    too_large = f"body larger than {_format_size(max_bytes)}"
    declared = response.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > max_bytes:
        raise TooLarge(feed_url, f"{too_large} (Content-Length {declared.strip()})")
    encoding = response.headers.get("content-encoding", "")
    decoders = _decoders_for(encoding)
    if decoders is None:
        raise FetchError(feed_url, f"unsupported Content-Encoding {encoding!r}")

    body = bytearray()
    raw_size = 0

    def push(data: bytes, at_end: bool) -> None:
        for decoder in decoders:
            room = max_bytes - len(body)
            decoded = decoder.decode(data, room) if data else b""
            if at_end:
                decoded += decoder.finish(room - len(decoded))
            data = decoded
        if len(body) + len(data) > max_bytes:
            raise _BodyTooLarge
        body.extend(data)

    try:
        async for chunk in response.aiter_raw(_CHUNK):
            raw_size += len(chunk)
            if raw_size > max_bytes:
                raise TooLarge(feed_url, too_large)
            push(chunk, at_end=False)
        push(b"", at_end=True)
    except _BodyTooLarge:
        raise TooLarge(feed_url, f"{too_large} after decompression") from None
    except (zlib.error, ValueError) as e:
        raise FetchError(feed_url, f"cannot decode {encoding} body: {e}") from e
    return bytes(body)
