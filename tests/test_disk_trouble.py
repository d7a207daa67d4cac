"""Real disk trouble: a full output directory, a database on a read-only file system.

Each test mounts a small tmpfs of its own (root only; skipped elsewhere), so the disk is
really full or really read-only, as it would be on a server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aggregator.errors import PublishError
from aggregator.publish import write_outputs
from tests.commands import aggregator
from tests.feedserver import FeedServer


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "256k") as disk:
        yield disk


@pytest.fixture
def state_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "state", "32m") as disk:
        yield disk


def test_a_full_disk_leaves_the_previous_set_of_outputs_whole(small_disk: Path) -> None:
    names = ["all.atom", "all.html", "all.json", "all.rss", "index.html"]
    first = {name: f"round 1 of {name}\n".encode() * 100 for name in names}
    assert write_outputs(small_disk, first) == sorted(names)
    # Round 2's files do not all fit: 5 x 60 KB beside round 1's files on a 256 KB disk.
    second = {name: f"round 2 of {name}\n".encode() * 3000 for name in names}
    with pytest.raises(PublishError, match="No space left"):
        write_outputs(small_disk, second)
    for name in names:
        assert (small_disk / name).read_bytes() == first[name], name
    # and no temporary file is left to fill the disk further
    assert sorted(p.name for p in small_disk.iterdir()) == sorted(names)


def test_status_reads_a_database_on_a_read_only_file_system(state_disk: Path) -> None:
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>Feed</title>'
        b"<item><title>One</title><link>http://a.example/1</link>"
        b"<description>x</description></item></channel></rss>"
    )
    with FeedServer() as server:
        server.set("/feed.xml", body)
        config = state_disk / "feeds.yaml"
        config.write_text(
            f'settings:\n  listen: ""\nfeeds:\n  - url: {server.url("/feed.xml")}\n    name: f\n'
        )
        polled = aggregator(config, "poll", "--once", timeout=60)
        assert polled.returncode == 0, polled.stderr
    # the daemon's state directory as a read-only mount (or a backup on read-only media)
    remount = subprocess.run(
        ["mount", "-o", "remount,ro", str(state_disk)], capture_output=True, text=True
    )
    assert remount.returncode == 0, remount.stderr
    status = aggregator(config, "status", "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert (row["name"], row["state"], row["items"]) == ("f", "ok", 1)
