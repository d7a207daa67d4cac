"""`make demo` (demo/run.py): the sample outlets, merged, as a newcomer sees them.

The expectations below come from the sample feeds in demo/feeds/ (six outlets, 40 entries,
36 stories): which stories belong to the North Korea topic, and every link each story
is published under in the samples (syndicated copies carry several).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from types import ModuleType

import pytest
from lxml import html

pytestmark = pytest.mark.slow  # end to end: real processes and servers

PROJECT = Path(__file__).resolve().parent.parent
RUN = PROJECT / "demo" / "run.py"

KF = "https://koreafrontline.example/2026/11"
BL = "https://beltwayledger.example"
HR = "https://hanriverreview.example/2026/11"
NB = "https://neabrief.example/2026/11"
FB = "https://foggybottom.example"
PW = "https://pacificwire.example/news/2026/11"

#: story → the links its copies carry (tracking parameters removed, as published)
ON_TOPIC: dict[str, tuple[str, ...]] = {
    # Korea Frontline, and the Northeast Asia Brief's copy with ?utm_source=…&utm_medium=rss
    "satellite launch": (f"{KF}/satellite-launch/",),
    # Han River Review, and the Brief's copy as http://… without the trailing slash
    "hotline restored": (
        f"{HR}/hotline-restored/",
        "http://hanriverreview.example/2026/11/hotline-restored",
    ),
    # a wire story: the wire's own link, Korea Frontline's retitled copy with a byline,
    # and Foggy Bottom Dispatch's copy under its own URL
    "fuel transfers": (
        f"{PW}/12/un-monitors-ship-transfers",
        f"{KF}/fuel-smuggling-report/",
        f"{FB}/wire/2026/11/12/un-monitors-fuel-transfers/",
    ),
    "red cross talks": (f"{KF}/red-cross-talks/",),
    "flood relief": (f"{KF}/flood-relief-offer/",),
    "defectors": (f"{KF}/defector-arrivals/",),
    "coal sanctions": (f"{BL}/2026/11/18/treasury-coal-sanctions/",),
    "nominee hearing": (f"{BL}/2026/11/10/ambassador-nominee-hearing/",),
    "kaesong": (f"{HR}/kaesong-activity/",),
    # matched only by the /Kim Jong[- ]?Un/ term
    "wonsan": (f"{HR}/wonsan-winter/",),
    "leaflets": (f"{HR}/leaflet-warning/",),
    "market traders": (f"{NB}/18/market-traders-banking-rules",),
    "workers in russia": (f"{NB}/11/workers-in-russia",),
    "envoy": (f"{FB}/2026/11/19/envoy-without-preconditions/",),
    "sanctions coalitions": (f"{FB}/2026/11/15/sanctions-coalitions-analysis/",),
    "china trade": (f"{PW}/20/china-trade-third-month",),
    "missile data": (f"{PW}/16/seoul-tokyo-missile-data",),
    "fishermen": (f"{PW}/06/fishermen-returned",),
}

#: stories that must stay out of the North Korea topic
EXCLUDED: dict[str, tuple[str, ...]] = {
    # mention North Korea, but are appeals, not news
    "fundraising appeal": (f"{KF}/support-our-reporting/",),
    "newsletter promo": (f"{BL}/korea-brief-newsletter/",),
    # US foreign policy elsewhere
    "geneva talks": (f"{BL}/2026/11/20/geneva-strategic-stability/",),
    "ukraine aid": (f"{BL}/2026/11/13/ukraine-aid-committee/",),
    "aid column": (f"{BL}/2026/11/07/aid-budgets-growing/",),
    "west africa": (f"{BL}/2026/11/04/west-africa-security-package/",),
    "minerals": (f"{FB}/2026/11/21/us-eu-minerals-export-rules/",),
    "panama canal": (f"{FB}/2026/11/10/panama-canal-surcharge/",),
    "philippines": (f"{FB}/2026/11/06/philippines-base-access/",),
    "vietnam chips": (f"{NB}/07/us-vietnam-chips",),
    "taiwan strait": (f"{PW}/19/taiwan-strait-transit",),
    "sudan envoy": (f"{PW}/09/sudan-envoy-nairobi",),
    # culture and sports
    "busan jazz": (f"{HR}/busan-jazz/",),
    "lantern festival": (f"{HR}/lantern-festival/",),
    "joseon diaries": (f"{NB}/15/review-joseon-travel-diaries",),
    "choir": (f"{FB}/2026/11/14/choir-winter-concert/",),
    "k league": (f"{KF}/k-league-final/",),
    "pitcher": (f"{PW}/17/pitcher-seattle-deal",),
}

STORY_OF_LINK = {
    link: story for s in (ON_TOPIC, EXCLUDED) for story, ls in s.items() for link in ls
}


def stories_on(page: Path) -> list[str]:
    """The story of each article on a published HTML page, in page order."""
    tree = html.fromstring(page.read_bytes())
    links = [a.get("href", "") for a in tree.iterfind(".//article/h3/a")]
    unknown = [link for link in links if link not in STORY_OF_LINK]
    assert not unknown, f"links that are in none of the sample stories: {unknown}"
    return [STORY_OF_LINK[link] for link in links]


def demo_env(out: Path, port: int = 8080) -> dict[str, str]:
    return {**os.environ, "DEMO_OUT": str(out), "DEMO_PORT": str(port)}


def test_once_publishes_each_on_topic_story_once_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    result = subprocess.run(
        [sys.executable, str(RUN), "--once"],
        cwd=tmp_path,
        env=demo_env(out),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    public = out / "public"
    assert "demo-out/public/north-korea.html" in result.stdout  # where to look

    topic = stories_on(public / "north-korea.html")
    assert sorted(topic) == sorted(ON_TOPIC)  # each once: syndicated copies merged
    everything = stories_on(public / "all.html")
    assert sorted(everything) == sorted([*ON_TOPIC, *EXCLUDED])

    # the merged copies name their other outlets
    page = html.fromstring((public / "north-korea.html").read_bytes())
    articles = [
        html.tostring(a, encoding="unicode", method="text") for a in page.iterfind(".//article")
    ]
    [wire] = [text for text in articles if "fuel" in text and "UN" in text]
    for outlet in ("Pacific Wire Service", "Korea Frontline", "Foggy Bottom Dispatch"):
        assert outlet in wire
    for path in public.iterdir():
        assert "utm_" not in path.read_text(), path.name


def load_run_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_server_sends_validators_and_answers_304() -> None:
    run = load_run_module()
    with run.sample_feed_server() as base:
        with urllib.request.urlopen(f"{base}/foggy-bottom.json", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/feed+json")
            etag = response.headers["ETag"]
            last_modified = response.headers["Last-Modified"]
            assert b"https://jsonfeed.org/version/1.1" in response.read()
        earlier = format_datetime(parsedate_to_datetime(last_modified) - timedelta(seconds=1))
        current: list[dict[str, str]] = [
            {"If-None-Match": etag},
            {"If-None-Match": f'"other", W/{etag}'},
            {"If-None-Match": "*"},
            {"If-Modified-Since": last_modified},
        ]
        for headers in current:
            request = urllib.request.Request(f"{base}/foggy-bottom.json", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(request, timeout=10)
            answer.value.close()
            assert answer.value.code == 304, headers
        stale: list[dict[str, str]] = [
            {"If-None-Match": '"other"'},
            # If-None-Match decides alone when sent
            {"If-None-Match": '"other"', "If-Modified-Since": last_modified},
            {"If-Modified-Since": earlier},
            {"If-Modified-Since": "not a date"},
        ]
        for headers in stale:
            request = urllib.request.Request(f"{base}/foggy-bottom.json", headers=headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200, headers
                assert response.headers["ETag"] == etag
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/../run.py", timeout=10)
        missing.value.close()
        assert missing.value.code == 404


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_demo_serves_the_topic_page_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "demo.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, str(RUN)],
        cwd=tmp_path,
        env=demo_env(tmp_path / "demo-out", port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        page = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/north-korea.html", timeout=5
                ) as response:
                    page = response.read()
                    if b"<article" in page:
                        break
            except urllib.error.HTTPError as not_yet:  # the daemon may answer before publishing
                not_yet.close()
            except OSError:
                pass  # not listening yet
            time.sleep(0.3)
        assert b"Pyongyang" in page, log.seek(0) or log.read()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.seek(0) or log.read()
        log.seek(0)
        output = log.read()
        assert f"http://127.0.0.1:{port}/north-korea.atom" in output
        assert "Ctrl-C" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
