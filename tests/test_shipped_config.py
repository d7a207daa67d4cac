"""The shipped feeds.yaml: valid, and a poll round on it ends well even offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import feedparser

from aggregator.config import load_config

SHIPPED = Path(__file__).resolve().parents[1] / "feeds.yaml"


def test_the_shipped_config_is_valid_and_has_the_documented_topics() -> None:
    config = load_config(SHIPPED)
    assert [t.slug for t in config.topics] == ["north-korea", "all"]
    assert len(config.feeds) >= 12
    assert all(f.url.startswith("https://") for f in config.feeds)


def test_a_round_on_the_shipped_config_reports_each_feed_once_and_publishes(
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "feeds.yaml"
    shutil.copy(SHIPPED, config_path)
    run = subprocess.run(
        [sys.executable, "-m", "aggregator", "-c", str(config_path), "poll", "--once"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    config = load_config(config_path)
    lines = run.stderr.splitlines()
    for feed in config.feeds:
        # offline, each failure is one line naming the feed; online, one line of results
        assert sum(line.startswith(f"{feed.name}: ") for line in lines) == 1, feed.name
    assert "Traceback" not in run.stderr
    for slug in ("north-korea", "all"):
        atom = feedparser.parse((tmp_path / "public" / f"{slug}.atom").read_bytes())
        assert not atom.bozo and atom.feed.title
