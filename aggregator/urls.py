"""Link hygiene: which URLs may be published, canonical links for matching, secrets and
tracking parameters off what we publish or log. No I/O.

`publishable_url` is the one gate for every URL we publish (cleaning and rendering both
call it): http(s) only, as a browser reads it (`http_url`), without userinfo or
secret-looking query parameters. `canonical_url` is for matching only (CONTRACT.md
"Canonical links"); a published item link is `strip_tracking` of a publishable URL, the
publisher's own spelling minus tracking parameters. `redact_url` and `redact_text` keep
credentials out of what users read (logs, status, error messages).
No function here raises: a feed can put anything in a link.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus, urljoin, urlsplit

__all__ = [
    "SECRET_PARAMS",
    "SECRET_PARAM_SUFFIXES",
    "canonical_url",
    "http_url",
    "is_homepage",
    "is_http_url",
    "is_secret_param",
    "is_tracking_param",
    "publishable_url",
    "redact_text",
    "redact_url",
    "strip_tracking",
]

#: exact names (case-insensitive) of click-tracking parameters; `utm_*` is matched by prefix
TRACKING_PARAMS = frozenset(
    {"fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid", "ref_src"}
)
_TRACKING_PREFIX = "utm_"

#: query parameter names (compared lower-cased, "-" read as "_") whose values are
#: credentials: never published, shown as "***" in logs and status
SECRET_PARAMS = frozenset(
    {
        *("api_key", "apikey", "key", "token", "access_token", "accesstoken"),
        *("auth", "auth_token", "authtoken", "private_token"),
        *("secret", "client_secret", "password", "passwd", "pass", "pwd"),
        *("sig", "signature", "session", "sessionid", "jsessionid", "phpsessid"),
        *("authorization", "authkey", "jwt", "appid", "app_id", "access_key", "bearer"),
    }
)
#: ... and every name ending in one of these (refresh_token, x-api-key, X-Amz-Signature,
#: apiToken, sessionKey)
SECRET_PARAM_SUFFIXES = ("_token", "_key", "_secret", "_password", "_signature", "_jwt")
_CAMEL_HUMP = re.compile(r"([a-z0-9])([A-Z])")
#: what a secret is shown as
REDACTED = "***"

#: http and https are one scheme for matching; both are spelled like this
_WEB_SCHEME = "https"
_DEFAULT_PORTS = {"http": ("80", "443"), "https": ("80", "443")}

# RFC 3986 §2.3: these never need escaping, so %41 and A are the same character.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SUB_DELIMS = "!$&'()*+,;="
_PATH_SAFE = _UNRESERVED | frozenset(_SUB_DELIMS + ":@/")
_QUERY_PART_SAFE = _UNRESERVED | frozenset(_SUB_DELIMS + ":@/?")
_USERINFO_SAFE = _UNRESERVED | frozenset(_SUB_DELIMS + ":")
_HEX = frozenset("0123456789abcdefABCDEF")
_PORT = re.compile(r"[0-9]*")
#: paths that are a site's front page, not an article
_HOME_PATHS = frozenset({"", "/", "/index.html", "/index.htm", "/index.php"})


def canonical_url(url: str) -> str:
    """The form of `url` used to decide whether two links point at the same article.

    Scheme and host lower-cased, http == https, default port dropped, `www.` kept, fragment
    dropped, trailing slashes and dot segments ignored, tracking parameters dropped, other
    parameters sorted, percent-escapes normalised, IDN hosts in punycode. Anything that is not
    an absolute `scheme://host` URL comes back stripped but otherwise unchanged.
    """
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:  # bad IPv6 literal, bad characters under NFKC
        return text
    if not parts.scheme or not parts.netloc:
        return text
    scheme = parts.scheme.lower()
    netloc = _canonical_netloc(parts.netloc, scheme)
    if netloc is None:
        return text
    if scheme == "http":
        scheme = _WEB_SCHEME
    path = _remove_dot_segments(_normalise_escapes(parts.path, _PATH_SAFE)).rstrip("/") or "/"
    query = "&".join(sorted(_canonical_params(parts.query), key=_param_sort_key))
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def strip_tracking(url: str) -> str:
    """`url` as the publisher wrote it minus tracking parameters; unchanged if it has none."""
    before_fragment, hash_sign, fragment = url.partition("#")
    base, question_mark, query = before_fragment.partition("?")
    if not question_mark:
        return url
    params = query.split("&")
    kept = [param for param in params if not is_tracking_param(_param_key(param))]
    if len(kept) == len(params):
        return url
    kept = [param for param in kept if param]
    return base + (f"?{'&'.join(kept)}" if kept else "") + hash_sign + fragment


def is_tracking_param(name: str) -> bool:
    """Whether a query parameter name (already unescaped) is a click tracker."""
    lowered = name.lower()
    return lowered.startswith(_TRACKING_PREFIX) or lowered in TRACKING_PARAMS


def is_http_url(url: str) -> bool:
    """Whether `url` is an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


