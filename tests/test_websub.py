"""WebSub (aggregator/websub.py), both sides, against a small hub of our own on 127.0.0.1.

The hub (`LoopbackHub`) does what a WebSub hub does, no more: it takes subscription
requests (202), verifies them by GETting the callback with a challenge, pushes content
with a right or wrong signature when told to, and records publish pings. The daemon runs
in this process (`run_driven`), so a test can shorten the renewal floor.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aggregator import update, websub
from aggregator.cli import main
from aggregator.daemon import Daemon
from aggregator.model import FeedSource, FeedState, Fetched, NotModified, Subscription
from aggregator.parse import link_header, parse_feed
from aggregator.store import Store
from aggregator.timeutil import utcnow
from tests.feedserver import FeedServer
from tests.test_daemon import Story, free_port, make_story, rss, write_config
from tests.test_daemon_inprocess import run_driven, wait_for

ATOM_NS = "http://www.w3.org/2005/Atom"


# --- the hub ----------------------------------------------------------------------------


@dataclass
class Verification:
    mode: str
    callback: str
    topic: str
    status: int
    echoed: bool


@dataclass
class LoopbackHub:
    """A WebSub hub on 127.0.0.1 in a thread of its own."""

    #: the lease it grants, seconds
    lease_seconds: int = 3600
    subscribes: list[dict[str, str]] = field(default_factory=list)
    unsubscribes: list[dict[str, str]] = field(default_factory=list)
    verifications: list[Verification] = field(default_factory=list)
    pings: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                mode = form.get("hub.mode")
                if mode == "publish":
                    with hub.lock:
                        hub.pings.append(form["hub.url"])
                    self._answer(204)
                elif mode in ("subscribe", "unsubscribe"):
                    with hub.lock:
                        (hub.subscribes if mode == "subscribe" else hub.unsubscribes).append(form)
                    self._answer(202)
                    threading.Thread(target=hub.verify, args=(form,), daemon=True).start()
                else:
                    self._answer(400)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hub"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def verify(self, form: dict[str, str], topic: str | None = None) -> Verification:
        """Verification of intent (§5.3): GET the callback with a challenge."""
        challenge = "challenge-" + hashlib.sha1(str(time.monotonic()).encode()).hexdigest()
        query = {
            "hub.mode": form["hub.mode"],
            "hub.topic": topic or form["hub.topic"],
            "hub.challenge": challenge,
        }
        if form["hub.mode"] == "subscribe":
            query["hub.lease_seconds"] = str(self.lease_seconds)
        status, body = call(form["hub.callback"], "GET", query=query)
        done = Verification(
            form["hub.mode"], form["hub.callback"], query["hub.topic"], status, body == challenge
        )
        if topic is None:
            with self.lock:
                self.verifications.append(done)
        return done

    def push(self, form: dict[str, str], body: bytes, signature: str | None = "right") -> int:
        """Content distribution (§7): POST the feed to the callback, signed with the
        subscriber's secret ("right"), another ("wrong"), or not at all (None)."""
        headers = {"Content-Type": "application/rss+xml"}
        if signature is not None:
            secret = form["hub.secret"] if signature == "right" else "not-the-secret"
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature"] = f"sha256={digest}"
        return call(form["hub.callback"], "POST", body=body, headers=headers)[0]


