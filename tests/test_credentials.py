"""Credentials are sent, never shown.

Private feeds on a real loopback server that demands HTTP Basic auth: one with userinfo
in its URL, one with `auth: {username, password_file}`, one with a token in its query
string, one with an API key in its `headers:`, and failing ones whose errors quote their
URLs. `poll --once`, `status`, `status --json`, every published file, and the daemon's
log, /healthz and /metrics must carry none of the secrets, while the private feeds are
fetched and published.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.commands import aggregator
from tests.feedserver import FeedServer
from tests.test_daemon import DaemonProcess, free_port, wait_until

pytestmark = pytest.mark.slow  # end to end: real processes and servers

URL_PASSWORD = "url-pa55word"
FILE_PASSWORD = "file-pa55word"
QUERY_TOKEN = "query-t0ken"
HEADER_KEY = "header-k3y"
SECRETS = (URL_PASSWORD, FILE_PASSWORD, QUERY_TOKEN, "wr0ng-pa55", HEADER_KEY)


def rss(name: str) -> bytes:
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>{name}</title>'
        f"<link>http://{name}.example/</link><item><title>{name} story</title>"
        f"<link>http://{name}.example/story</link><description>About {name}.</description>"
        "</item></channel></rss>"
    ).encode()


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return aggregator(config, *args, timeout=60)


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} shown in {where}"


def test_credentials_are_sent_and_never_shown(tmp_path: Path) -> None:
    port = free_port()
    with FeedServer() as server:
        server.set("/by-url.xml", rss("byurl"))
        server.require_auth("/by-url.xml", "bob", URL_PASSWORD)
        server.set("/by-file.xml", rss("byfile"))
        server.require_auth("/by-file.xml", "al", FILE_PASSWORD)
        server.set("/by-query.xml", rss("byquery"))
        server.set("/by-header.xml", rss("byheader"))
        server.set("/wrong.xml", rss("wrong"))
        server.require_auth("/wrong.xml", "eve", "the-right-one")
        (tmp_path / "al.pw").write_text(FILE_PASSWORD + "\n")
        base = server.base_url.removeprefix("http://")
        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n  per_host_spacing: 0\n  database: agg.db\n  output_dir: public\n"
            f"  listen: 127.0.0.1:{port}\n  base_url: http://127.0.0.1:{port}/\n"
            "  interval: 1h\nfeeds:\n"
            f"  - url: http://bob:{URL_PASSWORD}@{base}/by-url.xml\n"
            f"  - url: http://{base}/by-file.xml\n"
            f"    auth: {{username: al, password_file: {tmp_path / 'al.pw'}}}\n"
            f"  - url: http://{base}/by-query.xml?api_key={QUERY_TOKEN}&page=1\n"
            f"  - url: http://{base}/by-header.xml\n"
            f"    headers: {{X-Api-Key: {HEADER_KEY}}}\n"
            '    user_agent: "TopicBot/2 (+https://news.example/bot)"\n'
            f"  - url: http://eve:wr0ng-pa55@{base}/wrong.xml\n"
            f"  - url: http://{base}/missing.xml?access_token={QUERY_TOKEN}\n"
        )

        polled = run(config, "poll", "--once")
        assert polled.returncode == 0, polled.stderr
        assert_no_secret("poll --once", polled.stdout + polled.stderr)
        assert "***" in polled.stderr  # the failing feeds are named, redacted

        # sent: as Basic auth, to the feeds that need it
        assert [r.headers.get("authorization") for r in server.requests_to("/by-url.xml")]
        (by_header_request,) = server.requests_to("/by-header.xml")
        assert by_header_request.headers["x-api-key"] == HEADER_KEY
        assert by_header_request.headers["user-agent"] == "TopicBot/2 (+https://news.example/bot)"
        assert "x-api-key" not in server.requests_to("/by-query.xml")[0].headers
        status = run(config, "status", "--json")
        assert status.returncode == 0
        assert_no_secret("status --json", status.stdout + status.stderr)
        states = {row["url"]: row for row in json.loads(status.stdout)}
        by_url, by_file, by_query, by_header, wrong, missing = states.values()
        assert by_header["state"] == "ok" and by_header["items"] == 1
        assert by_url["state"] == "ok" and by_url["items"] == 1
        assert by_file["state"] == "ok" and by_file["items"] == 1
        assert by_query["state"] == "ok"
        assert wrong["state"] == "error" and "credentials refused" in wrong["last_error"]
        assert missing["state"] == "error"
        assert by_url["url"].startswith("http://***@")
        assert "api_key=***" in by_query["url"]
        text_status = run(config, "status")
        assert_no_secret("status", text_status.stdout + text_status.stderr)

        for published in sorted((tmp_path / "public").iterdir()):
            assert_no_secret(published.name, published.read_text())
        assert "byurl story" in (tmp_path / "public" / "all.atom").read_text()

        # the daemon: its log (a poll of every feed), /healthz and /metrics
        (tmp_path / "agg.db").unlink()
        daemon = DaemonProcess(config, port)
        try:
            daemon.wait_serving()
            wait_until(lambda: "wrong.xml" in daemon.log, 20, "the failing feed's log line")
            wait_until(lambda: "missing.xml" in daemon.log, 20, "the missing feed's log line")
            for path in ("/healthz", "/metrics", "/feeds.opml", "/all.json"):
                assert_no_secret(path, daemon.get(path).body.decode())
        finally:
            daemon.stop()
        assert_no_secret("the daemon's log", daemon.log)