# --- what may be published ---------------------------------------------------------------

# https://url.spec.whatwg.org/#concept-basic-url-parser: a browser strips C0 controls and
# spaces from both ends of a URL and removes tabs and newlines anywhere in it, so
# " \tjava\nscript:alert(1)" is a live javascript: link.
_C0_CONTROL_OR_SPACE = "".join(chr(code) for code in range(0x21))
_TAB_OR_NEWLINE = re.compile("[\t\n\r]")
_WEB_SCHEMES = ("http", "https")
#: ASCII no browser accepts in a host name (https://url.spec.whatwg.org/#host-parsing);
#: nor does it accept controls or spaces of the rest of Unicode (not str.isprintable)
_FORBIDDEN_IN_HOST = re.compile("[ \"'<>^`{|}]")
#: what separates query parameters: "&", and ";" for servers that read it so
_PARAM_SEPARATOR = re.compile(r"([&;])")


#: an http(s) URL with a plain host name, a port in range if any, and no whitespace,
#: control character or backslash: `http_url` returns it as it is without parsing it
#: (about 20 µs saved each, which counts in an OPML of thousands of feeds)
_PLAIN_WEB_URL = re.compile(
    r"https?://[A-Za-z0-9][A-Za-z0-9.-]*"
    r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
    r"(?:[/?#][^\s\\\x00-\x1f\x7f]*)?\Z"
)


#: a longer URL is no usable link (browsers and servers give up around 2–8 KB): a feed's
#: megabyte-long image or icon URL would otherwise be repeated on every page it shows on
MAX_URL_CHARS = 4096


def http_url(value: str | None, base: str | None = None) -> str | None:
    """`value` as a browser reads it (trimmed, tabs and newlines removed, resolved against
    `base` when relative) if that is an http(s) URL with a host; else None.

    An absolute URL comes back as written. Backslashes before the query (which browsers
    read as "/", and Python does not) make a URL unusable rather than ambiguous.
    """
    if not value or len(value) > MAX_URL_CHARS:
        return None
    if _PLAIN_WEB_URL.match(value):
        return value  # most are: no trimming, no port, nothing urlsplit could object to
    url = _trim_like_a_browser(value)
    try:
        if not _is_web_url(url):
            if base is None:
                return None
            # trimmed again: urljoin drops an empty query or fragment ("a ?"), which
            # can leave a space at the end
            url = _trim_like_a_browser(urljoin(_trim_like_a_browser(base), url))
            if not _is_web_url(url):
                return None
    except ValueError:  # bad IPv6 literal or port, bad characters under NFKC
        return None
    return url


def publishable_url(value: str | None, base: str | None = None) -> str | None:
    """`http_url(value, base)` without userinfo and without secret-looking query (or
    fragment) parameters: the form of a URL we may put in a published file."""
    url = http_url(value, base)
    if url is None:
        return None
    if "@" not in url and "?" not in url and "#" not in url:
        return url  # no userinfo, no parameters: nothing to take out
    scheme, separator, rest = url.partition("://")
    authority, after_authority = _split_authority(rest)
    host = authority.rpartition("@")[2]
    path, query_mark, query, hash_sign, fragment = _split_rest(after_authority)
    query = _without_secret_params(query)
    fragment = _without_secret_params(fragment)
    return (
        scheme
        + separator
        + host
        + path
        + (query_mark + query if query else "")
        + (hash_sign + fragment if fragment else "")
    )


