"""Private things against real servers: redirects into the private network, private feeds.

A feed configured at a public address may not redirect into the private network; one
configured on loopback or the LAN may. Tests only have loopback, so the `public_address`
fixture puts a public address (45.33.32.156, `is_global`) on the loopback interface (as root,
with `ip`) and takes it off again afterwards; without root or `ip` those tests are skipped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import feedparser
import pytest

import aggregator.fetch
from aggregator.errors import FetchError
from aggregator.fetch import Fetcher, is_public_address
from aggregator.model import FeedState, Fetched, FetchLimits, NotModified
from tests.commands import aggregator as aggregator_cli
from tests.feedserver import FeedServer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMITS = FetchLimits(connect_timeout=2.0, read_timeout=2.0, total_timeout=5.0, per_host_spacing=0)
#: scanme.nmap.org: global, and harmless to shadow on this machine for a few seconds
PUBLIC = "45.33.32.156"


def rss(title: str, *links: str) -> bytes:
    items = "".join(
        f"<item><title>{title} {n}</title><link>{link}</link></item>"
        for n, link in enumerate(links)
    )
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title>'
        f"<link>http://example.com/</link>{items}</channel></rss>"
    ).encode()


PUBLIC_FEED = rss("Public news", "https://news.example/1", "https://news.example/2")
INTERNAL_ADMIN = rss("Internal admin", "http://10.0.0.1/admin/reset-passwords")


def _is_local(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def public_address() -> Iterator[str]:
    """PUBLIC, bound to the loopback interface for the module's tests."""
    assert ipaddress.ip_address(PUBLIC).is_global
    if _is_local(PUBLIC):
        yield PUBLIC
        return
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip(f"needs the `ip` command to put the public address {PUBLIC} on loopback")
    if os.geteuid() != 0:
        pytest.skip(f"needs root to put the public address {PUBLIC} on loopback")
    added = subprocess.run(
        [ip, "addr", "add", f"{PUBLIC}/32", "dev", "lo"], capture_output=True, text=True
    )
    if added.returncode != 0:
        pytest.skip(f"cannot put {PUBLIC} on loopback: {added.stderr.strip()}")
    try:
        yield PUBLIC
    finally:
        subprocess.run([ip, "addr", "del", f"{PUBLIC}/32", "dev", "lo"], capture_output=True)


@pytest.fixture
def public_server(public_address: str) -> Iterator[FeedServer]:
    """A feed server at a public address."""
    with FeedServer(host=public_address) as server:
        yield server


@pytest.fixture
def internal() -> Iterator[FeedServer]:
    """The private network: an admin page that must never be fetched from outside."""
    with FeedServer() as server:
        server.set("/internal-admin", INTERNAL_ADMIN)
        yield server


def fetch(state: FeedState) -> Fetched | NotModified:
    async def run() -> Fetched | NotModified:
        async with Fetcher(LIMITS) as fetcher:
            return await fetcher.fetch(state, NOW)

    return asyncio.run(run())


def fetch_url(url: str) -> Fetched | NotModified:
    return fetch(FeedState(url=url, fetch_url=url))


# --- the address rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "ff02::1",
        "ff0e::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "::7f00:1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", [PUBLIC, "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


# --- redirects from a public feed -------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1 (127.1)"),  # numeric forms resolve like any host name
        ("0.0.0.0", "0.0.0.0"),  # connects to this machine on Linux
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("localhost", None),
    ],
)
def test_a_public_feed_may_not_redirect_into_the_private_network(
    public_server: FeedServer, internal: FeedServer, host: str, shown: str | None
) -> None:
    public_server.redirect("/feed.xml", f"http://{host}:{internal.port}/internal-admin", 302)
    with pytest.raises(FetchError) as caught:
        fetch_url(public_server.url("/feed.xml"))
    if shown is None:  # localhost: whichever of its addresses comes first
        assert str(caught.value) in (
            "redirect to a non-public address 127.0.0.1 (localhost) refused",
            "redirect to a non-public address ::1 (localhost) refused",
        )
    else:
        assert str(caught.value) == f"redirect to a non-public address {shown} refused"
    assert internal.requests == []


def test_every_hop_is_checked(public_server: FeedServer, internal: FeedServer) -> None:
    public_server.redirect("/feed.xml", "/moved.xml", 301)
    public_server.redirect("/moved.xml", internal.url("/internal-admin"), 302)
    with pytest.raises(FetchError, match="^redirect to a non-public address 127.0.0.1 refused$"):
        fetch_url(public_server.url("/feed.xml"))
    assert len(public_server.requests_to("/moved.xml")) == 1
    assert internal.requests == []