def call(
    url: str,
    method: str,
    *,
    query: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    parts = urllib.parse.urlsplit(url)
    path = parts.path + ("?" + urllib.parse.urlencode(query) if query else "")
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.fixture
def hub() -> Iterator[LoopbackHub]:
    loopback = LoopbackHub()
    yield loopback
    loopback.close()


def hub_feed(title: str, stories: list[Story], hub_url: str, self_url: str) -> bytes:
    """An RSS feed declaring its hub and self URL, as WebSub publishers do."""
    links = (
        f'<atom:link xmlns:atom="{ATOM_NS}" rel="hub" href="{hub_url}"/>'
        f'<atom:link xmlns:atom="{ATOM_NS}" rel="self" href="{self_url}"/>'
    )
    return rss(title, stories).replace(b"<channel>", b"<channel>" + links.encode(), 1)


def served(daemon: Daemon, name: str) -> bytes:
    output = daemon.publisher.outputs.get(name)
    return output.body if output is not None else b""


# --- pure parts -----------------------------------------------------------------------------


def test_signatures_are_hmacs_of_the_body_with_the_secret() -> None:
    body = b"<rss/>"
    for method in ("sha1", "sha256", "sha384", "sha512"):
        digest = hmac.new(b"s3cret", body, method).hexdigest()
        assert websub.signature_ok("s3cret", body, f"{method}={digest}")
        assert not websub.signature_ok("other", body, f"{method}={digest}")
        assert not websub.signature_ok("s3cret", body + b" ", f"{method}={digest}")
    assert not websub.signature_ok("s3cret", body, None)
    assert not websub.signature_ok("s3cret", body, "md5=" + hashlib.md5(body).hexdigest())
    assert not websub.signature_ok("s3cret", body, "sha256=")


def test_hubs_are_discovered_in_link_headers_and_feed_links() -> None:
    body = hub_feed("A", [make_story("a")], "https://hub.example/", "https://a.example/feed")
    parsed = parse_feed(body, {}, "https://a.example/rss")
    assert (parsed.hubs, parsed.self_url) == (("https://hub.example/",), "https://a.example/feed")
    header = '<https://h.example/p>; rel="hub", </self.xml>; rel=self, <x>; rel="next"'
    assert [link["rel"] for link in link_header(header)] == ["hub", "self", "next"]
    headed = parse_feed(rss("B", []), {"Link": header}, "https://b.example/rss")
    assert (headed.hubs, headed.self_url) == (
        ("https://h.example/p",),
        "https://b.example/self.xml",
    )
    hostile = hub_feed("C", [], "javascript:alert(1)", "https://c.example/")
    assert parse_feed(hostile, {}, "https://c.example/rss").hubs == ()
    json_feed = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": "J",
        "feed_url": "https://j.example/feed.json",
        "hubs": [{"type": "WebSub", "url": "https://hub.example/j"}],
        "items": [],
    }
    parsed = parse_feed(json.dumps(json_feed).encode(), {}, "https://j.example/feed.json")
    assert (parsed.hubs, parsed.self_url) == (("https://hub.example/j",), json_feed["feed_url"])


def test_the_declared_hub_and_the_pushed_interval_are_pure_decisions() -> None:
    url = "https://a.example/rss"
    source = FeedSource(
        url=url, min_interval=timedelta(minutes=10), max_interval=timedelta(hours=1)
    )
    old = FeedState(url=url, fetch_url=url)
    now = utcnow()
    body = hub_feed("A", [make_story("a")], "https://hub.example/", "https://a.example/feed")
    fetched = Fetched(url=url, status=200, body=body, headers={})
    parsed = parse_feed(body, {}, url)
    state = update.decide(source, old, update.Answered(fetched, "h", parsed), now).state
    assert (state.websub_hub, state.websub_topic) == ("https://hub.example/", parsed.self_url)
    assert state.next_due is not None and state.next_due <= now + timedelta(hours=1)
    # a 304 keeps what the last body declared; a push-fed feed is polled rarely
    again = update.Answered(NotModified(url=url))
    pushed = update.decide(source, state, again, now, pushed=True).state
    assert pushed.websub_hub == "https://hub.example/"
    assert pushed.next_due is not None and pushed.next_due >= now + update.PUSHED_INTERVAL * 0.9
    assert update.explain_interval(source, pushed, pushed=True)[1].startswith("pushed")
    # a feed with its own interval keeps it, pushed or not
    fixed = FeedSource(url=url, interval=timedelta(minutes=5))
    assert update.interval_for(fixed, None, None, pushed=True) == timedelta(minutes=5)


def test_subscriptions_are_stored_and_replaced_per_feed() -> None:
    store = Store.open(":memory:")
    first = websub.new_subscription("https://a.example/feed", "https://hub.example/", "t")
    store.put_subscription(first)
    assert store.subscriptions() == [first]
    second = websub.new_subscription("https://a.example/feed", "https://hub.example/", "t")
    assert second.id != first.id and second.secret != first.secret
    assert first.secret not in repr(first)
    store.put_subscription(second)
    assert store.subscriptions() == [second]
    store.delete_subscription(second.id)
    assert store.subscriptions() == []


