"""Published files: atomic replacement, written only when their bytes change."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from aggregator.errors import PublishError

#: content type of each published file, by suffix (the contract's table)
CONTENT_TYPES = {
    ".atom": "application/atom+xml",
    ".rss": "application/rss+xml",
    ".json": "application/feed+json",
    ".html": "text/html; charset=utf-8",
    ".opml": "text/x-opml",
}


def write_atomic(path: Path, data: bytes) -> bool:
    """Replace `path` with `data` unless it already holds exactly that. True if written.

    A temporary file in the same directory is fsynced and renamed over the target, so a
    reader sees the old file or the new one, never a half-written one, even after kill -9
    or power loss.
    """
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return True


def write_outputs(output_dir: Path, outputs: Mapping[str, bytes]) -> list[str]:
    """Write each name → bytes atomically; returns the names that changed."""
    changed = []
    try:
        for name, data in sorted(outputs.items()):
            if write_atomic(output_dir / name, data):
                changed.append(name)
    except OSError as e:
        raise PublishError(f"cannot write outputs in {output_dir}: {e}") from e
    return changed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