def test_a_stored_permanent_redirect_into_the_private_network_is_refused(
    public_server: FeedServer, internal: FeedServer
) -> None:
    """A feed that moved (fetch_url) is fetched there directly; its target is a redirect's."""
    state = FeedState(url=public_server.url("/feed.xml"), fetch_url=internal.url("/internal-admin"))
    with pytest.raises(FetchError, match="^redirect to a non-public address 127.0.0.1 refused$"):
        fetch(state)
    assert internal.requests == []


def test_a_public_feed_may_redirect_to_another_public_address(
    public_server: FeedServer, public_address: str
) -> None:
    with FeedServer(host=public_address) as other:
        other.set("/feed.xml", PUBLIC_FEED)
        public_server.redirect("/feed.xml", other.url("/feed.xml"), 302)
        result = fetch_url(public_server.url("/feed.xml"))
    assert isinstance(result, Fetched)
    assert result.body == PUBLIC_FEED


def resolving(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Make `host` resolve to answers[host][0], then [1]…, the last one for good (other hosts
    resolve for real); returns the log of the hosts looked up."""
    real = aggregator.fetch._resolve
    looked_up: list[str] = []

    async def fake(host: str, port: int) -> list[str]:
        looked_up.append(host)
        if host not in answers:
            return await real(host, port)
        queue = answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    monkeypatch.setattr(aggregator.fetch, "_resolve", fake)
    return looked_up


def test_a_host_name_that_rebinds_to_a_private_address_is_refused_where_it_connects(
    public_server: FeedServer, internal: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers a public address to the check, then loopback. The
    connection is made to addresses checked at connect time, never resolved again."""
    public_server.redirect("/feed.xml", f"http://localhost:{internal.port}/internal-admin", 302)
    looked_up = resolving(monkeypatch, {"localhost": [[PUBLIC], ["127.0.0.1"]]})
    with pytest.raises(FetchError) as caught:
        fetch_url(public_server.url("/feed.xml"))
    assert str(caught.value) == "redirect to a non-public address 127.0.0.1 (localhost) refused"
    assert internal.requests == []
    assert looked_up == ["localhost", "localhost"]


def test_a_public_host_name_is_connected_to_at_the_address_checked(
    public_server: FeedServer, public_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`feeds.example.test` exists only in our resolver: the connection uses its answer."""
    with FeedServer(host=public_address) as other:
        other.set("/feed.xml", PUBLIC_FEED)
        public_server.redirect("/feed.xml", f"http://feeds.example.test:{other.port}/feed.xml")
        resolving(monkeypatch, {"feeds.example.test": [[public_address]]})
        result = fetch_url(public_server.url("/feed.xml"))
        (request,) = other.requests
    assert isinstance(result, Fetched)
    assert result.body == PUBLIC_FEED
    assert request.headers["host"] == f"feeds.example.test:{other.port}"


# --- feeds configured in the private network ---------------------------------------------


def test_a_feed_configured_on_loopback_may_redirect_anywhere(
    feed_server: FeedServer, internal: FeedServer
) -> None:
    feed_server.redirect("/feed.xml", internal.url("/internal-admin"), 302)
    result = fetch_url(feed_server.url("/feed.xml"))
    assert isinstance(result, Fetched)
    assert result.body == INTERNAL_ADMIN


def test_a_feed_configured_by_a_name_for_loopback_may_redirect_anywhere(
    feed_server: FeedServer, internal: FeedServer
) -> None:
    feed_server.redirect("/feed.xml", internal.url("/internal-admin"), 302)
    result = fetch_url(f"http://localhost:{feed_server.port}/feed.xml")
    assert isinstance(result, Fetched)
    assert result.body == INTERNAL_ADMIN


# --- as a user runs it: `aggregator poll --once` ------------------------------------------


def write_config(tmp_path: Path, feeds: dict[str, str]) -> Path:
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "settings:\n  per_host_spacing: 0\n"
        "  timeout: 5s\n"
        "  database: agg.db\n"
        "  output_dir: public\n"
        "feeds:\n" + "".join(f"  - url: {url}\n    name: {name}\n" for name, url in feeds.items())
    )
    return config


def poll_once(config: Path) -> dict[str, dict[str, Any]]:
    """Run one round; `status --json` by feed name."""
    polled = aggregator_cli(config, "poll", "--once")
    assert polled.returncode == 0, polled.stderr
    status = aggregator_cli(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    return {row["name"]: row for row in json.loads(status.stdout)}


def published_titles(config: Path) -> list[str]:
    atom = feedparser.parse((config.parent / "public" / "all.atom").read_bytes())
    return [entry.title for entry in atom.entries]


def test_poll_refuses_a_public_feeds_redirect_into_the_private_network(
    tmp_path: Path, public_server: FeedServer, internal: FeedServer
) -> None:
    public_server.set("/news.xml", PUBLIC_FEED)
    public_server.redirect("/feed.xml", internal.url("/internal-admin"), 302)
    config = write_config(
        tmp_path,
        {"news": public_server.url("/news.xml"), "sneaky": public_server.url("/feed.xml")},
    )
    status = poll_once(config)

    assert internal.requests == []  # the internal page was never asked for
    assert status["sneaky"]["state"] == "error"
    assert status["sneaky"]["last_error"] == "redirect to a non-public address 127.0.0.1 refused"
    assert status["sneaky"]["items"] == 0
    assert status["news"]["state"] == "ok"
    titles = published_titles(config)
    assert sorted(titles) == ["Public news 0", "Public news 1"]
    everything = b"".join(path.read_bytes() for path in (tmp_path / "public").iterdir())
    assert b"Internal admin" not in everything
    assert b"reset-passwords" not in everything


def test_poll_lets_a_feed_configured_on_loopback_redirect_on_loopback(
    tmp_path: Path, internal: FeedServer
) -> None:
    internal.redirect("/feed.xml", "/internal-admin", 302)
    config = write_config(tmp_path, {"lan": internal.url("/feed.xml")})
    status = poll_once(config)
    assert status["lan"]["state"] == "ok", status["lan"]["last_error"]
    assert status["lan"]["items"] == 1
    assert published_titles(config) == ["Internal admin 0"]


def test_poll_fetches_a_private_feed_with_userinfo_and_publishes_no_credentials(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """The userinfo is sent as Basic auth; relative links in the feed are resolved against
    the URL fetched, which must not carry it, or every link would publish the password."""
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>Members</title>'
        b"<link>/</link><item><title>Minutes</title><link>/minutes/1</link></item>"
        b"</channel></rss>"
    )
    feed_server.set("/members.xml", body)
    feed_server.require_auth("/members.xml", "member", "pa ss:wörd")
    userinfo = f"{quote('member', safe='')}:{quote('pa ss:wörd', safe='')}"
    url = feed_server.url("/members.xml").replace("http://", f"http://{userinfo}@")
    config = write_config(tmp_path, {"members": url})
    status = poll_once(config)

    assert status["members"]["state"] == "ok", status["members"]["last_error"]
    atom = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    assert [entry.link for entry in atom.entries] == [feed_server.url("/minutes/1")]
    html = (tmp_path / "public" / "all.html").read_text()
    assert feed_server.url("/minutes/1") in html


@pytest.mark.parametrize("first_answer", [304, 200])
def test_a_public_only_request_never_reuses_a_connection_opened_without_the_check(
    monkeypatch: pytest.MonkeyPatch, first_answer: int
) -> None:
    """DNS rebinding through a kept-alive connection. "localhost" stands for a name whose
    answers change: a feed configured on it is fetched without the private-network
    check, and its connection kept. Another feed's stored URL (a permanent redirect from
    a public site) is on the same name, so its request must reach the public internet
    only: the name's next answers are a public address (the check before the request)
    and then the private one again (the check where the connection is opened). It must
    open a checked connection of its own, and be refused, rather than reuse the kept one."""
    answers = [[PUBLIC], ["127.0.0.1"]]
    real_resolve = aggregator.fetch._resolve

    async def resolve(host: str, port: int) -> list[str]:
        if host != "localhost":
            return await real_resolve(host, port)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(aggregator.fetch, "_resolve", resolve)
    with FeedServer() as internal:
        internal.set("/feed.xml", PUBLIC_FEED)
        internal.set("/internal-admin", INTERNAL_ADMIN)
        configured = internal.url("/feed.xml").replace("127.0.0.1", "localhost")
        etag = internal._resources["/feed.xml"].etag if first_answer == 304 else None
        moved = FeedState(
            url="http://news.test/feed",
            fetch_url=internal.url("/internal-admin").replace("127.0.0.1", "localhost"),
        )

        async def both() -> Fetched | NotModified:
            async with Fetcher(LIMITS) as fetcher:
                first = await fetcher.fetch(
                    FeedState(url=configured, fetch_url=configured, etag=etag), NOW
                )
                assert isinstance(first, NotModified if first_answer == 304 else Fetched)
                return await fetcher.fetch(moved, NOW)

        with pytest.raises(FetchError, match="non-public address"):
            asyncio.run(both())
        assert [r.path for r in internal.requests] == ["/feed.xml"]
