"""The `aggregator` command as a user runs it: a subprocess with this checkout's code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def aggregator(
    config: Path, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`aggregator -c CONFIG ARGS…`, output captured. This checkout's code comes first on
    the path (a worktree's tests run its own code, not the installed one)."""
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)},
    )


def status_rows(config: Path, key: str = "url") -> dict[str, dict[str, Any]]:
    """`status --json`, its rows by `key`."""
    status = aggregator(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    return {str(row[key]): row for row in json.loads(status.stdout)}