def test_renewal_comes_before_the_lease_ends_but_not_at_once() -> None:
    now = utcnow()
    lease = Subscription("i", "f", "h", "t", "s", "active", lease_expires=now + timedelta(days=10))
    assert websub.renewal_due(lease, now) == now + timedelta(days=8.5)
    short = Subscription(
        "i", "f", "h", "t", "s", "active", lease_expires=now + timedelta(seconds=5)
    )
    assert websub.renewal_due(short, now) == now + websub.RENEW_FLOOR


# --- publisher ----------------------------------------------------------------------------


def test_the_daemon_pings_its_hub_after_a_round_that_changed_a_feed(
    tmp_path: Path, hub: LoopbackHub
) -> None:
    config = tmp_path / "feeds.yaml"
    port = free_port()
    with FeedServer() as server:
        stories = [make_story("p1")]
        server.set("/a.rss", rss("A", stories))
        feed = server.url("/a.rss")
        write_config(config, port, [feed], interval="1s", settings=f"  websub_hub: {hub.url}")
        daemon = Daemon(config)
        seen: dict[str, Any] = {}
        base = f"http://127.0.0.1:{port}/"
        feeds = {f"{base}all.atom", f"{base}all.rss", f"{base}all.json"}

        async def drive() -> None:
            await wait_for(lambda: b"p1" in served(daemon, "all.atom") and feeds <= set(hub.pings))
            await wait_for(lambda: daemon.publisher.pinger and daemon.publisher.pinger.idle)
            settled = len(hub.pings)
            polls = len(server.requests_to("/a.rss"))
            # two more polls of an unchanged feed: nothing published, nothing pinged
            await wait_for(lambda: len(server.requests_to("/a.rss")) >= polls + 2)
            await asyncio.sleep(1.5)
            seen["quiet"] = hub.pings[settled:]
            server.set("/a.rss", rss("A", [make_story("p2"), *stories]))
            await wait_for(lambda: b"p2" in served(daemon, "all.atom"))
            await wait_for(lambda: len(hub.pings) >= settled + 3)
            await asyncio.sleep(0.5)
            seen["changed"] = hub.pings[settled:]

        assert run_driven(daemon, drive) == 0

    assert seen["quiet"] == []
    assert sorted(seen["changed"]) == sorted(feeds)  # not the HTML page
    published = (tmp_path / "public" / "all.atom").read_bytes()
    assert f'<link rel="hub" href="{hub.url}"/>'.encode() in published
    assert json.loads((tmp_path / "public" / "all.json").read_bytes())["hubs"] == [
        {"type": "WebSub", "url": hub.url}
    ]


# --- subscriber ---------------------------------------------------------------------------


