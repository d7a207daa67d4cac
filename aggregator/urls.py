"""Link hygiene: canonical links for matching, tracking parameters off published links. No I/O.

`canonical_url` is for matching only (CONTRACT.md "Canonical links"); what we publish is
`strip_tracking(link)`, the publisher's own spelling minus tracking parameters.
Neither function raises: a feed can put anything in a link.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

__all__ = ["canonical_url", "is_homepage", "is_http_url", "is_tracking_param", "strip_tracking"]

#: exact names (case-insensitive) of click-tracking parameters; `utm_*` is matched by prefix
TRACKING_PARAMS = frozenset(
    {"fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid", "ref_src"}
)
_TRACKING_PREFIX = "utm_"

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
