"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

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