def redact_url(url: str) -> str:
    """`url` for display in logs and status: userinfo shown as "***" ("http://***@host/"),
    the value of each secret-looking query or fragment parameter as "***"; the rest as
    written. Any string is accepted."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    else:
        authority, after_authority = _split_authority(rest)
        if "@" in authority:
            authority = REDACTED + "@" + authority.rpartition("@")[2]
        rest = authority + after_authority
    path, query_mark, query, hash_sign, fragment = _split_rest(rest)
    return (
        scheme
        + separator
        + path
        + query_mark
        + _redact_params(query)
        + hash_sign
        + _redact_params(fragment)
    )


#: a URL in free text: a scheme, "://", then anything up to whitespace, a quote or a bracket
#: (a URL in prose does not end with the punctuation after it: "…?key=K: HTTP 200")
_URL_IN_TEXT = re.compile(
    r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s"'`<>()\[\]{}]*[^\s"'`<>()\[\]{}:,.;!?]"""
)
#: a query parameter outside a full URL ("Location: /feed?token=…")
_PARAM_IN_TEXT = re.compile(
    r"""(?<=[?&;])[^\s"'`<>()\[\]{}?&;#=]+=(?:[^\s"'`<>()\[\]{}&;#]*[^\s"'`<>()\[\]{}&;#:,.!?])?"""
)


def redact_text(text: str) -> str:
    """`text` (an error message, say, quoting a redirect's Location) with every URL in it
    passed through `redact_url`, and secret-looking parameters of relative URLs redacted."""
    pieces: list[str] = []
    position = 0
    for match in _URL_IN_TEXT.finditer(text):
        pieces.append(_PARAM_IN_TEXT.sub(_redacted_param, text[position : match.start()]))
        pieces.append(redact_url(match.group()))
        position = match.end()
    pieces.append(_PARAM_IN_TEXT.sub(_redacted_param, text[position:]))
    return "".join(pieces)


def is_secret_param(name: str) -> bool:
    """Whether a query parameter name (already unescaped) looks like it carries a credential:
    one of SECRET_PARAMS or ending in one of SECRET_PARAM_SUFFIXES, case-insensitively,
    "-" read as "_" ("X-Api-Key")."""
    # camelCase read as snake_case: "apiToken" is "api_token", "sessionKey" "session_key"
    snake = _CAMEL_HUMP.sub(r"\1_\2", name.strip()).lower().replace("-", "_")
    return snake in SECRET_PARAMS or snake.endswith(SECRET_PARAM_SUFFIXES)


def is_homepage(url: str) -> bool:
    """Whether `url` (absolute or relative) points at a site's front page.

    Many feeds link every entry to the home page, so such a link must not identify a story.
    Tracking parameters and the fragment do not make a link an article link.
    """
    text = strip_tracking(url.strip())
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    if not text or parts.query.strip("&"):
        return False
    if parts.scheme and parts.scheme.lower() not in ("http", "https"):
        return False
    return parts.path.rstrip("/").lower() in _HOME_PATHS


# --- helpers ---------------------------------------------------------------------------


def _trim_like_a_browser(value: str) -> str:
    return _TAB_OR_NEWLINE.sub("", value.strip(_C0_CONTROL_OR_SPACE))


