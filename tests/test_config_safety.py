"""A config that `check` accepts is one every other command can run on.

The class of bug: values that validate but make a later command die (a lone surrogate
that cannot be printed or stored, a duration that overflows a date). `check` must name
them as FILE:LINE errors (exit 2), and whatever a config holds, `status`, `build` and
`poll --once` either run or exit with a message, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import cli
from aggregator.config import parse_config
from aggregator.errors import ConfigError
from tests.commands import aggregator


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return aggregator(config, *args, timeout=60)


# YAML double-quoted escapes, as a user (or a tool) writes them
BAD_VALUES = {
    "surrogate in url": ('feeds:\n  - url: "http://127.0.0.1:9/f?\\ud800"\n', 2),
    "surrogate in name": ('feeds:\n  - url: http://127.0.0.1:9/f\n    name: "x \\udc80"\n', 3),
    "surrogate in title": (
        'topics:\n  t:\n    title: "\\ud83d"\nfeeds:\n  - url: http://127.0.0.1:9/f\n',
        3,
    ),
    "NUL in database path": (
        'settings:\n  database: "a\\0b.db"\nfeeds:\n  - url: http://127.0.0.1:9/f\n',
        2,
    ),
    "control character in a term": (
        'topics:\n  t:\n    include: ["a\\x1bb"]\nfeeds:\n  - url: http://127.0.0.1:9/f\n',
        3,
    ),
    "interval past year 9999": (
        "settings:\n  interval: 99999999d\nfeeds:\n  - url: http://127.0.0.1:9/f\n",
        2,
    ),
    "retention before year 1": (
        "settings:\n  retention: 999999d\nfeeds:\n  - url: http://127.0.0.1:9/f\n",
        2,
    ),
    "retention beyond a C int": (
        "settings:\n  retention: 9999999999999d\nfeeds:\n  - url: http://127.0.0.1:9/f\n",
        2,
    ),
    "max_feed_size beyond a C int": (
        "settings:\n  max_feed_size: 99999999GB\nfeeds:\n  - url: http://127.0.0.1:9/f\n",
        2,
    ),
}


@pytest.mark.parametrize("text, line", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_check_rejects_values_other_commands_would_choke_on(
    tmp_path: Path, text: str, line: int
) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text('settings:\n  listen: ""\n' + text if "settings:" not in text else text)
    if "settings:" not in text:
        line += 2
    checked = run_cli(config, "check")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.startswith(f"{config}:{line}: "), checked.stderr
    assert "Traceback" not in checked.stderr
    # every other command refuses it the same way, writing nothing
    for command in (["status"], ["build"], ["poll", "--once"]):
        result = run_cli(config, *command)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "public").exists()


# Any text at all, as YAML escapes: JSON's string escapes are valid YAML double-quoted ones
# and can spell every code point, lone surrogates included.
any_text = st.text(st.characters(codec=None), min_size=1, max_size=12)


def quoted(text: str) -> str:
    return json.dumps(text)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=any_text, title=any_text, description=any_text, term=any_text, path=any_text)
def test_every_command_runs_on_whatever_check_accepts(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    name: str,
    title: str,
    description: str,
    term: str,
    path: str,
) -> None:
    folder = tmp_path_factory.mktemp("cfg")
    text = (
        "settings:\n"
        '  listen: ""\n'
        f"  database: {quoted('db-' + path)}\n"
        f"  output_dir: {quoted('out-' + path)}\n"
        "topics:\n"
        "  t:\n"
        f"    title: {quoted(title)}\n"
        f"    description: {quoted(description)}\n"
        f"    include: [{quoted(term)}]\n"
        "feeds:\n"
        f"  - url: {quoted('http://127.0.0.1:9/f?q=' + path)}\n"
        f"    name: {quoted(name)}\n"
    )
    config = folder / "feeds.yaml"
    config.write_text(text, encoding="utf-8")
    try:
        parse_config(text, config)
    except ConfigError:
        return  # refused with a message: fine
    for command in (["check"], ["status", "--json"], ["status"], ["build"]):
        assert cli.main(["-c", str(config), *command]) == 0, command
        out, err = capsys.readouterr()
        # what was printed can be written to a UTF-8 terminal or journal
        (out + err).encode("utf-8")
