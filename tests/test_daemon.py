"""`aggregator run` as an operator runs it: the real daemon in a subprocess.

Each test starts `python -m aggregator -c feeds.yaml run` on a free port against feeds
served on 127.0.0.1 (tests/feedserver.py), talks to it over HTTP, edits its config, sends
it signals, and looks at what a user would see: the published outputs, /healthz,
/metrics, the log, the database file and the requests the feed server received.
Intervals are seconds long and every wait is a poll with a deadline.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import random
import re
import signal
import socket
import sqlite3
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar
from xml.sax.saxutils import escape

import pytest
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from aggregator.notify import notify, watchdog_interval
from tests.feedserver import FeedServer, RecordedRequest

pytestmark = pytest.mark.slow  # end to end: real processes and servers

E2E = Path(__file__).parent / "data" / "e2e"
ATOM = "{http://www.w3.org/2005/Atom}"
T = TypeVar("T")


# --- helpers: waiting, HTTP, the daemon process ---------------------------------------


def wait_until(condition: Callable[[], T], timeout: float, what: str, step: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class Reply:
    status: int
    #: header names lower-cased
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int, path: str, method: str = "GET", headers: Mapping[str, str] | None = None
) -> Reply:
    """One HTTP request with the path sent exactly as written (no normalisation, no
    automatic decompression), so traversal attempts and gzip reach the daemon as is."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def try_request(port: int, path: str) -> Reply | None:
    try:
        return request(port, path)
    except OSError:
        return None


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any systemd variables it may itself run under."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "AGGREGATOR_CONFIG")
    }
    return {**env, **(extra or {})}