def test_a_feed_declaring_a_hub_is_subscribed_pushed_renewed_and_unsubscribed(
    tmp_path: Path,
    hub: LoopbackHub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    hermetic: None,
) -> None:
    caplog.set_level(logging.INFO, logger="aggregator")
    monkeypatch.setattr(websub, "RENEW_FLOOR", timedelta(0))
    hub.lease_seconds = 3  # renewed at 85 %: about 2.5 s after the verification
    config = tmp_path / "feeds.yaml"
    port = free_port()
    with FeedServer() as server:
        feed, other = server.url("/a.rss"), server.url("/b.rss")
        first = make_story("s1")
        server.set("/a.rss", hub_feed("A", [first], hub.url, feed))
        server.set("/b.rss", rss("B", [make_story("b1")]))
        settings = "  max_feed_size: 64KB"
        write_config(config, port, [feed, other], interval="1s", settings=settings)
        daemon = Daemon(config)
        seen: dict[str, Any] = {}

        async def drive() -> None:
            await wait_for(lambda: hub.verifications, timeout=15)
            [verified] = hub.verifications
            seen["verified"] = verified
            form = hub.subscribes[0]
            seen["form"] = form
            # polled as a fallback only, now that the hub pushes it
            job = f"poll:{feed}"

            def polled_rarely() -> bool:
                found = daemon.scheduler.get_job(job)
                due = found.next_run_time if found else None
                return due is not None and due > utcnow() + timedelta(hours=5)

            await wait_for(polled_rarely, timeout=10)
            other_job = daemon.scheduler.get_job(f"poll:{other}")
            seen["other_due"] = other_job.next_run_time if other_job else None

            # what the outside may try
            wrong = await asyncio.to_thread(hub.verify, form, "https://elsewhere.example/")
            seen["wrong_topic"] = wrong.status
            unknown = form["hub.callback"].rsplit("/", 1)[0] + "/not-an-id"
            seen["unknown"] = await asyncio.to_thread(
                call, unknown, "POST", body=b"x", headers={"X-Hub-Signature": "sha256=00"}
            )
            forged = hub_feed("A", [make_story("forged"), first], hub.url, feed)
            seen["forged"] = await asyncio.to_thread(hub.push, form, forged, "wrong")
            unsigned = hub_feed("A", [make_story("unsigned"), first], hub.url, feed)
            seen["unsigned"] = await asyncio.to_thread(hub.push, form, unsigned, None)
            huge = b"<rss>" + b" " * 70_000 + b"</rss>"
            seen["huge"] = await asyncio.to_thread(hub.push, form, huge)

            pushed = hub_feed("A", [make_story("s2"), first], hub.url, feed)
            seen["pushed"] = await asyncio.to_thread(hub.push, form, pushed)
            await wait_for(lambda: b"Story s2" in served(daemon, "all.atom"))
            seen["atom"] = served(daemon, "all.atom")

            await wait_for(lambda: len(hub.subscribes) >= 2, timeout=10)
            seen["renewal"] = hub.subscribes[1]
            status = await asyncio.to_thread(
                main, ["-c", str(config), "status", "--json", "--feed", feed]
            )
            seen["status"] = (status, capsys.readouterr().out)

            # the feed leaves the config: its subscription is ended
            write_config(config, port, [other], interval="1s", settings=settings)
            await wait_for(lambda: hub.unsubscribes, timeout=10)
            await wait_for(lambda: not daemon.subscriber or not daemon.subscriber.by_id)
            await wait_for(lambda: daemon.config is not None and len(daemon.config.feeds) == 1)
            await asyncio.sleep(1.5)  # the reload's render

        assert run_driven(daemon, drive) == 0

    verified, form = seen["verified"], seen["form"]
    assert (verified.mode, verified.status, verified.echoed) == ("subscribe", 200, True)
    assert form["hub.topic"] == feed
    assert form["hub.callback"].startswith(f"http://127.0.0.1:{port}/websub/")
    assert int(form["hub.lease_seconds"]) > 0 and len(form["hub.secret"]) >= 32
    assert seen["other_due"] is not None and seen["other_due"] < utcnow() + timedelta(minutes=5)

    assert seen["wrong_topic"] == 404
    assert seen["unknown"][0] == 404
    assert seen["forged"] == seen["unsigned"] == 202  # acknowledged, ignored (§8)
    assert seen["huge"] == 413
    assert seen["pushed"] == 202
    assert b"Story forged" not in seen["atom"] and b"Story unsigned" not in seen["atom"]
    assert b"Story s1" in seen["atom"]

    renewal = seen["renewal"]
    assert renewal["hub.callback"] == form["hub.callback"]
    assert renewal["hub.secret"] == form["hub.secret"]
    assert hub.unsubscribes[0]["hub.callback"] == form["hub.callback"]
    assert hub.verifications[-1].mode == "unsubscribe" and hub.verifications[-1].echoed

    code, shown = seen["status"]
    assert code == 0 and json.loads(shown)["interval_reason"].startswith("pushed")
    assert "verified" in caplog.text and "ignored" in caplog.text
    assert form["hub.secret"] not in caplog.text + shown
    with Store.open(tmp_path / "agg.db") as store:
        assert store.subscriptions() == []
        history = store.fetch_history(feed)
    assert "pushed" in [fetch.outcome for fetch in history]
