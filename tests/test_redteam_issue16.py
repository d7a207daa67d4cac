"""Red-team findings on the surfaces of issue 16 (search, archive pages, WebSub callbacks).

Each test drives the ASGI app or the WebSub endpoint directly with what a hostile client
sent: no 500, no traceback, nothing echoed that a browser could run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from aggregator import discover, publish, render, websub
from aggregator.config import parse_config
from aggregator.model import Subscription
from aggregator.timeutil import utcnow

CONFIG = """\
settings:
  database: ":memory:"
  max_feed_size: 64KB
feeds:
  - url: https://a.example/feed.rss
"""

TOPIC = "https://a.example/feed.rss"


async def call_asgi(
    app: Any,
    method: str,
    path: str,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: list[dict[str, Any]] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through an ASGI app: status, headers (last of each), body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers or [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    messages = list(body or [{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return (
        start["status"],
        dict(start.get("headers", [])),
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


def subscriber() -> websub.Subscriber:
    config = parse_config(CONFIG, Path("/tmp/feeds.yaml"))
    found = websub.Subscriber(cast(Any, None), cast(Any, None), config, lambda *_: None)
    found.by_id["cb"] = Subscription(
        "cb", TOPIC, "https://hub.example/", TOPIC, "s3cret", "active", utcnow() + timedelta(1)
    )
    return found


def websub_app(found: websub.Subscriber) -> Any:
    return publish.make_app(
        publish.OutputCache(), lambda: (200, {}), lambda: b"", websub=found.endpoint
    )


@pytest.mark.parametrize("header", ["sha256=\u00e9\u00e9", "sha1=\u0661\u0662", "sha256=\u00ff"])
def test_a_signature_with_non_ascii_characters_is_wrong_not_an_error(header: str) -> None:
    # hmac.compare_digest raised TypeError on a non-ASCII str: a 500 with a traceback
    assert websub.signature_ok("s3cret", b"<rss/>", header) is False


def test_a_push_signed_with_non_ascii_bytes_is_acknowledged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = subscriber()
    status, _, _ = asyncio.run(
        call_asgi(
            websub_app(found),
            "POST",
            "/websub/cb",
            headers=[(b"x-hub-signature", b"sha256=\xe9\xe9"), (b"content-length", b"6")],
            body=[{"type": "http.request", "body": b"<rss/>", "more_body": False}],
        )
    )
    assert status == 202
    assert "Traceback" not in caplog.text and "s3cret" not in caplog.text


def test_a_push_whose_client_goes_before_the_body_ends_is_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the server's request timeout closes a connection whose body never completes (a
    # slow POST): the endpoint saw ClientDisconnect and logged it as an ASGI exception
    caplog.set_level(logging.DEBUG)
    found = subscriber()
    status, _, _ = asyncio.run(
        call_asgi(
            websub_app(found),
            "POST",
            "/websub/cb",
            headers=[(b"x-hub-signature", b"sha256=00"), (b"content-length", b"1000")],
            body=[
                {"type": "http.request", "body": b"abc", "more_body": True},
                {"type": "http.disconnect"},
            ],
        )
    )
    assert status == 400
    assert "Traceback" not in caplog.text and "ClientDisconnect" not in caplog.text


def test_the_echoed_challenge_is_never_sniffed() -> None:
    found = subscriber()
    query = b"hub.mode=subscribe&hub.topic=" + TOPIC.encode() + b"&hub.challenge=%3Cb%3Ex"
    # only the answer is looked at: _verified needs the poller and the scheduler
    found._verified = lambda *_: None  # type: ignore[method-assign]
    status, headers, body = asyncio.run(
        call_asgi(websub_app(found), "GET", "/websub/cb", query=query)
    )
    assert (status, body) == (200, b"<b>x")
    assert headers[b"content-type"].startswith(b"text/plain")
    assert headers[b"x-content-type-options"] == b"nosniff"


@pytest.mark.parametrize(
    ("answer", "csp"),
    [
        (publish.Answer(200, b"<!DOCTYPE html><title>x</title>", render.HTML_TYPE), True),
        (publish.Answer(400, b"<!DOCTYPE html><title>bad</title>", render.HTML_TYPE), True),
        (publish.Answer(400, b"no topic '<script>'\n", "text/plain; charset=utf-8"), False),
        (publish.Answer(200, b"<feed/>", render.SEARCH_FORMATS["atom"]), False),
    ],
)
def test_search_answers_are_not_sniffed_and_pages_run_no_script(
    answer: publish.Answer, csp: bool
) -> None:
    # the published pages had the policy, the search page, which echoes the query and
    # shows the stories' text too, had none
    async def search(extension: str, parameters: Mapping[str, str]) -> publish.Answer:
        return answer

    app = publish.make_app(publish.OutputCache(), lambda: (200, {}), lambda: b"", search=search)
    status, headers, _ = asyncio.run(call_asgi(app, "GET", "/search", b"q=%3Cscript%3E"))
    assert status == answer.status
    assert headers[b"x-content-type-options"] == b"nosniff"
    if csp:
        assert headers[b"content-security-policy"] == render.PAGE_CSP.encode()
        assert "script-src" not in render.PAGE_CSP and "default-src 'none'" in render.PAGE_CSP
    else:
        assert b"content-security-policy" not in headers


def test_advertised_feeds_with_control_characters_are_not_candidates() -> None:
    # `add` listed every candidate on the terminal as found: a page could send escape
    # sequences (and such a URL can never be a feed's url: anyway)
    page = (
        b"<html><head>"
        b'<link rel="alternate" type="application/rss+xml" href="/x\x1b[2J\x1b]0;owned\x07">'
        b'<link rel="alternate" type="application/atom+xml" href="/ok.atom">'
        b"</head></html>"
    )
    assert discover.feed_links(page, "https://site.example/") == [
        discover.Candidate("https://site.example/ok.atom", "", "application/atom+xml")
    ]


def test_archive_pages_are_not_pinged() -> None:
    """They name no hub, and change (and go) whenever the first page does."""
    names = ["nk.atom", "nk.rss", "nk.json", "nk.html", "nk.before-20261123T132145Z-u0.atom"]
    assert websub.feed_urls("https://x.example/", names) == [
        "https://x.example/nk.atom",
        "https://x.example/nk.json",
        "https://x.example/nk.rss",
    ]


def test_a_subscription_never_asked_for_is_asked_again() -> None:
    """Saved as pending before its request went out (the daemon stopped, the request
    raised): it used to count as asked just now, forever."""
    found = subscriber()
    found.by_id["cb"] = replace(found.by_id["cb"], state="pending", requested_at=None)
    asked: list[tuple[str, str]] = []

    async def request(subscription: Subscription, mode: str) -> None:
        asked.append((subscription.id, mode))

    found._request = request  # type: ignore[method-assign]
    asyncio.run(found.check())
    assert asked == [("cb", "subscribe")]


@pytest.mark.parametrize("number", ["²", "١٢", "1" * 12, "-5", ""])
def test_numbers_a_hub_or_client_sends_are_ascii_digits(number: str) -> None:
    # "²".isdigit() is true and int("²") raises: a 500 from a query parameter
    assert websub._DIGITS.fullmatch(number) is None


def test_pushes_are_counted_while_read_and_never_leak() -> None:
    """Bodies being read count against MAX_PENDING_PUSHES; a push refused on the way (too
    large, cut short, badly signed) gives its place back, or 16 of them would shut pushes
    out for good."""
    found = subscriber()
    app = websub_app(found)
    large: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"x" * (2 << 20), "more_body": False}
    ]
    cut: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.disconnect"},
    ]
    unsigned: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"<rss/>", "more_body": False}
    ]
    for body in (large, cut, unsigned) * (websub.MAX_PENDING_PUSHES + 1):
        status, _, _ = asyncio.run(
            call_asgi(
                app, "POST", "/websub/cb", headers=[(b"x-hub-signature", b"sha256=00")], body=body
            )
        )
        assert status in (413, 400, 202)
    assert found._pushes == 0
    found._pushes = websub.MAX_PENDING_PUSHES
    status, _, _ = asyncio.run(call_asgi(app, "POST", "/websub/cb", body=unsigned))
    assert status == 503