class DaemonProcess:
    """`aggregator run` in a subprocess; its combined stdout/stderr go to a log file."""

    def __init__(self, config: Path, port: int, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.port = port
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "-c", str(config), "run"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=clean_env(env),
            cwd=config.parent,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **headers: str) -> Reply:
        return request(self.port, path, headers=headers)

    def wait_serving(self, timeout: float = 15) -> float:
        """Seconds until /healthz answers."""
        started = time.monotonic()

        def answers() -> bool:
            assert self.process.poll() is None, f"daemon exited early:\n{self.log}"
            return try_request(self.port, "/healthz") is not None

        wait_until(answers, timeout, "the daemon to serve HTTP")
        return time.monotonic() - started

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get("/healthz").json()
        return body

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, float]:
        """Send `signum`; return the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self._log.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def launch() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons; any still running at the end of the test is killed."""
    started: list[DaemonProcess] = []

    def start(config: Path, port: int, env: Mapping[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(config, port, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


# --- helpers: feeds and config ----------------------------------------------------------

_VOCABULARY = [
    "".join(random.Random(i).choices(string.ascii_lowercase, k=random.Random(-i).randint(4, 9)))
    for i in range(3000)
]


@dataclass(frozen=True)
class Story:
    link: str
    title: str
    text: str
    published: datetime


def make_story(key: str, link: str | None = None, age: timedelta = timedelta(hours=1)) -> Story:
    """A story whose words are its own: different keys never look like the same story."""
    rng = random.Random(key)
    words = " ".join(rng.choices(_VOCABULARY, k=60))
    return Story(
        link=link or f"https://news.example/{key}",
        title=f"Story {key} " + " ".join(rng.choices(_VOCABULARY, k=4)),
        text=words.capitalize() + ".",
        published=(datetime.now(UTC) - age).replace(microsecond=0),
    )


def rss(title: str, stories: Sequence[Story]) -> bytes:
    items = "".join(
        f"<item><title>{escape(s.title)}</title><link>{escape(s.link)}</link>"
        f'<guid isPermaLink="false">{escape(s.link)}</guid>'
        f"<pubDate>{format_datetime(s.published, usegmt=True)}</pubDate>"
        f"<description>{escape(s.text)}</description></item>"
        for s in stories
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{escape(title)}</title><link>https://{title.lower()}.example/</link>"
        f"<description>{escape(title)}</description>{items}</channel></rss>"
    ).encode()


def write_config(
    path: Path,
    port: int,
    feeds: Sequence[str],
    *,
    interval: str = "2s",
    topics: str = "",
    settings: str = "",
) -> None:
    lines = [
        "settings:",
        "  per_host_spacing: 0",
        "  database: agg.db",
        "  output_dir: public",
        f"  listen: 127.0.0.1:{port}",
        f"  base_url: http://127.0.0.1:{port}/",
        f"  interval: {interval}",
        # every feed polled at `interval`, whatever its entries' rhythm (the adaptive
        # interval is tested in test_feed_settings)
        f"  max_interval: {interval}",
        *settings.splitlines(),
    ]
    if topics:
        lines += ["topics:", *topics.splitlines()]
    lines += ["feeds:", *(f"  - url: {url}" for url in feeds)]
    path.write_text("\n".join(lines) + "\n")


def atom_entries(body: bytes) -> list[tuple[str, str]]:
    """(link, title) of each entry of a published Atom feed."""
    entries = []
    for entry in etree.fromstring(body).iter(f"{ATOM}entry"):
        link = entry.find(f"{ATOM}link[@rel='alternate']")
        assert link is not None
        entries.append((link.get("href", ""), entry.findtext(f"{ATOM}title", "")))
    return entries


def published_links(daemon: DaemonProcess, slug: str = "all") -> set[str]:
    reply = try_request(daemon.port, f"/{slug}.atom")
    if reply is None or reply.status != 200:
        return set()
    return {link for link, _ in atom_entries(reply.body)}


def polled_times(server: FeedServer, path: str, times: int) -> list[RecordedRequest]:
    """The requests to `path` once there are at least `times`, else an empty list."""
    requests = server.requests_to(path)
    return requests if len(requests) >= times else []


def poll_lines(log: str, url: str) -> list[str]:
    return [line for line in log.splitlines() if url in line and "next at" in line]


@dataclass
class Site:
    """A config directory, its feed server and the port the daemon will listen on."""

    server: FeedServer
    config: Path
    port: int = field(default_factory=free_port)

    @property
    def root(self) -> Path:
        return self.config.parent

    def feed(self, name: str, stories: Sequence[Story], **options: Any) -> str:
        self.server.set(f"/{name}.rss", rss(name.capitalize(), stories), **options)
        return self.server.url(f"/{name}.rss")

    @contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """The daemon's database, read-only, as another process sees it."""
        db = sqlite3.connect(f"file:{self.root / 'agg.db'}?mode=ro", uri=True, timeout=30)
        try:
            yield db
        finally:
            db.close()


@pytest.fixture
def site(tmp_path: Path, feed_server: FeedServer) -> Site:
    return Site(feed_server, tmp_path / "feeds.yaml")


# --- one daemon on the end-to-end fixture feeds: polling, HTTP, health --------------------

E2E_FEEDS = {
    "/wp/feed/": ("wp.rss", "application/rss+xml; charset=UTF-8"),
    "/atom.xml": ("atom.xml", "application/atom+xml"),
    "/index.rdf": ("rss1.rdf", "application/rdf+xml"),
    "/feed.json": ("feed.json", "application/feed+json"),
}
#: the contract's content types
CONTENT_TYPES = {
    "all.atom": "application/atom+xml",
    "all.rss": "application/rss+xml",
    "all.json": "application/feed+json",
    "all.html": "text/html",
    "index.html": "text/html",
    "feeds.opml": "text/x-opml",
}


@dataclass
class E2ESite:
    site: Site
    daemon: DaemonProcess
    started: float
    first_publish: float


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ESite]:
    root = tmp_path_factory.mktemp("e2e")
    with FeedServer() as server:
        for path, (name, content_type) in E2E_FEEDS.items():
            server.set(path, (E2E / name).read_bytes(), content_type=content_type)
        site = Site(server, root / "feeds.yaml")
        # one feed that always fails, so feeds_failing and failure metrics have something
        urls = [server.url(p) for p in E2E_FEEDS] + [server.url("/missing.xml")]
        write_config(site.config, site.port, urls, interval="2s")
        started = time.monotonic()
        daemon = DaemonProcess(site.config, site.port)
        try:
            daemon.wait_serving()
            wait_until(lambda: len(published_links(daemon)) >= 9, 20, "the first publish")
            yield E2ESite(site, daemon, started, time.monotonic() - started)
        finally:
            daemon.kill()


def test_feeds_are_fetched_with_200_then_revalidated_with_304_on_their_interval(
    e2e: E2ESite,
) -> None:
    server = e2e.site.server
    for path in E2E_FEEDS:
        first, *later = wait_until(partial(polled_times, server, path, 3), 15, f"3 polls of {path}")
        assert "if-none-match" not in first.headers
        assert "if-modified-since" not in first.headers
        for again in later:
            # the validators the server sent with its 200
            assert again.headers["if-none-match"].startswith('"')
            assert parsedate_to_datetime(again.headers["if-modified-since"])
    # one feed's re-polls come an interval apart: 2 s ± 10% jitter, less up to 1 s
    # because the store keeps next_due in whole seconds (rounded down)
    path = "/wp/feed/"
    polls = len(server.requests_to(path))
    wait_until(partial(polled_times, server, path, polls + 1), 5, "a re-poll")
    after_one = time.monotonic()
    wait_until(partial(polled_times, server, path, polls + 2), 5, "the next re-poll")
    gap = time.monotonic() - after_one
    assert 0.7 <= gap <= 2.5, gap
    log = e2e.daemon.log
    for path in E2E_FEEDS:
        lines = poll_lines(log, server.url(path))
        assert "HTTP 200" in lines[0], lines
        assert all("HTTP 304, not modified" in line for line in lines[1:]), lines
    print(f"first publish {e2e.first_publish:.2f} s after start; re-polled after {gap:.2f} s")


@pytest.mark.parametrize("name", sorted(CONTENT_TYPES))
def test_every_output_is_served_with_validators_conditional_gzip_and_head(
    e2e: E2ESite, name: str
) -> None:
    daemon = e2e.daemon
    on_disk = (e2e.site.root / "public" / name).read_bytes()
    reply = daemon.get(f"/{name}")
    assert reply.status == 200
    assert reply.headers["content-type"].split(";")[0] == CONTENT_TYPES[name]
    assert reply.body == on_disk
    etag, last_modified = reply.headers["etag"], reply.headers["last-modified"]
    assert etag.startswith('"') and parsedate_to_datetime(last_modified)
    assert "max-age" in reply.headers["cache-control"]

    not_modified = daemon.get(f"/{name}", **{"If-None-Match": etag})
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert not_modified.headers["etag"] == etag
    since = daemon.get(f"/{name}", **{"If-Modified-Since": last_modified})
    assert (since.status, since.body) == (304, b"")
    older = parsedate_to_datetime(last_modified) - timedelta(days=1)
    stale = daemon.get(f"/{name}", **{"If-Modified-Since": format_datetime(older, usegmt=True)})
    assert stale.status == 200 and stale.body == on_disk
    other_tag = daemon.get(f"/{name}", **{"If-None-Match": '"something-else"'})
    assert other_tag.status == 200

    zipped = daemon.get(f"/{name}", **{"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in zipped.headers["vary"].lower()
    assert len(zipped.body) < len(on_disk)
    assert gzip.decompress(zipped.body) == on_disk
    refused = daemon.get(f"/{name}", **{"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers and refused.body == on_disk

    head = request(daemon.port, f"/{name}", method="HEAD")
    assert head.status == 200 and head.body == b""
    for header in ("content-type", "etag", "last-modified", "cache-control", "content-length"):
        assert head.headers[header] == reply.headers[header], header


def test_root_serves_the_index(e2e: E2ESite) -> None:
    root, index = e2e.daemon.get("/"), e2e.daemon.get("/index.html")
    assert root.status == 200 and root.body == index.body
    assert b"all.atom" in root.body


@pytest.mark.parametrize(
    "path",
    [
        "/nothing.atom",
        "/feeds.yaml",
        "/agg.db",
        "/../feeds.yaml",
        "/%2e%2e/feeds.yaml",
        "/..%2ffeeds.yaml",
        "/public/../agg.db",
        "/public/all.atom",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/all.atom/",
        "/./all.atom/../../agg.db",
    ],
)
def test_unknown_paths_and_traversal_attempts_are_404_and_leak_nothing(
    e2e: E2ESite, path: str
) -> None:
    assert (e2e.site.root / "feeds.yaml").exists() and (e2e.site.root / "agg.db").exists()
    for method in ("GET", "HEAD"):
        reply = request(e2e.daemon.port, path, method=method)
        assert reply.status == 404, (method, path)
        assert b"SQLite format" not in reply.body
        assert b"settings" not in reply.body and b"root:" not in reply.body


def test_healthz_and_metrics_report_polls_items_durations_failures_and_config_load(
    e2e: E2ESite,
) -> None:
    daemon = e2e.daemon
    missing = e2e.site.server.url("/missing.xml")
    wait_until(lambda: poll_lines(daemon.log, missing), 10, "the failing feed's poll")
    wait_until(lambda: "not modified" in daemon.log, 20, "a second poll answered with 304")
    reply = daemon.get("/healthz")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    health = reply.json()
    assert health["status"] == "ok"  # one failing feed of five is not "degraded"
    assert health["config_valid"] is True and health["config_error"] is None
    assert health["feeds_failing"] == 1
    last_poll = datetime.fromisoformat(health["last_poll"])
    assert abs(datetime.now(UTC) - last_poll) < timedelta(seconds=10)

    reply = daemon.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("aggregator_polls_total", result="ok") >= 4
    assert value("aggregator_polls_total", result="not_modified") >= 1
    assert value("aggregator_polls_total", result="error") >= 1
    assert value("aggregator_items_total", kind="new") >= 9
    assert value("aggregator_poll_duration_seconds_count") >= 5
    assert value("aggregator_poll_duration_seconds_sum") > 0
    assert value("aggregator_feeds_failing") == 1
    assert value("aggregator_feeds") == 5
    assert value("aggregator_config_valid") == 1
    assert abs(time.time() - value("aggregator_config_last_load_timestamp_seconds")) < 120
    # per feed, labelled by its URL when the config names it not
    assert value("aggregator_feed_errors_total", feed=missing, kind="http_404") >= 1
    wp = e2e.site.server.url("/wp/feed/")
    assert value("aggregator_feed_fetch_duration_seconds_count", feed=wp) >= 1
    assert value("aggregator_feed_items_total", feed=wp, kind="new") >= 1
    assert abs(time.time() - value("aggregator_feed_last_success_timestamp_seconds", feed=wp)) < 60


def test_the_log_has_one_line_per_poll_with_status_items_duration_and_next_due(
    e2e: E2ESite,
) -> None:
    url = e2e.site.server.url("/wp/feed/")
    wait_until(lambda: len(poll_lines(e2e.daemon.log, url)) >= 2, 10, "two polls")
    requests = len(e2e.site.server.requests_to("/wp/feed/"))
    lines = poll_lines(e2e.daemon.log, url)
    assert len(lines) in (requests, requests - 1)  # the last one may still be in flight
    first = lines[0]
    assert re.search(r"HTTP 200, \d+ new, \d+ updated.*\d+\.\d\ds; next at \d{4}-\d\d-\d\dT", first)


# --- config reload --------------------------------------------------------------------


def test_an_added_feed_is_published_and_a_removed_one_stops_being_polled(
    site: Site, launch: Callable[..., DaemonProcess]
) -> None:
    a = site.feed("alpha", [make_story("a1"), make_story("a2")])
    b = site.feed("bravo", [make_story("b1")])
    c = site.feed("charlie", [make_story("c1"), make_story("c2")])
    write_config(site.config, site.port, [a, b])
    daemon = launch(site.config, site.port)
    daemon.wait_serving()
    expected = {make_story(k).link for k in ("a1", "a2", "b1")}
    wait_until(lambda: published_links(daemon) == expected, 15, "alpha and bravo published")
    pid = daemon.process.pid

    write_config(site.config, site.port, [a, b, c])
    saved = time.monotonic()
    expected |= {make_story(k).link for k in ("c1", "c2")}
    wait_until(lambda: published_links(daemon) == expected, 10, "charlie published")
    added_latency = time.monotonic() - saved
    assert daemon.process.poll() is None and daemon.process.pid == pid
    assert added_latency < 5

    write_config(site.config, site.port, [a, c])
    saved = time.monotonic()
    expected -= {make_story("b1").link}
    wait_until(lambda: published_links(daemon) == expected, 10, "bravo's story unpublished")
    removed_latency = time.monotonic() - saved
    polls_of_b = len(site.server.requests_to("/bravo.rss"))
    polls_of_a = len(site.server.requests_to("/alpha.rss"))
    # two more intervals of alpha: bravo is not asked again
    wait_until(
        lambda: len(site.server.requests_to("/alpha.rss")) >= polls_of_a + 2, 10, "alpha polls"
    )
    assert len(site.server.requests_to("/bravo.rss")) == polls_of_b
    assert daemon.process.pid == pid and daemon.health()["status"] == "ok"
    print(
        f"added feed published in {added_latency:.2f} s; removal applied in {removed_latency:.2f} s"
    )


def test_an_invalid_save_keeps_the_last_good_config_serving_and_is_reported_once(
    site: Site, launch: Callable[..., DaemonProcess]
) -> None:
    a = site.feed("alpha", [make_story("a1")])
    c = site.feed("charlie", [make_story("c1")])
    write_config(site.config, site.port, [a], interval="1s")
    daemon = launch(site.config, site.port)
    daemon.wait_serving()
    wait_until(lambda: published_links(daemon) == {make_story("a1").link}, 15, "first publish")
    before = daemon.get("/all.atom")

    good = site.config.read_text()
    site.config.write_text(good.replace(a, "ftp://x"))
    saved = time.monotonic()
    wait_until(lambda: daemon.health()["config_valid"] is False, 10, "the error reported")
    health = daemon.health()
    detected = time.monotonic() - saved
    assert health["status"] == "degraded"
    assert daemon.get("/healthz").status == 200  # degraded, still doing its job
    error = health["config_error"]
    line = good.splitlines().index(f"  - url: {a}") + 1
    assert error.startswith(f"{site.config}:{line}: feeds[0].url: "), error
    assert "ftp://x" in error

    # the old outputs stay served and the old feed keeps being polled
    polls = len(site.server.requests_to("/alpha.rss"))
    wait_until(lambda: len(site.server.requests_to("/alpha.rss")) >= polls + 2, 10, "polls")
    after = daemon.get("/all.atom")
    assert after.status == 200 and after.body == before.body
    # several watch ticks later the error was logged once, not once a tick
    errors = [line for line in daemon.log.splitlines() if "ftp://x" in line]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"ERROR {site.config}:{line}: ")

    write_config(site.config, site.port, [a, c], interval="1s")
    saved = time.monotonic()
    expected = {make_story("a1").link, make_story("c1").link}
    wait_until(lambda: published_links(daemon) == expected, 10, "the next valid save applied")
    fixed = time.monotonic() - saved
    health = daemon.health()
    assert health["status"] == "ok" and health["config_valid"] is True
    assert health["config_error"] is None
    print(f"invalid save reported in {detected:.2f} s; next valid save published in {fixed:.2f} s")


def test_sighup_reloads_the_config(site: Site, launch: Callable[..., DaemonProcess]) -> None:
    a = site.feed("alpha", [make_story("a1")])
    topics = "  news:\n    title: Alpha News\n"
    write_config(site.config, site.port, [a], topics=topics, interval="1h")
    daemon = launch(site.config, site.port)
    daemon.wait_serving()

    def title() -> str | None:
        reply = try_request(site.port, "/news.atom")
        if reply is None or reply.status != 200:
            return None
        return etree.fromstring(reply.body).findtext(f"{ATOM}title")

    wait_until(lambda: title() == "Alpha News", 15, "the first publish")
    # Rewrite the file in place with the same size and put its mtime back: the file
    # watcher cannot notice, only SIGHUP can.
    text = site.config.read_text()
    stat = site.config.stat()
    with site.config.open("r+") as file:
        file.write(text.replace("Alpha News", "Omega News"))
    os.utime(site.config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert site.config.stat().st_mtime_ns == stat.st_mtime_ns
    time.sleep(1.5)  # longer than the watcher's period: proves it did not pick it up
    assert title() == "Alpha News"

    daemon.send(signal.SIGHUP)
    sent = time.monotonic()
    wait_until(lambda: title() == "Omega News", 5, "the new title")
    latency = time.monotonic() - sent
    assert daemon.process.poll() is None
    assert "SIGHUP" in daemon.log
    print(f"SIGHUP reload served the new title in {latency:.2f} s")


# --- life cycle -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "stuck_feed"),
    [(signal.SIGTERM, True), (signal.SIGINT, False)],
    ids=["SIGTERM-with-a-poll-outlasting-the-drain", "SIGINT"],
)
def test_a_stop_signal_exits_0_within_10_s_even_with_polls_in_flight(
    site: Site, launch: Callable[..., DaemonProcess], signum: int, stuck_feed: bool
) -> None:
    quick = site.feed("quick", [make_story("q1")])
    slow = site.feed("slow", [make_story("s1")], delay=2)  # finishes while draining
    stuck = site.feed("stuck", [make_story("x1")], delay=9)  # outlasts the drain
    write_config(site.config, site.port, [quick, slow, stuck] if stuck_feed else [quick, slow])
    daemon = launch(site.config, site.port)
    daemon.wait_serving()
    wait_until(
        lambda: (
            site.server.requests_to("/slow.rss")
            and (site.server.requests_to("/stuck.rss") or not stuck_feed)
        ),
        10,
        "the slow polls in flight",
    )
    code, elapsed = daemon.stop(signum)
    assert code == 0, daemon.log
    assert elapsed < 10, elapsed
    assert daemon.log.rstrip().endswith("INFO stopped")
    with site.db() as db:
        fetched = dict(db.execute("SELECT url, last_status FROM feeds").fetchall())
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert fetched.get(slow) == 200  # in flight at the signal, given time to finish
    assert stuck not in fetched  # cut off: nothing half stored
    if stuck_feed:
        assert f"stopping: 1 poll cut off, nothing of them stored: {stuck}\n" in daemon.log
        assert "Traceback" not in daemon.log
    print(f"{signal.Signals(signum).name}: exit 0 after {elapsed:.2f} s")


def test_after_a_restart_feeds_not_due_are_not_fetched_and_outputs_are_served_at_once(
    site: Site, launch: Callable[..., DaemonProcess]
) -> None:
    a = site.feed("alpha", [make_story("a1")])
    b = site.feed("bravo", [make_story("b1")])
    write_config(site.config, site.port, [a, b], interval="1h")
    first = launch(site.config, site.port)
    first.wait_serving()
    links = {make_story("a1").link, make_story("b1").link}
    wait_until(lambda: published_links(first) == links, 15, "the first publish")
    assert first.stop()[0] == 0

    # a feed added while it was down is due at once; the others are due in an hour
    c = site.feed("charlie", [make_story("c1")])
    write_config(site.config, site.port, [a, b, c], interval="1h")
    site.server.clear()
    second = launch(site.config, site.port)
    serving = second.wait_serving()
    reply = second.get("/all.atom")
    assert reply.status == 200 and {link for link, _ in atom_entries(reply.body)} >= links
    wait_until(lambda: site.server.requests_to("/charlie.rss"), 10, "the new feed's poll")
    wait_until(lambda: len(published_links(second)) == 3, 10, "charlie published")
    time.sleep(2)  # a few seconds more: nothing else is fetched
    assert [r.path for r in site.server.requests] == ["/charlie.rss"]
    assert not poll_lines(second.log, a) and not poll_lines(second.log, b)
    print(f"restart: served stored outputs {serving:.2f} s after start; no early refetch")


def test_notify_protocol_ready_status_watchdog_and_stopping(
    site: Site, launch: Callable[..., DaemonProcess]
) -> None:
    a = site.feed("alpha", [make_story("a1")])
    write_config(site.config, site.port, [a])
    with notify_socket(site.root) as (path, sock):
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
        daemon = launch(site.config, site.port, env)
        messages: list[str] = []

        def receive_until(wanted: str, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while wanted not in messages:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    messages.extend(sock.recv(4096).decode().splitlines())
                except TimeoutError:
                    raise AssertionError(f"no {wanted} in {messages}") from None

        started = time.monotonic()
        receive_until("READY=1", 15)
        ready = time.monotonic() - started
        assert try_request(site.port, "/healthz") is not None  # READY means serving
        receive_until("WATCHDOG=1", 5)
        first_ping = time.monotonic()
        while messages.count("WATCHDOG=1") < 3:
            sock.settimeout(5)
            messages.extend(sock.recv(4096).decode().splitlines())
        pings = time.monotonic() - first_ping
        assert pings < 4  # every second (half of WatchdogSec=2 s)
        code, _ = daemon.stop()
        receive_until("STOPPING=1", 2)
        assert code == 0
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert statuses and "1 feeds" in statuses[0], messages
    assert messages.index("READY=1") < messages.index("WATCHDOG=1") < messages.index("STOPPING=1")
    print(f"READY after {ready:.2f} s; 3 watchdog pings in {pings:.2f} s; {len(messages)} messages")


def test_a_slow_database_open_extends_systemd_s_start_timeout_until_ready(
    site: Site, launch: Callable[..., DaemonProcess]
) -> None:
    """Opening the database can take minutes (a migration of a large one, another
    process's lock): the daemon tells systemd the start goes on (EXTEND_TIMEOUT_USEC), so
    TimeoutStartSec does not kill it and roll the migration back at every restart; it
    says READY=1 once the database is open."""
    from aggregator.daemon import STARTING_PATIENCE
    from aggregator.store import Store

    a = site.feed("alpha", [make_story("a1")])
    write_config(site.config, site.port, [a])
    Store.open(site.root / "agg.db").close()
    holder = sqlite3.connect(site.root / "agg.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock
    try:
        with notify_socket(site.root) as (path, sock):
            daemon = launch(site.config, site.port, {"NOTIFY_SOCKET": path})
            messages: list[str] = []
            started = time.monotonic()
            while not any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in messages):
                assert time.monotonic() - started < STARTING_PATIENCE + 10, messages
                with contextlib.suppress(TimeoutError):  # quiet until the patience is out
                    messages.extend(receive(sock).splitlines())
            extended = time.monotonic() - started
            assert "READY=1" not in messages  # still starting
            holder.execute("COMMIT")
            while "READY=1" not in messages:
                assert time.monotonic() - started < STARTING_PATIENCE + 20, messages
                with contextlib.suppress(TimeoutError):
                    messages.extend(receive(sock).splitlines())
            code, _ = daemon.stop()
    finally:
        holder.close()
    assert code == 0
    usec = next(m for m in messages if m.startswith("EXTEND_TIMEOUT_USEC="))
    assert int(usec.partition("=")[2]) >= 30_000_000
    assert "opening the database is taking long" in daemon.log
    print(f"EXTEND_TIMEOUT_USEC after {extended:.1f} s, READY after the lock went")


# --- crash safety, and commands run by hand next to the daemon -----------------------------

CRASH_FEEDS = 300
#: stories every outlet of a wire group carries: feed i carries wire story i % WIRES
WIRES = 20


def wire_story(number: int, outlet: int) -> Story:
    """A syndicated copy: same title and text everywhere; every other outlet links to
    its own copy, so the copies are one story by their text, not only by their link."""
    story = make_story(f"wire{number}", age=timedelta(minutes=5))
    if outlet % 2:
        return replace(story, link=f"https://outlet{outlet}.example/wire/{number}")
    return story


class OutputReader(threading.Thread):
    """Keeps re-reading every published file and parsing it, as a reader would."""

    def __init__(self, output_dir: Path) -> None:
        super().__init__(daemon=True)
        self.output_dir = output_dir
        self.reads = 0
        self.bad: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for path in sorted(self.output_dir.glob("*")):
                if path.name.startswith("."):
                    continue  # a temporary file being written, not a published one
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                self.reads += 1
                try:
                    if path.suffix in (".atom", ".rss", ".opml"):
                        etree.fromstring(data)
                    elif path.suffix == ".json":
                        json.loads(data)
                    else:
                        assert data.rstrip().endswith(b"</html>")
                except Exception as error:  # noqa: BLE001 - every failure is a finding
                    self.bad.append(f"{path.name} ({len(data)} bytes): {error}")

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def test_kill_9_during_a_large_round_loses_nothing_stored_and_duplicates_nothing(
    site: Site, launch: Callable[..., DaemonProcess]
) -> None:
    urls = []
    for outlet in range(CRASH_FEEDS):
        stories = [make_story(f"o{outlet}s{n}") for n in range(3)]
        stories.append(wire_story(outlet % WIRES, outlet))
        urls.append(site.feed(f"outlet{outlet}", stories, delay=0.01))
    write_config(site.config, site.port, urls, interval="1h", settings="  max_items: 100")
    (site.root / "public").mkdir()
    reader = OutputReader(site.root / "public")
    reader.start()
    try:
        first = launch(site.config, site.port)
        first.wait_serving()

        def some_stored() -> bool:
            with site.db() as db:
                try:
                    (n,) = db.execute(
                        "SELECT count(*) FROM feeds WHERE last_fetched NOT NULL"
                    ).fetchone()
                except sqlite3.OperationalError:  # the schema is not there yet
                    return False
            return bool(n > 0)

        # mid-round: some feeds stored, the rest fetched or being parsed (the parse workers
        # take a moment to start, so requests alone say nothing about what is stored)
        wait_until(some_stored, 30, "the first feeds stored", step=0.02)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        asked_before = {r.path for r in site.server.requests}
        with site.db() as db:
            stored_before = {
                url for (url,) in db.execute("SELECT url FROM feeds WHERE last_fetched NOT NULL")
            }
        assert 0 < len(stored_before) < CRASH_FEEDS

        site.server.clear()
        second = launch(site.config, site.port)
        second.wait_serving()

        def all_polled() -> bool:
            with site.db() as db:
                (n,) = db.execute(
                    "SELECT count(*) FROM feeds WHERE last_fetched NOT NULL"
                ).fetchone()
            return bool(n == CRASH_FEEDS)

        restarted = time.monotonic()
        wait_until(all_polled, 40, "every feed polled after the restart", step=0.25)
        rest_polled = time.monotonic() - restarted
        wait_until(
            lambda: (
                "INFO published all.atom" in second.log.split("INFO serving")[-1]
                and second.health()["last_poll"]
            ),
            10,
            "a publish after the polls",
        )
        code, _ = second.stop()
        assert code == 0
    finally:
        reader.stop()

    # fetched again after the restart: exactly the feeds that had nothing stored
    asked_after = {site.server.url(r.path) for r in site.server.requests}
    assert asked_after == set(urls) - stored_before
    assert reader.reads > 100 and reader.bad == []

    db = sqlite3.connect(site.root / "agg.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        (items,) = db.execute("SELECT count(*) FROM items").fetchone()
        (entries,) = db.execute("SELECT count(*) FROM entries").fetchone()
        titles = db.execute("SELECT title, count(*) FROM items GROUP BY title HAVING count(*) > 1")
        wire_copies = db.execute(
            "SELECT count(*) FROM entries e JOIN items i ON i.id = e.item_id"
            " WHERE i.title LIKE 'Story wire%' GROUP BY e.item_id"
        ).fetchall()
        assert titles.fetchall() == []
    finally:
        db.close()
    # every feed's 3 own stories, and each wire story once with all its copies
    assert items == CRASH_FEEDS * 3 + WIRES
    assert entries == CRASH_FEEDS * 4
    assert sorted(n for (n,) in wire_copies) == [CRASH_FEEDS // WIRES] * WIRES

    published = atom_entries((site.root / "public" / "all.atom").read_bytes())
    links = [link for link, _ in published]
    titles_published = [title for _, title in published]
    assert len(published) == 100
    assert len(set(links)) == len(links) and len(set(titles_published)) == len(titles_published)
    assert sum(t.startswith("Story wire") for t in titles_published) == WIRES  # newest, once each
    print(
        f"kill -9 after {len(asked_before)} requests, {len(stored_before)} feeds stored; "
        f"restart polled the other {len(asked_after)} in {rest_polled:.1f} s; "
        f"{items} items, {entries} entries, integrity ok; "
        f"reader parsed {reader.reads} files, {len(reader.bad)} bad"
    )


def run_command(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )


def test_poll_once_status_and_build_run_by_hand_next_to_the_daemon(
    site: Site, launch: Callable[..., DaemonProcess]
) -> None:
    names = [f"feed{n}" for n in range(20)]
    urls = [site.feed(name, [make_story(f"{name}-1")]) for name in names]
    write_config(site.config, site.port, urls, interval="1s")
    daemon = launch(site.config, site.port)
    daemon.wait_serving()
    wait_until(lambda: len(published_links(daemon)) == 20, 20, "the first round published")
    # new stories everywhere: the daemon and `poll --once` race to store the same items
    for name in names:
        site.feed(name, [make_story(f"{name}-1"), make_story(f"{name}-2")])
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(*args: str) -> None:
        results[" ".join(args)] = run_command(site.config, *args)

    threads = [
        threading.Thread(target=run, args=args)
        for args in (("poll", "--once"), ("status", "--json"), ("build",))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for command, result in results.items():
        assert result.returncode == 0, f"{command}: {result.stderr}"
    assert "polled 20 of 20 feeds: 0 failed" in results["poll --once"].stderr
    rows = json.loads(results["status --json"].stdout)
    assert [row["url"] for row in rows] == urls

    expected = {make_story(f"{name}-{n}").link for name in names for n in (1, 2)}
    wait_until(lambda: published_links(daemon) == expected, 15, "every new story published")
    with site.db() as db:
        per_feed = db.execute("SELECT count(*) FROM entries GROUP BY feed_url").fetchall()
        errors = db.execute("SELECT count(*) FROM feeds WHERE last_error NOT NULL").fetchone()
    assert per_feed == [(2,)] * 20 and errors == (0,)
    assert daemon.process.poll() is None and daemon.health()["status"] == "ok"
    code, _ = daemon.stop()
    assert code == 0
    db = sqlite3.connect(site.root / "agg.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT count(*), count(DISTINCT link) FROM items").fetchone() == (40, 40)
    finally:
        db.close()
    assert "ERROR" not in daemon.log, daemon.log


# --- aggregator/notify.py against real datagram sockets ----------------------------------


class notify_socket:  # noqa: N801 - used as a context manager, like a function
    """A bound AF_UNIX datagram socket, as systemd listens on; yields (address, socket).

    `where` is a directory for a path socket, or None for the abstract namespace."""

    def __init__(self, where: Path | None) -> None:
        self.where = where
        self._tmp: str | None = None

    def __enter__(self) -> tuple[str, socket.socket]:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if self.where is None:
            name = f"aggregator-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            return "@" + name, self.sock
        path = self.where / "notify.sock"
        if len(str(path)) >= 100:  # sun_path holds 108 bytes; tmp_path can be longer
            self._tmp = tempfile.mkdtemp(prefix="agg-")
            path = Path(self._tmp) / "notify.sock"
        self.sock.bind(str(path))
        return str(path), self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        if self._tmp is not None:
            for child in Path(self._tmp).iterdir():
                child.unlink()
            os.rmdir(self._tmp)


def receive(sock: socket.socket) -> str:
    sock.settimeout(2)
    return sock.recv(4096).decode()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_sends_one_datagram_to_the_socket(tmp_path: Path, abstract: bool) -> None:
    with notify_socket(None if abstract else tmp_path) as (address, sock):
        assert notify("READY=1", address) is True
        assert receive(sock) == "READY=1"
        assert notify("STATUS=3 feeds, 1 failing — ok", address) is True
        assert receive(sock) == "STATUS=3 feeds, 1 failing — ok"


def test_notify_reads_notify_socket_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with notify_socket(tmp_path) as (address, sock):
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert notify("WATCHDOG=1") is True
        assert receive(sock) == "WATCHDOG=1"


def test_notify_without_systemd_or_with_a_dead_socket_is_false_and_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    assert notify("READY=1", str(tmp_path / "nobody-listens.sock")) is False
    assert notify("READY=1", "@aggregator-test-nobody-listens") is False


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    assert watchdog_interval() is None


def test_outputs_a_hand_run_poll_publishes_are_served_by_the_daemon(
    site: Site, launch: Callable[..., DaemonProcess]
) -> None:
    a = site.feed("alpha", [make_story("a1")])
    write_config(site.config, site.port, [a], interval="1h")
    daemon = launch(site.config, site.port)
    daemon.wait_serving()
    wait_until(lambda: published_links(daemon) == {make_story("a1").link}, 15, "first publish")
    site.feed("alpha", [make_story("a1"), make_story("a2")])
    result = run_command(site.config, "poll", "--once")  # the daemon itself waits an hour
    assert result.returncode == 0, result.stderr
    done = time.monotonic()
    on_disk = (site.root / "public" / "all.atom").read_bytes()
    assert make_story("a2").link in {link for link, _ in atom_entries(on_disk)}
    wait_until(lambda: daemon.get("/all.atom").body == on_disk, 5, "the new file served")
    print(f"hand-run poll's outputs served {time.monotonic() - done:.2f} s after it exited")


def test_a_gone_feed_stays_off_until_its_entry_is_edited(
    site: Site, launch: Callable[..., DaemonProcess]
) -> None:
    a = site.feed("alpha", [make_story("a1")])
    site.server.respond("/golf.rss", 410, b"gone\n")
    golf = site.server.url("/golf.rss")
    write_config(site.config, site.port, [a, golf], interval="1s")
    # golf's own interval is an hour, so its backoff after the 410 is hours too
    entry = f"  - url: {golf}\n"
    site.config.write_text(site.config.read_text().replace(entry, entry + "    interval: 1h\n"))
    daemon = launch(site.config, site.port)
    daemon.wait_serving()
    wait_until(lambda: "no longer polled" in daemon.log, 10, "the 410 logged")
    polls = len(site.server.requests_to("/alpha.rss"))
    wait_until(lambda: len(site.server.requests_to("/alpha.rss")) >= polls + 2, 10, "alpha")
    assert len(site.server.requests_to("/golf.rss")) == 1

    # the publisher is back and the user edits the entry (a name): polled at once,
    # although its failure backoff would otherwise keep it waiting
    site.feed("golf", [make_story("g1")])
    site.config.write_text(site.config.read_text().replace(entry, entry + "    name: G\n"))
    expected = {make_story("a1").link, make_story("g1").link}
    wait_until(lambda: published_links(daemon) == expected, 5, "golf polled and published")
