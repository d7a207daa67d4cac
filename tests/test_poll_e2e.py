"""`aggregator poll --once`, run as a user runs it, against feeds served on 127.0.0.1.

The fixture feeds in tests/data/e2e/ carry nine stories, some of them several times:
syndicated copies with tracking parameters, http/https and trailing-slash spellings, a
copy under another URL with a byline added, plus off-topic and fundraising items.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import feedparser
import pytest
from lxml import etree, html

from tests.feedserver import FeedServer

pytestmark = pytest.mark.slow  # end to end: real processes and servers

DATA = Path(__file__).parent / "data" / "e2e"
FEEDS = {
    "/wp/feed/": ("wp.rss", "application/rss+xml; charset=UTF-8"),
    "/atom.xml": ("atom.xml", "application/atom+xml"),
    "/index.rdf": ("rss1.rdf", "application/rdf+xml"),
    "/feed.json": ("feed.json", "application/feed+json"),
}
#: A story's published link is its first-seen copy's; copies seen in the same round are
#: ordered by their published dates, so the original outlet comes first whichever
#: server answers first. This one answers last:
ANSWER_DELAY = {"/wp/feed/": 1.0, "/atom.xml": 0.0, "/index.rdf": 0.0, "/feed.json": 0.0}

#: the stories a reader of each topic must see, once each (by their first outlet's link)
NORTH_KOREA = {
    "https://peninsulawatch.example/2026/11/cruise-missile/",
    "https://peninsulawatch.example/2026/11/border-tourists/",
    "https://seouldesk.example/news/2026/11/19/munitions-factory",
    "https://dprkdigest.example/2026/11/19/trade-pact.html",
    "https://policynotes.example/sanctions-at-sea",
}
EVERYTHING = NORTH_KOREA | {
    "https://peninsulawatch.example/2026/11/autumn-drive/",
    "https://peninsulawatch.example/2026/11/bakery/",
    "https://seouldesk.example/culture/2026/11/tour",
    "https://policynotes.example/newsletter",
}

CONFIG = """\
settings:
  per_host_spacing: 0
  database: state/agg.db
  output_dir: public
  base_url: https://news.example/
topics:
  north-korea:
    title: North Korea
    include: ["North Korea", "North Korean", DPRK, Pyongyang, "/Kim Jong[- ]?Un/"]
    exclude: [fundraising, newsletter]
  all:
    title: Everything
feeds:
  - url: {base}/wp/feed/
    name: Peninsula Watch
  - url: {base}/atom.xml
  - url: {base}/index.rdf
    name: DPRK Digest
  - url: {base}/feed.json