def _is_web_url(url: str) -> bool:
    """An absolute http(s) URL with a host and a valid port, read as a browser would."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme.lower() not in _WEB_SCHEMES or not host:
        return False
    if not host.isprintable() or _FORBIDDEN_IN_HOST.search(host):
        return False
    parts.port  # noqa: B018  # raises ValueError for a port that is not a number in range
    before_query = url.partition("?")[0].partition("#")[0]
    return "\\" not in before_query


def _split_authority(after_scheme: str) -> tuple[str, str]:
    """ "user@host:port/path?q" → ("user@host:port", "/path?q"): the authority ends at the
    first "/", "?" or "#" (as urlsplit reads it)."""
    end = len(after_scheme)
    for delimiter in "/?#":
        found = after_scheme.find(delimiter)
        if 0 <= found < end:
            end = found
    return after_scheme[:end], after_scheme[end:]


def _split_rest(rest: str) -> tuple[str, str, str, str, str]:
    """path, "?", query, "#", fragment (the marks empty when absent)."""
    before_fragment, hash_sign, fragment = rest.partition("#")
    path, query_mark, query = before_fragment.partition("?")
    return path, query_mark, query, hash_sign, fragment


def _is_secret_piece(param: str) -> bool:
    """Whether one "name=value" of a query carries a secret (a bare name carries none)."""
    name, equals, _ = param.partition("=")
    return bool(equals) and is_secret_param(unquote_plus(name))


def _without_secret_params(params: str) -> str:
    """`params` ("a=1&token=x;b") without the secret-looking ones, the rest as written."""
    if "=" not in params:
        return params
    pieces = _PARAM_SEPARATOR.split(params)[0::2]
    kept = [piece for piece in pieces if not _is_secret_piece(piece)]
    if len(kept) == len(pieces):
        return params
    return "&".join(piece for piece in kept if piece)


def _redact_params(params: str) -> str:
    """`params` with the value of each secret-looking one replaced by REDACTED."""
    if "=" not in params:
        return params
    return "".join(_redacted_piece(piece) for piece in _PARAM_SEPARATOR.split(params))


def _redacted_piece(param: str) -> str:
    name, _, value = param.partition("=")
    return f"{name}={REDACTED}" if value and _is_secret_piece(param) else param


def _redacted_param(match: re.Match[str]) -> str:
    return _redacted_piece(match.group(0))


def _canonical_netloc(netloc: str, scheme: str) -> str | None:
    """`user@host:port` normalised, or None when it cannot be a network location."""
    userinfo, at, hostport = netloc.rpartition("@")
    if hostport.startswith("["):  # IPv6 literal: the port follows the closing bracket
        host, bracket, rest = hostport.partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        host, port = host + bracket, rest[1:]
    else:
        host, _, port = hostport.partition(":")
    if not host or not _PORT.fullmatch(port):
        return None
    if port:
        port = str(int(port))
        if port in _DEFAULT_PORTS.get(scheme, ()):
            port = ""
    userinfo = _normalise_escapes(userinfo, _USERINFO_SAFE) + at
    return userinfo + _canonical_host(host) + (f":{port}" if port else "")


def _canonical_host(host: str) -> str:
    host = host.lower()
    # "example.com." is the fully qualified spelling of "example.com"
    host = host.rstrip(".") or host
    if host.isascii():
        return host
    try:
        # IDNA 2003 (the stdlib codec) maps case and width too, so Bücher.de == xn--bcher-kva.de
        return host.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return host


def _canonical_params(query: str) -> list[str]:
    kept = []
    for param in query.split("&"):
        if not param:
            continue
        key, equals, value = param.partition("=")
        key = _normalise_escapes(key, _QUERY_PART_SAFE)
        if is_tracking_param(unquote(key)):
            continue
        kept.append(key + equals + _normalise_escapes(value, _QUERY_PART_SAFE))
    return kept


def _param_sort_key(param: str) -> tuple[str, str]:
    key, _, value = param.partition("=")
    return key, value


def _param_key(param: str) -> str:
    return unquote(param.partition("=")[0])


def _normalise_escapes(component: str, safe: frozenset[str]) -> str:
    """Spell a URL component one way: unreserved characters bare, other escapes upper-case,
    characters that need escaping (spaces, non-ASCII) escaped as UTF-8."""
    if component.isascii() and "%" not in component and all(char in safe for char in component):
        return component
    out: list[str] = []
    index, length = 0, len(component)
    while index < length:
        char = component[index]
        if char == "%":
            escape = component[index + 1 : index + 3]
            if len(escape) == 2 and escape[0] in _HEX and escape[1] in _HEX:
                decoded = chr(int(escape, 16))
                out.append(decoded if decoded in _UNRESERVED else "%" + escape.upper())
                index += 3
                continue
            out.append("%25")  # a lone "%" is a literal percent sign
        elif char in safe:
            out.append(char)
        else:
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass")))
        index += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4: "/a/./b/../c" is "/a/c"."""
    if "." not in path:
        return path
    segments = path.split("/")
    output: list[str] = []
    for segment in segments[1:] if path.startswith("/") else segments:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    trailing = "/" if segments[-1] in (".", "..") else ""
    prefix = "/" if path.startswith("/") else ""
    return prefix + "/".join(output) + trailing
