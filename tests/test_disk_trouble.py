"""Real disk trouble: a full output directory, a database on a read-only file system.

Each test mounts a small tmpfs of its own (root only; skipped elsewhere), so the disk is
really full or really read-only, as it would be on a server.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aggregator.errors import PublishError, StoreError
from aggregator.publish import STALE_TEMPORARY_SECONDS, remove_stale_pages, write_outputs
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
            f"settings:\n  per_host_spacing: 0\n"
            f'  listen: ""\nfeeds:\n  - url: {server.url("/feed.xml")}\n    name: f\n'
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


def test_status_reads_the_write_ahead_log_of_a_read_only_copy(
    state_disk: Path, tmp_path: Path
) -> None:
    """A backup or read-only mount of a running daemon's state: the database and its -wal
    file, no -shm. What the log holds must be read, not silently left out."""
    source = tmp_path / "live"
    source.mkdir()
    config = source / "feeds.yaml"
    config.write_text(
        "settings:\n  per_host_spacing: 0\n"
        '  listen: ""\nfeeds:\n  - url: http://127.0.0.1:9/feed.xml\n'
    )
    assert aggregator(config, "poll", "--once", timeout=60).returncode == 0
    live = sqlite3.connect(source / "aggregator.db", isolation_level=None)
    live.execute("PRAGMA wal_autocheckpoint = 0")
    live.execute("UPDATE feeds SET title = 'Only in the log'")
    for name in ("aggregator.db", "aggregator.db-wal"):
        shutil.copyfile(source / name, state_disk / name)
    live.close()
    copied = state_disk / "feeds.yaml"
    shutil.copyfile(config, copied)
    remount = subprocess.run(["mount", "-o", "remount,ro", str(state_disk)], capture_output=True)
    assert remount.returncode == 0
    status = aggregator(copied, "status", "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["name"] == "Only in the log" and row["state"] == "error"


def test_status_on_something_that_is_no_database_says_so(tmp_path: Path) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text(
        "settings:\n  per_host_spacing: 0\n"
        '  listen: ""\n  database: /dev/null\nfeeds:\n  - url: http://h.example/f\n'
    )
    status = aggregator(config, "status", timeout=60)
    assert status.returncode == 1
    assert "cannot read the database" in status.stderr and "Traceback" not in status.stderr


def test_a_directory_in_the_way_of_one_output_leaves_the_set_whole(tmp_path: Path) -> None:
    names = ["all.atom", "all.html", "all.json", "all.rss"]
    first = {name: b"round 1" for name in names}
    write_outputs(tmp_path, first)
    (tmp_path / "all.rss").unlink()
    (tmp_path / "all.rss").mkdir()
    (tmp_path / "all.rss" / "x").write_text("in the way")
    with pytest.raises(PublishError, match="directory"):
        write_outputs(tmp_path, {name: b"round 2" for name in names})
    for name in ("all.atom", "all.html", "all.json"):
        assert (tmp_path / name).read_bytes() == b"round 1"


def test_a_render_failing_half_way_leaves_the_set_whole_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    """Outputs are written as they are rendered: a render that fails after some of them
    (the database gone, a bug) must not leave those behind or change the published set."""
    names = ["all.atom", "all.html", "all.json", "all.rss"]
    write_outputs(tmp_path, {name: b"round 1" for name in names})

    def rendering() -> Iterator[tuple[str, bytes]]:
        yield "all.atom", b"round 2"
        yield "all.html", b"round 2"
        raise StoreError("the database went away")

    with pytest.raises(StoreError):
        write_outputs(tmp_path, rendering())
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == b"round 1"


def test_temporary_files_a_killed_publish_left_are_removed_once_old(tmp_path: Path) -> None:
    """kill -9 while outputs are being written leaves `.<name>.<random>.tmp` files; the
    next publish removes those an hour old, never one another process may be writing."""
    write_outputs(tmp_path, {"all.atom": b"round 1"})
    old = tmp_path / ".all.atom.k1ll3d.tmp"
    fresh = tmp_path / ".all.rss.wr1t1n.tmp"
    for left in (old, fresh):
        left.write_bytes(b"half")
    an_hour_ago = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(old, (an_hour_ago, an_hour_ago))
    remove_stale_pages(tmp_path, {"all"}, {"all.atom"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "all.atom"]
