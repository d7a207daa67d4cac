"""Shared pytest fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.feedserver import FeedServer, HostileServer


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