"""


def run_aggregator(
    config: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def served() -> Iterator[FeedServer]:
    with FeedServer() as server:
        for path, (name, content_type) in FEEDS.items():
            server.set(
                path,
                (DATA / name).read_bytes(),
                content_type=content_type,
                delay=ANSWER_DELAY[path],
            )
        yield server


@pytest.fixture
def site(tmp_path: Path, served: FeedServer) -> Path:
    config = tmp_path / "feeds.yaml"
    config.write_text(CONFIG.format(base=served.base_url.rstrip("/")))
    return config


def links(feed: feedparser.FeedParserDict) -> list[str]:
    return [entry.link for entry in feed.entries]


def test_two_rounds_publish_each_story_once_and_the_second_round_is_conditional(
    site: Path, served: FeedServer
) -> None:
    first = run_aggregator(site, "poll", "--once")
    assert first.returncode == 0, first.stderr
    public = site.parent / "public"

    atom = feedparser.parse((public / "north-korea.atom").read_bytes())
    assert not atom.bozo, atom.bozo_exception
    assert sorted(links(atom)) == sorted(NORTH_KOREA)
    everything = feedparser.parse((public / "all.atom").read_bytes())
    assert sorted(links(everything)) == sorted(EVERYTHING)
    ids_first = {e.link: e.id for e in everything.entries}
    assert len(set(ids_first.values())) == len(EVERYTHING)

    # newest first
    dates = [e.updated_parsed for e in atom.entries]
    published = [e.published_parsed for e in atom.entries]
    assert published == sorted(published, reverse=True) and dates

    # the story that came through three outlets names the others as "via"
    [missile] = [e for e in atom.entries if "cruise-missile" in e.link]
    vias = [link.href for link in missile.links if link.rel == "via"]
    assert len(vias) == 1 and "seouldesk" not in missile.source.get("title", "").lower()

    served.clear()
    second = run_aggregator(site, "poll", "--once")
    assert second.returncode == 0, second.stderr
    for path in FEEDS:
        [request] = served.requests_to(path)
        assert "if-none-match" in request.headers or "if-modified-since" in request.headers
    assert "0 new items" in second.stderr
    again = feedparser.parse((public / "all.atom").read_bytes())
    assert {e.link: e.id for e in again.entries} == ids_first


def test_every_output_format_parses_and_agrees(site: Path) -> None:
    assert run_aggregator(site, "poll", "--once").returncode == 0
    public = site.parent / "public"
    names = sorted(p.name for p in public.iterdir())
    assert names == sorted(
        [
            f"{slug}.{ext}"
            for slug in ("north-korea", "all")
            for ext in ("atom", "rss", "json", "html")
        ]
        + ["index.html", "feeds.opml"]
    )
    rss = feedparser.parse((public / "north-korea.rss").read_bytes())
    assert not rss.bozo, rss.bozo_exception
    assert sorted(links(rss)) == sorted(NORTH_KOREA)
    assert all(e.get("id") and e.get("published") for e in rss.entries)

    feed = json.loads((public / "north-korea.json").read_bytes())
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert sorted(i["url"] for i in feed["items"]) == sorted(NORTH_KOREA)
    [missile] = [i for i in feed["items"] if "cruise-missile" in i["url"]]
    outlets = [s["title"] for s in missile["_aggregator"]["sources"]]
    assert outlets[0] == "Peninsula Watch" and len(outlets) == 2

    page = html.fromstring((public / "north-korea.html").read_bytes())
    hrefs = {str(a.get("href")) for a in page.iter("a")}
    assert NORTH_KOREA <= hrefs
    assert "Harbour bakery" not in page.text_content()  # type: ignore[attr-defined]

    opml = etree.fromstring((public / "feeds.opml").read_bytes())
    assert len(opml.findall(".//outline[@xmlUrl]")) == 4


def test_published_content_is_clean(site: Path, served: FeedServer) -> None:
    assert run_aggregator(site, "poll", "--once").returncode == 0
    public = site.parent / "public"
    for path in public.iterdir():
        text = path.read_text()
        for unsafe in ("<script", "onerror", "onclick", "javascript:", "pixel.wp.com"):
            assert unsafe not in text.lower(), (path.name, unsafe)
    atom = feedparser.parse((public / "all.atom").read_bytes(), sanitize_html=False)
    [missile] = [e for e in atom.entries if "cruise-missile" in e.link]
    content = missile.content[0].value
    assert "appeared first on" not in content
    assert "Share this" not in content
    # relative URLs are resolved against the feed's own URL (here, the loopback server)
    assert f'src="{served.url("/wp-content/uploads/2026/11/launch.jpg")}"' in content
    [tourists] = [e for e in atom.entries if "border-tourists" in e.link]
    assert "Continue reading" not in tourists.content[0].value


def test_an_edited_story_is_updated_in_place(site: Path, served: FeedServer) -> None:
    assert run_aggregator(site, "poll", "--once").returncode == 0
    public = site.parent / "public"
    before = {e.link: e for e in feedparser.parse((public / "all.atom").read_bytes()).entries}

    edited = (
        (DATA / "wp.rss")
        .read_bytes()
        .replace(
            b"Pyongyang reopens border crossing to foreign tour groups",
            b"Pyongyang reopens Sinuiju crossing to foreign tour groups",
        )
        .replace(b"four day itineraries", b"five day itineraries")
    )
    served.set("/wp/feed/", edited, content_type=FEEDS["/wp/feed/"][1])
    result = run_aggregator(site, "poll", "--once")
    assert result.returncode == 0, result.stderr
    assert "1 updated" in result.stderr

    after = {e.link: e for e in feedparser.parse((public / "all.atom").read_bytes()).entries}
    assert after.keys() == before.keys()
    link = "https://peninsulawatch.example/2026/11/border-tourists/"
    assert after[link].title == "Pyongyang reopens Sinuiju crossing to foreign tour groups"
    assert after[link].id == before[link].id
    assert after[link].updated_parsed > before[link].updated_parsed


def test_outputs_are_rewritten_only_when_they_change(site: Path) -> None:
    assert run_aggregator(site, "poll", "--once").returncode == 0
    public = site.parent / "public"
    stamps = {p.name: p.stat().st_mtime_ns for p in public.iterdir()}
    contents = {p.name: p.read_bytes() for p in public.iterdir()}
    build = run_aggregator(site, "build")
    assert build.returncode == 0, build.stderr
    assert {p.name: p.read_bytes() for p in public.iterdir()} == contents
    assert {p.name: p.stat().st_mtime_ns for p in public.iterdir()} == stamps


def test_status_reports_every_feed(site: Path) -> None:
    before = json.loads(run_aggregator(site, "status", "--json").stdout)
    assert [row["state"] for row in before] == ["never"] * 4
    assert run_aggregator(site, "poll", "--once").returncode == 0
    rows = json.loads(run_aggregator(site, "status", "--json").stdout)
    assert [row["state"] for row in rows] == ["ok"] * 4
    assert [row["last_status"] for row in rows] == [200] * 4
    assert rows[0]["name"] == "Peninsula Watch"
    assert rows[1]["name"] == "Seoul Desk"  # the feed's own title when the config has none
    assert rows[0]["items"] == 4
    assert all(row["next_due"] and row["moved_to"] is None for row in rows)
