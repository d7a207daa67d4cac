"""Regenerate docs/screenshots/*.png: the demo's North Korea page in headless Chromium.

    .venv/bin/python -m tests.screenshots [OUT_DIR]

Runs the offline demo's one poll round (demo/run.py --once) in a temporary folder, reads
the topic's stories from its database and renders the page as of two hours after the
newest sample story (the samples are dated November 2026: rendered as of the poll, every
story would be days old). The images and icons the samples name, on hosts that do not
exist, are drawn by tests/browser.py, so every run gives the same pictures. Needs what
the browser tests need (tests/browser.py: INSTALL_HINT).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from aggregator import publish
from aggregator.config import load_config
from aggregator.render import render_html, render_topic
from aggregator.store import Store
from tests.browser import launch, missing_browser, take_screenshots

PROJECT = Path(__file__).resolve().parent.parent
OUT = PROJECT / "docs" / "screenshots"
SLUG = "north-korea"


def demo_page(folder: Path) -> dict[str, bytes]:
    """The demo topic's files after one poll round in `folder`, its page as of two hours
    after its newest story."""
    out = folder / "demo-out"
    subprocess.run(
        [sys.executable, str(PROJECT / "demo" / "run.py"), "--once"],
        cwd=folder,
        env={**os.environ, "DEMO_OUT": str(out), "DEMO_PORT": "8080"},
        check=True,
        capture_output=True,
        timeout=120,
    )
    config = load_config(out / "feeds.yaml")
    [topic] = [t for t in config.topics if t.slug == SLUG]
    with Store.open(config.settings.database) as store:
        names = publish.display_names(config, store.feed_states())
        items = publish.topic_items(config, store, topic, names)
    now = max(item.published for item in items) + timedelta(hours=2, minutes=10)
    files = render_topic(topic, items, config.settings.base_url)
    files[f"{SLUG}.html"] = render_html(topic, items, config.settings.base_url, now=now)
    return files


def main(argv: list[str]) -> int:
    reason = missing_browser()
    if reason is not None:
        print(f"screenshots: {reason}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    out = Path(argv[0]) if argv else OUT
    with tempfile.TemporaryDirectory() as folder:
        files = demo_page(Path(folder))
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            written = take_screenshots(browser, files, f"{SLUG}.html", out)
        finally:
            browser.close()
    for path in written:
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
