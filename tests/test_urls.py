"""canonical_url, strip_tracking, is_http_url, is_homepage, and the publishing gate
(http_url, publishable_url) and redaction (redact_url, redact_text): table cases and
properties."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from aggregator import urls
from aggregator.urls import (
    SECRET_PARAMS,
    TRACKING_PARAMS,
    canonical_url,
    http_url,
    is_homepage,
    is_http_url,
    is_secret_param,
    publishable_url,
    redact_text,
    redact_url,
    strip_tracking,
)

# --- canonical_url: one table row per contract rule ----------------------------------------

SAME = [
    # scheme and host lower-cased
    ("HTTPS://Example.COM/story", "https://example.com/story"),
    # http and https equal
    ("http://example.com/story", "https://example.com/story"),
    # default port dropped, for either scheme
    ("http://example.com:80/story", "https://example.com/story"),
    ("https://example.com:443/story", "https://example.com/story"),
    # fragment removed
    ("https://example.com/story#comments", "https://example.com/story"),
    # trailing slash of the path ignored, also for the root
    ("https://example.com/story/", "https://example.com/story"),
    ("https://example.com", "https://example.com/"),
    # tracking parameters removed
    ("https://example.com/story?utm_source=rss&utm_medium=feed", "https://example.com/story"),
    ("https://example.com/story?UTM_Campaign=x", "https://example.com/story"),
    ("https://example.com/story?fbclid=abc&id=7", "https://example.com/story?id=7"),
    ("https://example.com/s?gclid=1&dclid=2&msclkid=3&mc_cid=4&mc_eid=5", "https://example.com/s"),
    ("https://example.com/s?igshid=1&ref_src=twsrc", "https://example.com/s"),
    # an escaped tracker name is still a tracker
    ("https://example.com/s?utm%5Fsource=x", "https://example.com/s"),
    # other parameters kept and sorted
    ("https://example.com/s?b=2&a=1", "https://example.com/s?a=1&b=2"),
    ("https://example.com/s?a=2&a=1", "https://example.com/s?a=1&a=2"),
    # percent-encoding: hex case and unreserved escapes don't matter
    ("https://example.com/caf%c3%a9", "https://example.com/caf%C3%A9"),
    ("https://example.com/%7Euser", "https://example.com/~user"),
    ("https://example.com/café", "https://example.com/caf%C3%A9"),
    # dot segments
    ("https://example.com/a/./b/../c", "https://example.com/a/c"),
    # IDN host and its punycode
    ("https://Bücher.example/", "https://xn--bcher-kva.example/"),
    # the fully-qualified trailing dot
    ("https://example.com./story", "https://example.com/story"),
    # empty query and stray ampersands
    ("https://example.com/s?", "https://example.com/s"),
    ("https://example.com/s?&a=1&&", "https://example.com/s?a=1"),
]

DIFFERENT = [
    # www. is kept: it may be another site
    ("https://www.example.com/story", "https://example.com/story"),
    ("https://example.com/story", "https://example.com/other"),
    ("https://example.com/story", "https://example.org/story"),
    # path case matters on most servers
    ("https://example.com/Story", "https://example.com/story"),
    ("https://example.com/story?id=1", "https://example.com/story?id=2"),
    ("https://example.com/story?id=1", "https://example.com/story"),
    # a non-default port is another server
    ("https://example.com:8443/story", "https://example.com/story"),
    # a blank value is kept, and differs from no value
    ("https://example.com/s?a=", "https://example.com/s"),
    # an escaped reserved character is data, not a delimiter
    ("https://example.com/a%2Fb", "https://example.com/a/b"),
    ("https://example.com/s?q=a%26b", "https://example.com/s?q=a&b"),
    # userinfo is kept
    ("https://user@example.com/s", "https://example.com/s"),
]


@pytest.mark.parametrize(("left", "right"), SAME)
def test_canonical_url_equates_spellings(left: str, right: str) -> None:
    assert canonical_url(left) == canonical_url(right)


@pytest.mark.parametrize(("left", "right"), DIFFERENT)
def test_canonical_url_keeps_different_links_apart(left: str, right: str) -> None:
    assert canonical_url(left) != canonical_url(right)


def test_canonical_url_spelling() -> None:
    url = "HTTP://WWW.Example.COM:80/News/2024/Story/?utm_source=rss&b=2&a=1#top"
    assert canonical_url(url) == "https://www.example.com/News/2024/Story?a=1&b=2"


@pytest.mark.parametrize(
    "garbage",
    ["not a url", "/relative/path", "mailto:someone@example.com", "http://", "http://[::1/x"],
)
def test_canonical_url_returns_non_urls_stripped(garbage: str) -> None:
    assert canonical_url(f"  {garbage}\n") == garbage


def test_canonical_url_of_empty_is_empty() -> None:
    assert canonical_url("") == ""
    assert canonical_url("   ") == ""


# --- strip_tracking ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://Example.com/Story/?utm_source=rss&id=7&fbclid=x#part-2",
            "http://Example.com/Story/?id=7#part-2",
        ),
        ("https://example.com/s?utm_source=rss", "https://example.com/s"),
        ("https://example.com/s?utm_source=rss#x", "https://example.com/s#x"),
        ("https://example.com/s?b=2&gclid=1&a=1", "https://example.com/s?b=2&a=1"),
        # a tracker-looking fragment is the page's business, not ours
        ("https://example.com/s#utm_source=x", "https://example.com/s#utm_source=x"),
    ],
)
def test_strip_tracking_keeps_the_publishers_form(url: str, expected: str) -> None:
    assert strip_tracking(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "HTTP://Example.COM:80/Story/?b=2&a=1&&c#frag",
        "https://example.com/s?utm=not-a-tracker&reference=1",
        "not a url at all",
        "",
    ],
)
def test_strip_tracking_leaves_untracked_links_alone(url: str) -> None:
    assert strip_tracking(url) == url


# --- is_http_url, is_homepage ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/x", True),
        ("HTTP://example.com", True),
        (" http://example.com/ ", True),
        ("ftp://example.com/x", False),
        ("mailto:a@example.com", False),
        ("/relative", False),
        ("http://", False),
        ("http://[::1", False),
        ("", False),
    ],
)
def test_is_http_url(url: str, expected: bool) -> None:
    assert is_http_url(url) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com", True),
        ("https://example.com/", True),
        ("https://example.com/?utm_source=rss#top", True),
        ("https://example.com/index.html", True),
        ("/", True),
        ("https://example.com/story", False),
        ("https://example.com/?p=123", False),
        ("https://example.com/index.php?id=5", False),
        ("mailto:a@example.com", False),
        ("", False),
    ],
)
def test_is_homepage(url: str, expected: bool) -> None:
    assert is_homepage(url) is expected


# --- properties ------------------------------------------------------------------------------

TRACKERS = sorted(TRACKING_PARAMS) + ["utm_source", "utm_medium", "UTM_Campaign", "utm_x"]

label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
host = st.lists(label, min_size=1, max_size=3).map(lambda labels: ".".join(labels) + ".com")
# Spaces inside a segment only: canonical_url strips whitespace around a whole URL (feeds
# pad links with it), so a path ending in a space is not the same URL once more follows.
segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_.~é ", min_size=1).filter(
    lambda s: s not in (".", "..") and s == s.strip()
)
path = st.lists(segment, max_size=4).map(lambda segments: "/" + "/".join(segments))
param_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6).filter(
    lambda name: not name.startswith("utm_") and name not in TRACKING_PARAMS
)
param_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", max_size=6)
params = st.lists(st.tuples(param_name, param_value), max_size=4)


def build(scheme: str, netloc: str, path: str, query: list[tuple[str, str]], fragment: str) -> str:
    url = f"{scheme}://{netloc}{path}"
    if query:
        url += "?" + "&".join(f"{key}={value}" for key, value in query)
    return url + (f"#{fragment}" if fragment else "")


def mixed_case(data: st.DataObject, text: str) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(char.upper() if flip else char for char, flip in zip(text, flips, strict=True))


@given(host=host, path=path, query=params, data=st.data())
def test_equivalent_spellings_have_one_canonical_form(
    host: str, path: str, query: list[tuple[str, str]], data: st.DataObject
) -> None:
    plain = build("https", host, path, query, "")
    scheme = mixed_case(data, data.draw(st.sampled_from(["http", "https"])))
    netloc = mixed_case(data, host) + data.draw(st.sampled_from(["", ":80", ":443"]))
    spelled_path = path + data.draw(st.sampled_from(["", "/"]))
    noisy_query = data.draw(st.permutations(query))
    for tracker in data.draw(st.lists(st.sampled_from(TRACKERS), max_size=3)):
        position = data.draw(st.integers(0, len(noisy_query)))
        noisy_query.insert(position, (tracker, data.draw(param_value)))
    fragment = data.draw(st.sampled_from(["", "top", "utm_source=x"]))
    noisy = build(scheme, netloc, spelled_path, noisy_query, fragment)
    assert canonical_url(noisy) == canonical_url(plain)


@given(host=host, path=path, query=params, data=st.data())
def test_trackers_never_survive(
    host: str, path: str, query: list[tuple[str, str]], data: st.DataObject
) -> None:
    noisy_query = list(query)
    for tracker in data.draw(st.lists(st.sampled_from(TRACKERS), min_size=1, max_size=3)):
        noisy_query.insert(data.draw(st.integers(0, len(noisy_query))), (tracker, "1"))
    url = build("https", host, path, noisy_query, "")
    for result in (canonical_url(url), strip_tracking(url)):
        names = [name.lower() for name, _ in parse_qsl(urlsplit(result).query, True)]
        assert not any(name.startswith("utm_") or name in TRACKING_PARAMS for name in names)
    kept = parse_qsl(urlsplit(strip_tracking(url)).query, keep_blank_values=True)
    assert kept == [(key, value) for key, value in query]


@given(host=host, left=path, right=path)
def test_different_paths_stay_different(host: str, left: str, right: str) -> None:
    if left.rstrip("/") == right.rstrip("/"):
        return
    assert canonical_url(f"https://{host}{left}") != canonical_url(f"https://{host}{right}")


@given(host=host, path=path, left=params, right=params)
def test_different_parameters_stay_different(
    host: str, path: str, left: list[tuple[str, str]], right: list[tuple[str, str]]
) -> None:
    if sorted(left) == sorted(right):
        return
    assert canonical_url(build("https", host, path, left, "")) != canonical_url(
        build("https", host, path, right, "")
    )


url_like = st.one_of(
    st.text(),
    st.builds(
        lambda scheme, middle, rest: scheme + middle + rest,
        st.sampled_from(["http://", "HTTPS://", "ftp://", "http:", "//", ""]),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
        st.text(alphabet="/?#&=%:@[]._~-aZ09é \t", max_size=20),
    ),
)


@given(url_like)
@example("http://[::1]:80/x")
@example("http://a.com/%zz%")
@example("http://ß.com/")
@example("http://a..b/")
@example("A://0..")
def test_canonical_url_never_raises_and_is_idempotent(url: str) -> None:
    once = canonical_url(url)
    assert canonical_url(once) == once
    assert once == "" or once == once.strip()


@given(url_like)
def test_strip_tracking_never_raises_and_is_idempotent(url: str) -> None:
    once = strip_tracking(url)
    assert strip_tracking(once) == once
    is_http_url(url)
    is_homepage(url)


# --- http_url, publishable_url: what may be published ----------------------------------------

BASE = "https://feed.example/news/feed.xml"

ACTIVE_LINKS = [
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    " \tjavascript:alert(1)",
    "\x00\x1fjavascript:alert(1) ",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "jav\r\nascript:alert(1)",
    "vbscript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    " data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "ftp://example.com/x",
    "mailto:a@example.com",
]


@pytest.mark.parametrize("link", ACTIVE_LINKS)
@pytest.mark.parametrize("base", [None, BASE])
def test_http_url_drops_every_other_scheme(link: str, base: str | None) -> None:
    assert http_url(link, base) is None
    assert publishable_url(link, base) is None


@pytest.mark.parametrize(
    ("value", "base", "expected"),
    [
        # absolute: as written, trimmed as a browser trims
        ("https://a.example/x?b=2&a=1#f", None, "https://a.example/x?b=2&a=1#f"),
        ("HTTP://A.example/X", None, "HTTP://A.example/X"),
        (" \t https://a.example/x \n", None, "https://a.example/x"),
        ("https://a.exa\tmple/x\ny", None, "https://a.example/xy"),
        # relative: resolved against the base, only then judged
        ("/story/1", BASE, "https://feed.example/story/1"),
        ("story-2", BASE, "https://feed.example/news/story-2"),
        ("//cdn.example/x", BASE, "https://cdn.example/x"),
        ("  ../up  ", BASE, "https://feed.example/up"),
        ("/story/1", None, None),
        ("/story/1", "javascript:alert(1)", None),
        # no host, a bad port, a bad IPv6 literal, backslashes: not a usable link
        ("https://", None, None),
        ("https:///path", None, None),
        ("http://:80/", None, None),
        ("http://a.example:http/", None, None),
        ("http://[::1/", None, None),
        ("http://exa mple.com/", None, None),
        ("https:\\\\evil.example\\x", BASE, None),
        ("https://evil.example\\@good.example/", None, None),
        ("", BASE, None),
        (None, BASE, None),
    ],
)
def test_http_url(value: str | None, base: str | None, expected: str | None) -> None:
    assert http_url(value, base) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://user:secret@feeds.example/feed", "http://feeds.example/feed"),
        ("https://tok3n@feeds.example:8443/f?x=1", "https://feeds.example:8443/f?x=1"),
        ("https://feeds.example/feed?api_key=XYZ", "https://feeds.example/feed"),
        ("https://feeds.example/feed?a=1&TOKEN=XYZ&b=2", "https://feeds.example/feed?a=1&b=2"),
        ("https://feeds.example/f?x-api-key=1;page=2", "https://feeds.example/f?page=2"),
        ("https://feeds.example/f?api%5Fkey=XYZ&q=a", "https://feeds.example/f?q=a"),
        ("https://a.example/cb#access_token=XYZ&state=1", "https://a.example/cb#state=1"),
        ("https://a.example/cb#access_token=XYZ", "https://a.example/cb"),
        # a secret-looking name without a value carries nothing; others are kept as written
        (
            "https://a.example/s?token&keyword=x&monkey=1",
            "https://a.example/s?token&keyword=x&monkey=1",
        ),
    ],
)
def test_publishable_url_removes_credentials(value: str, expected: str) -> None:
    assert publishable_url(value) == expected


def test_publishable_url_resolves_against_a_credentialed_base() -> None:
    base = "https://user:pw@feeds.example/feed?api_key=XYZ"
    assert publishable_url("/story", base) == "https://feeds.example/story"
    assert publishable_url("#part", base) == "https://feeds.example/feed#part"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        *((name, True) for name in sorted(SECRET_PARAMS)),
        *((name, True) for name in ("API_KEY", "Api-Key", "X-Api-Key", "refresh_token")),
        *((name, True) for name in ("oauth_signature", "X-Amz-Signature", "app_secret")),
        *((name, False) for name in ("id", "page", "q", "keyword", "monkey", "tokens", "sort")),
    ],
)
def test_is_secret_param(name: str, secret: bool) -> None:
    assert is_secret_param(name) is secret


def test_secret_params_include_the_documented_names() -> None:
    documented = {
        *("api_key", "apikey", "api-key", "key", "token", "access_token", "auth"),
        *("auth_token", "secret", "client_secret", "password", "passwd", "pass", "pwd"),
        *("sig", "signature", "session", "sessionid", "private_token"),
    }
    assert all(is_secret_param(name) for name in documented)


# --- redact_url, redact_text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:secret@host.example/feed", "http://***@host.example/feed"),
        ("https://tok3n@host.example/", "https://***@host.example/"),
        (
            "https://host.example/feed?api_key=XYZ&page=2&Token=abc",
            "https://host.example/feed?api_key=***&page=2&Token=***",
        ),
        ("https://host.example/f?token=&sig", "https://host.example/f?token=&sig"),
        (
            "https://host.example/?x=1#access_token=XYZ",
            "https://host.example/?x=1#access_token=***",
        ),
        ("https://host.example/plain", "https://host.example/plain"),
        ("/relative?password=hunter2", "/relative?password=***"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_redacts_every_url_in_a_message() -> None:
    message = (
        "redirect loop: http://u:pw1@a.example/f?token=t1 -> 'https://b.example/g?key=k1'"
        " then (Location: /login?session=s1&next=/x)"
    )
    redacted = redact_text(message)
    assert redacted == (
        "redirect loop: http://***@a.example/f?token=*** -> 'https://b.example/g?key=***'"
        " then (Location: /login?session=***&next=/x)"
    )
    assert redact_text("connection refused") == "connection refused"
    # the punctuation after a URL in prose is the prose's, kept
    assert redact_text("http://127.0.0.1:1/f.json?api_key=K: HTTP 200") == (
        "http://127.0.0.1:1/f.json?api_key=***: HTTP 200"
    )
    assert redact_text("see https://a.example/x?token=abc, then /f?key=x. Done") == (
        "see https://a.example/x?token=***, then /f?key=***. Done"
    )


secret_value = st.text(alphabet="DEFGHJKLMNPQRSTUVWXYZ", min_size=12, max_size=20)
secret_name = st.sampled_from(
    sorted(SECRET_PARAMS) + ["API-Key", "X-Api-Key", "refresh_token", "Client_Secret"]
)


@given(
    host=host,
    path=path,
    query=params,
    data=st.data(),
    user=st.sampled_from(["", "user", "user:"]),
    secret=secret_value,
    name=secret_name,
)
def test_secrets_never_survive_publishing_or_redaction(
    host: str,
    path: str,
    query: list[tuple[str, str]],
    data: st.DataObject,
    user: str,
    secret: str,
    name: str,
) -> None:
    noisy = [pair for pair in query if not is_secret_param(pair[0])]
    noisy.insert(data.draw(st.integers(0, len(noisy))), (name, secret))
    userinfo = f"{user}{secret}@" if user else ""
    url = build(data.draw(st.sampled_from(["http", "HTTPS"])), userinfo + host, path, noisy, "")
    published = publishable_url(url)
    assert published is not None and secret not in published
    assert publishable_url(published) == published
    assert secret not in redact_url(url)
    assert secret not in redact_text(f"fetching {url}: HTTP 500")
    assert secret not in redact_text(f"moved to <{url}>.")
    # what is not a secret stays as written
    kept = [(key, value) for key, value in noisy if key != name]
    assert parse_qsl(urlsplit(published).query, keep_blank_values=True) == kept
    assert urlsplit(published).hostname == host


C0_CONTROL_OR_SPACE = "".join(chr(code) for code in range(0x21))


@given(url_like, st.sampled_from([None, BASE, "http://u:p@h.example/a/b?token=x", "mailto:x"]))
@example(" \tjavascript:alert(1)", BASE)
@example("http://[::1]:99999/", None)
@example("HTTP:/x", BASE)
@example("http:x", BASE)
def test_published_urls_are_always_http_or_none(url: str, base: str | None) -> None:
    for function in (http_url, publishable_url):
        once = function(url, base)
        if once is None:
            continue
        assert urlsplit(once).scheme.lower() in ("http", "https")
        assert urlsplit(once).hostname
        assert once == once.strip(C0_CONTROL_OR_SPACE) and not {"\t", "\n", "\r"} & set(once)
        assert function(once) == once
        assert function(once, base) == once
    published = publishable_url(url, base)
    if published is not None:
        assert "@" not in urlsplit(published).netloc


@given(url_like)
def test_redaction_never_raises_and_is_idempotent(text: str) -> None:
    assert redact_url(redact_url(text)) == redact_url(text)
    assert redact_text(redact_text(text)) == redact_text(text)


@given(url=st.from_regex(urls._PLAIN_WEB_URL, fullmatch=True))
def test_the_plain_url_fast_path_agrees_with_the_full_reading(url: str) -> None:
    fast = (urls.http_url(url), urls.publishable_url(url))
    never = re.compile(r"(?!)")
    original = urls._PLAIN_WEB_URL
    urls._PLAIN_WEB_URL = never
    try:
        slow = (urls.http_url(url), urls.publishable_url(url))
    finally:
        urls._PLAIN_WEB_URL = original
    assert fast == slow


def test_a_url_longer_than_any_usable_link_is_refused() -> None:
    """A feed's megabyte-long image or icon URL would be repeated on every page."""
    assert urls.http_url("https://a.example/" + "a" * 4000) is not None
    assert urls.http_url("https://a.example/" + "a" * urls.MAX_URL_CHARS) is None
    assert urls.publishable_url("https://a.example/?q=" + "a" * 100_000) is None
