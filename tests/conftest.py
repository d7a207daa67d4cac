"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.browser import launch, missing_browser
from tests.feedserver import FeedServer, HostileServer

# Property tests draw the same examples on every run, so a rare input met by chance fails
# no CI run of a change that did not touch it. HYPOTHESIS_PROFILE=deep draws 3,000 random
# examples a test, to look for such inputs on purpose.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("deep", max_examples=3000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    """A well-behaved feed server on 127.0.0.1; `set()` content, read back `requests`."""
    with FeedServer() as server:
        yield server


@pytest.fixture
def hostile_server() -> Iterator[HostileServer]:
    """A raw-socket server that misbehaves according to the path (HostileServer.PATHS)."""
    with HostileServer() as server:
        yield server


@pytest.fixture
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """For commands run in process: no config from the environment or the current
    folder, and root logging restored (main() configures it for the process)."""
    monkeypatch.delenv("AGGREGATOR_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright (tests/browser.py); the test is skipped,
    saying what to install, where there is none."""
    reason = missing_browser()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()
