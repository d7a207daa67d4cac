"""A config that `check` accepts is one every other command can run on.

The class of bug: values that validate but make a later command die (a lone surrogate
that cannot be printed or stored, a duration that overflows a date). `check` must name
them as FILE:LINE errors (exit 2), and whatever a config holds, `status`, `build` and
`poll --once` either run or exit with a message, never a traceback.
"""

from __future__ import annotations

import json
import os
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


FEED = "feeds:\n  - url: http://127.0.0.1:9/f\n"
DEEP = "[" * 3000 + "]" * 3000
#: found by a red-team pass: each made `check` print a traceback or a password, or passed
#: `check` and then broke another command
MORE_BAD = {
    "IDNA host poll could not read": ('feeds:\n  - url: "http://xn--/feed"\n', "feeds[0].url"),
    "brackets in a password": (
        'feeds:\n  - url: "http://alice:[hunter2]@127.0.0.1/feed"\n',
        "feeds[0].url",
    ),
    "parentheses in a password": (
        'feeds:\n  - url: "http://alice:pa(hunter2)@127.0.0.1:99999/feed?token=hunter2"\n',
        "feeds[0].url",
    ),
    "spaces in a password": (
        'feeds:\n  - url: "http://alice:Sup3r hunter2@127.0.0.1/feed"\n',
        "feeds[0].url",
    ),
    "full-width host": ('feeds:\n  - url: "http://ｅｘａｍｐｌｅ.com／feed"\n', "feeds[0].url"),
    "broken IPv6 base_url": ('settings:\n  base_url: "http://[x/"\n' + FEED, "settings.base_url"),
    "credentials in base_url": (
        'settings:\n  base_url: "http://u:hunter2@h.example/"\n' + FEED,
        "settings.base_url",
    ),
    "5,000-digit interval": ("settings:\n  interval: " + "9" * 5000 + "s\n" + FEED, "interval"),
    "5,000-digit max_items": ("settings:\n  max_items: " + "9" * 5000 + "\n" + FEED, ""),
    "YAML nested 3,000 deep": ("topics:\n  t:\n    include: " + DEEP + "\n" + FEED, ""),
    "regex repeat beyond int": ('topics:\n  t:\n    include: ["/a{4294967295}/"]\n' + FEED, "t"),
    "regex nested 2,000 deep": (
        'topics:\n  t:\n    include: ["/' + "(?:" * 2000 + "a" + ")" * 2000 + '/"]\n' + FEED,
        "topics.t.include[0]",
    ),
    "slug too long for a file name": ("topics:\n  " + "a" * 300 + ":\n    title: x\n" + FEED, ""),
    "slug taken by index.html": ("topics:\n  index:\n    title: x\n" + FEED, "topics.index"),
}


@pytest.mark.parametrize("text, where", MORE_BAD.values(), ids=MORE_BAD.keys())
def test_check_names_the_problem_without_a_traceback_or_a_password(
    tmp_path: Path, text: str, where: str
) -> None:
    config = tmp_path / "feeds.yaml"
    config.write_text('settings:\n  listen: ""\n' + text if "settings:" not in text else text)
    for command in (["check"], ["status"], ["poll", "--once"]):
        result = run_cli(config, *command)
        assert result.returncode == 2, (command, result.stdout, result.stderr[-2000:])
        assert result.stderr.startswith(f"{config}:"), result.stderr[-2000:]
        assert where in result.stderr
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_a_password_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "pw"
    os.mkfifo(fifo)
    config = tmp_path / "feeds.yaml"
    config.write_text(
        f"feeds:\n  - url: http://127.0.0.1:9/f\n    auth: {{username: u, password_file: {fifo}}}\n"
    )
    checked = run_cli(config, "check")  # used to hang until something wrote to the FIFO
    assert checked.returncode == 2
    assert "is not a regular file" in checked.stderr
