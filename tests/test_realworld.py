"""The whole pipeline over 1,465 feed files from other feed projects' test suites.

Served from 127.0.0.1 with the headers MANIFEST.tsv gives; one `poll --once` over all of
them must finish, crash on none, and accept every feed that feedparser itself can read.
Skipped when ../shared/realworld-feeds is absent (it is never copied into the project).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from urllib.parse import quote

import feedparser
import lxml.html
import pytest
from lxml import etree

from tests.commands import aggregator, status_rows
from tests.feedserver import FeedServer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "realworld-feeds"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CORPUS / "MANIFEST.tsv").exists(), reason=f"corpus not present at {CORPUS}"
    ),
]


def manifest() -> list[tuple[str, dict[str, str]]]:
    rows = []
    for line in (CORPUS / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or line.startswith("file\t"):
            continue
        fields = line.split("\t")
        headers = {} if fields[5] == "-" else json.loads(fields[5])
        rows.append((fields[0], headers))
    return rows


def readable_by_feedparser(body: bytes, headers: dict[str, str]) -> bool:
    parsed = feedparser.parse(
        io.BytesIO(body), response_headers={k.lower(): v for k, v in headers.items()}
    )
    # an entry feedparser opened but could read nothing of (`{}`, a body cut off inside
    # it) is not one: a malformed body with only such entries is rightly an error
    return any(parsed.entries) or (not parsed.bozo and bool(parsed.get("version")))


def test_every_feed_feedparser_reads_is_accepted_and_nothing_crashes(tmp_path: Path) -> None:
    rows = manifest()
    assert len(rows) > 1000
    with FeedServer() as server:
        urls = {}
        for name, headers in rows:
            headers = dict(headers)
            content_type = next(
                (headers.pop(k) for k in list(headers) if k.lower() == "content-type"),
                "application/xml",
            )
            path = "/" + quote(name)
            server.set(
                path, (CORPUS / name).read_bytes(), content_type=content_type, headers=headers
            )
            urls[server.url(path)] = (name, headers | {"content-type": content_type})

        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n  per_host_spacing: 0\n"
            "  database: agg.db\n  output_dir: public\n  retention: 36500d\n"
            "feeds:\n" + "".join(f"  - url: {json.dumps(url)}\n" for url in urls)
        )
        run = aggregator(config, "poll", "--once", timeout=400)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Traceback" not in run.stderr
        first = status_rows(config)
        # a second round: the server answers 304 or the same bytes, which confirm the
        # first round's result; a feed that failed to parse must not turn ok
        again = aggregator(config, "poll", "--once", timeout=400)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Traceback" not in again.stderr
        second = status_rows(config)
    turned_ok = [
        f"{urls[url][0]}: {row['last_error']}"
        for url, row in first.items()
        if row["state"] == "error" and second[url]["state"] == "ok"
    ]
    assert not turned_ok, "failed feeds reported ok after a 304:\n" + "\n".join(turned_ok)
    rows_by_url = second
    rejected = []
    readable = accepted = 0
    for url, (name, headers) in urls.items():
        row = rows_by_url[url]
        body = (CORPUS / name).read_bytes()
        is_readable = readable_by_feedparser(body, headers)
        readable += is_readable
        accepted += row["state"] == "ok"
        if row["state"] != "ok" and is_readable:
            rejected.append(f"{name}: {row['last_error']}")
    assert not rejected, f"{len(rejected)} readable feeds rejected:\n" + "\n".join(rejected[:40])
    print(f"{len(urls)} files: {readable} feedparser-readable, {accepted} accepted, 0 rejected")
    published = feedparser.parse((tmp_path / "public" / "all.atom").read_bytes())
    assert not published.bozo and len(published.entries) == 50
    # RSS 2.0 needs a title or a description in every item, whatever the source lacked
    rss = etree.fromstring((tmp_path / "public" / "all.rss").read_bytes())
    items = rss.findall("channel/item")
    assert len(items) == 50
    for item in items:
        assert (item.findtext("title") or "").strip() or (item.findtext("description") or "")
    # every published file, archive pages included, reads as what it says it is
    for output in (tmp_path / "public").iterdir():
        data = output.read_bytes()
        if output.suffix in (".atom", ".rss"):
            assert not feedparser.parse(data).bozo, output.name
        elif output.suffix == ".json":
            assert json.loads(data)["version"].startswith("https://jsonfeed.org/"), output.name
        elif output.suffix in (".html", ".opml"):
            parser = lxml.html.fromstring if output.suffix == ".html" else etree.fromstring
            parser(data)
    # and no URL published anywhere has a scheme other than http(s) (the HTML pages also
    # link each other by relative names)
    for output in (tmp_path / "public").iterdir():
        text = output.read_text()
        found = re.findall(r'(?:href|src|url|xmlUrl|htmlUrl)="([^"]*)"', text)
        found += re.findall(r'"(?:url|external_url|home_page_url|feed_url)": "([^"]*)"', text)
        for url in found:
            scheme = re.match(r"\s*([A-Za-z][A-Za-z0-9+.-]*):", url)
            assert scheme is None or scheme.group(1) in ("http", "https"), (output.name, url)
