"""cli.py in process: arguments, exit codes and what the user reads, for the commands that
need no network (`check`, `status`, `build`, and argparse's own answers).

`main()` is called directly and its output read with capsys; no subprocess, no server.
The end-to-end runs of `poll --once` and `run` live in the e2e and daemon tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from aggregator import __version__, cli
from aggregator.config import parse_config
from aggregator.model import FeedSource, FeedState

if TYPE_CHECKING:
    from aggregator.store import Store

#: the fields of each `status --json` row, in the contract's order (README "Commands")
STATUS_FIELDS = [
    "url",
    "name",
    "state",
    "last_fetched",
    "next_due",
    "last_status",
    "last_error",
    "items",
    "moved_to",
]
#: the fields `status --json` adds after the contract's (what the table shows)
STATUS_EXTRA_FIELDS = [
    "last_error_kind",
    "last_result",
    "enabled",
    "failures",
    "interval_seconds",
    "interval_reason",
]

VALID = """\
settings:
  per_host_spacing: 0
  listen: ""
  database: state/agg.db
  output_dir: out
topics:
  nk:
    title: North Korea
    include: [Pyongyang]
  world:
    title: World
feeds:
  - url: https://a.example/feed
    name: Alpha
  - url: https://reader:hunter2@b.example/feed?token=s3cret
"""

#: the files `build` publishes for VALID's two topics (README "What gets published")
PUBLISHED = sorted(
    [f"{slug}.{ext}" for slug in ("nk", "world") for ext in ("atom", "rss", "json", "html")]
    + ["index.html", "feeds.opml"]
)


pytestmark = pytest.mark.usefixtures("hermetic")


def write(folder: Path, text: str, name: str = "feeds.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the only line of `text` that contains `fragment`."""
    [line] = [n for n, content in enumerate(text.splitlines(), 1) if fragment in content]
    return line


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) → (exit code, stdout, stderr); argparse's SystemExit counts as an exit."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        assert isinstance(exit_.code, int), exit_.code
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# --- argparse ------------------------------------------------------------------------


def test_help_lists_every_command_and_the_config_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "--help")
    assert code == 0 and err == ""
    assert out.startswith("usage: aggregator ")
    for command in ("check", "poll", "run", "status", "build"):
        assert f"    {command} " in out, command
    assert "-c CONFIG, --config CONFIG" in out


def test_a_commands_help_names_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "poll", "--help")
    assert code == 0
    assert out.startswith("usage: aggregator poll ")
    assert "--once" in out and "--force" in out
    code, out, _ = run(capsys, "status", "--help")
    assert code == 0 and "--json" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, f"aggregator {__version__}\n")


def test_an_unknown_command_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "frobnicate")
    assert code == cli.EXIT_CONFIG == 2
    assert out == ""
    assert "invalid choice: 'frobnicate'" in err
    assert err.startswith("usage: aggregator ")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert "the following arguments are required: COMMAND" in err


def test_poll_without_once_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, VALID)
    code, _, err = run(capsys, "-c", str(config), "poll")
    assert code == 2
    assert "aggregator poll: error: the following arguments are required: --once" in err
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()


def test_an_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", "--yaml")
    assert code == 2 and "unrecognized arguments: --yaml" in err


# --- which config file ---------------------------------------------------------------


@pytest.mark.parametrize("before", [True, False], ids=["-c before", "-c after"])
def test_the_config_option_is_taken_before_and_after_the_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, before: bool
) -> None:
    config = write(tmp_path, VALID, "elsewhere.yaml")
    argv = ["-c", str(config), "check"] if before else ["check", "--config", str(config)]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert out.startswith(f"{config}: ok")


def test_the_config_after_the_command_wins(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, VALID, "chosen.yaml")
    code, out, err = run(capsys, "-c", str(tmp_path / "missing.yaml"), "check", "-c", str(config))
    assert (code, err) == (0, "")
    assert out.startswith(f"{config}: ok")


def test_the_environment_names_the_config_when_no_option_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, VALID, "from-env.yaml")
    write(tmp_path, "feeds: 3\n")  # ./feeds.yaml, invalid: must not be read
    monkeypatch.setenv("AGGREGATOR_CONFIG", str(config))
    code, out, _ = run(capsys, "check")
    assert code == 0 and out.startswith(f"{config}: ok")
    # an explicit -c beats the environment
    code, _, err = run(capsys, "-c", str(tmp_path / "feeds.yaml"), "check")
    assert code == 2 and err.startswith(f"{tmp_path / 'feeds.yaml'}:1: feeds: ")


def test_the_default_config_is_feeds_yaml_in_the_current_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write(tmp_path, VALID)  # the hermetic fixture made tmp_path the current folder
    code, out, _ = run(capsys, "check")
    assert code == 0 and out.startswith("feeds.yaml: ok")


@pytest.mark.parametrize("command", [["check"], ["status"], ["status", "--json"], ["build"]])
def test_a_missing_config_file_is_named_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "nowhere" / "feeds.yaml"
    code, out, err = run(capsys, "-c", str(missing), *command)
    assert code == 2 and out == ""
    assert err == f"{missing}: cannot read: No such file or directory\n"


def test_a_folder_given_as_the_config_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "-c", str(tmp_path), "check")
    assert code == 2
    assert err == f"{tmp_path}: cannot read: Is a directory\n"


def test_a_config_that_is_not_utf8_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("feeds:\n  - url: https://caf\xe9.example/\n".encode("latin-1"))
    code, _, err = run(capsys, "-c", str(config), "check")
    assert code == 2
    assert err.startswith(f"{config}:2: not UTF-8 text: ")
    assert "Traceback" not in err


# --- check ---------------------------------------------------------------------------


def test_check_reports_the_feeds_and_topics_of_a_valid_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, VALID)
    code, out, err = run(capsys, "-c", str(config), "check")
    assert (code, err) == (0, "")
    assert out == f"{config}: ok: 2 feeds, 2 topics (nk, world)\n"
    # check only reads: no database, no outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feeds.yaml"]


def test_check_names_the_default_topic_of_a_config_without_topics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(
        tmp_path, "feeds:\n  - url: https://a.example/feed\n  - url: https://b.example/feed\n"
    )
    code, out, _ = run(capsys, "-c", str(config), "check")
    assert code == 0
    assert out == f"{config}: ok: 2 feeds, 1 topics (all)\n"


#: invalid configs: (text, a fragment of the offending line, the key path, the problem)
INVALID = {
    "not an http URL": (
        VALID + "  - url: ftp://c.example/feed\n",
        "ftp://c.example",
        "feeds[2].url",
        "not an http(s) URL: 'ftp://c.example/feed'",
    ),
    "unknown key, with a hint": (
        VALID.replace('  listen: ""', '  listen: ""\n  intreval: 5m'),
        "intreval",
        "settings.intreval",
        "unknown key; did you mean 'interval'?",
    ),
    "duration without a unit": (
        VALID.replace('  listen: ""', '  listen: ""\n  interval: 30'),
        "interval: 30",
        "settings.interval",
        "expected a duration with a unit",
    ),
    "bad regular expression": (
        VALID.replace("include: [Pyongyang]", "include: ['/Kim (Jong/']"),
        "Kim (Jong",
        "topics.nk.include[0]",
        "invalid regular expression",
    ),
    "duplicate feed URL": (
        VALID + "  - url: https://a.example/feed  # again\n    name: Again\n",
        "# again",
        "feeds[2].url",
        f"the same URL as feeds[0].url on line {line_of(VALID, 'a.example/feed')}",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_check_names_the_file_line_and_key_of_the_first_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str
) -> None:
    text, fragment, where, problem = INVALID[case]
    config = write(tmp_path, text)
    code, out, err = run(capsys, "-c", str(config), "check")
    assert code == cli.EXIT_CONFIG == 2
    assert out == ""
    assert err.startswith(f"{config}:{line_of(text, fragment)}: {where}: "), err
    assert problem in err
    assert err.count("\n") == 1, err  # one line, no traceback


def test_check_names_the_line_of_a_yaml_syntax_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = VALID.replace("title: World", "title: [World")
    config = write(tmp_path, text)
    code, out, err = run(capsys, "-c", str(config), "check")
    assert (code, out) == (2, "")
    # the parser notices the unclosed [ on a later line: between it and the next key
    location, where, _ = err.split(": ", 2)
    file, _, line = location.rpartition(":")
    assert (file, where) == (str(config), "yaml")
    assert line_of(text, "[World") <= int(line) <= line_of(text, "feeds:")
    assert err.count("\n") == 1, err


def test_config_errors_do_not_show_credentials(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = VALID + "  - url: ftp://mallory:hunter3@c.example/feed\n"
    config = write(tmp_path, text)
    code, _, err = run(capsys, "-c", str(config), "check")
    assert code == 2
    assert err.startswith(f"{config}:{line_of(text, 'ftp://')}: feeds[2].url: ")
    assert "hunter3" not in err and "***" in err


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["build"]])
def test_every_command_refuses_an_invalid_config_without_writing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    text = VALID + "  - url: ftp://c.example/feed\n"
    config = write(tmp_path, text)
    code, out, err = run(capsys, "-c", str(config), *command)
    assert code == 2 and out == ""
    assert err.startswith(f"{config}:{line_of(text, 'ftp://')}: feeds[2].url: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feeds.yaml"]


# --- status --------------------------------------------------------------------------


def test_status_before_any_poll_shows_every_feed_as_never_fetched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    config = write(tmp_path, VALID)
    code, out, err = run(capsys, "-c", str(config), "status")
    assert (code, err) == (0, "")
    assert out == (
        "FEED                                  STATE  LAST FETCH  RESULT  ITEMS  NEXT DUE"
        "  INTERVAL\n"
        "Alpha                                 never  never       -           0  -"
        "         30m default\n"
        # no name in the config and no title fetched: the URL, its credentials hidden
        "https://***@b.example/feed?token=***  never  never       -           0  -"
        "         30m default\n"
        "\n"
        "2 feeds: 0 ok, 2 never polled\n"
    )
    # status only reads: it does not create the database
    assert not (tmp_path / "state").exists()


def test_status_json_before_any_poll(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, VALID)
    code, out, _ = run(capsys, "-c", str(config), "status", "--json")
    assert code == 0
    rows = json.loads(out)
    # the contract's fields first, in its order, then the additions
    assert [list(row) for row in rows] == [STATUS_FIELDS + STATUS_EXTRA_FIELDS] * 2
    assert rows[0] == {
        "url": "https://a.example/feed",
        "name": "Alpha",
        "state": "never",
        "last_fetched": None,
        "next_due": None,
        "last_status": None,
        "last_error": None,
        "items": 0,
        "moved_to": None,
        "last_error_kind": None,
        "last_result": "-",
        "enabled": True,
        "failures": 0,
        "interval_seconds": 1800,
        "interval_reason": "default: its rhythm is not known yet",
    }
    assert rows[1]["url"] == "https://***@b.example/feed?token=***"
    assert rows[1]["name"] is None
    assert "hunter2" not in out and "s3cret" not in out


def test_status_on_an_empty_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, VALID)
    assert run(capsys, "-c", str(config), "build")[0] == 0  # creates the database, no feeds
    assert (tmp_path / "state" / "agg.db").is_file()
    code, out, _ = run(capsys, "-c", str(config), "status", "--json")
    assert code == 0
    assert [(row["state"], row["items"], row["last_fetched"]) for row in json.loads(out)] == [
        ("never", 0, None),
        ("never", 0, None),
    ]


def test_status_on_a_file_that_is_not_a_database_fails_with_its_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, VALID)
    database = tmp_path / "state" / "agg.db"
    database.parent.mkdir()
    database.write_bytes(b"this is not an SQLite database, only text of a plausible length\n" * 4)
    code, out, err = run(capsys, "-c", str(config), "status")
    assert code == cli.EXIT_FAILURE == 1
    assert out == ""
    assert err.startswith("aggregator: ") and str(database) in err
    assert err.count("\n") == 1


# --- build ---------------------------------------------------------------------------


def test_build_before_any_poll_publishes_every_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, VALID)
    code, out, err = run(capsys, "-c", str(config), "build")
    assert (code, err) == (0, "")
    assert out == f"{len(PUBLISHED)} output files changed in {tmp_path / 'out'}\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == PUBLISHED
    atom = (tmp_path / "out" / "nk.atom").read_text(encoding="utf-8")
    assert "North Korea" in atom and "<entry" not in atom  # the topic, with no items yet
    # nothing changed since: nothing is rewritten
    assert run(capsys, "-c", str(config), "build") == (
        0,
        f"0 output files changed in {tmp_path / 'out'}\n",
        "",
    )


def test_build_after_a_topic_is_added_reports_only_the_new_and_changed_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, VALID)
    assert run(capsys, "-c", str(config), "build")[0] == 0
    write(tmp_path, VALID.replace("topics:\n", "topics:\n  extra:\n    title: Extra\n"))
    code, out, _ = run(capsys, "-c", str(config), "build")
    assert code == 0
    # four files for the new topic; the index and the other topics' pages list the topics
    changed = int(out.split()[0])
    assert 4 <= changed < len(PUBLISHED) + 4, out
    assert (tmp_path / "out" / "extra.atom").is_file()


def test_build_fails_with_exit_1_when_the_output_folder_cannot_be_made(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, VALID)
    (tmp_path / "out").write_text("a file where the output folder should be")
    code, out, err = run(capsys, "-c", str(config), "build")
    assert code == cli.EXIT_FAILURE == 1
    assert out == ""
    assert err.startswith(f"aggregator: cannot write outputs in {tmp_path / 'out'}: ")
    assert err.count("\n") == 1


def test_build_fails_with_exit_1_on_a_file_that_is_not_a_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(tmp_path, VALID)
    database = tmp_path / "state" / "agg.db"
    database.parent.mkdir()
    database.write_bytes(b"this is not an SQLite database, only text of a plausible length\n" * 4)
    code, out, err = run(capsys, "-c", str(config), "build")
    assert (code, out) == (1, "")
    assert err.startswith("aggregator: ") and str(database) in err
    assert not (tmp_path / "out").exists()


# --- one feed's status row (pure) ----------------------------------------------------

SOURCE = FeedSource(url="https://a.example/feed", name="Alpha")
FETCHED = datetime(2026, 11, 23, 13, 21, 45, tzinfo=UTC)
DUE = datetime(2026, 11, 23, 13, 51, 45, tzinfo=UTC)


def state(**changes: object) -> FeedState:
    fields: dict[str, object] = {"url": SOURCE.url, "fetch_url": SOURCE.url}
    fields.update(changes)
    return FeedState(**fields)  # type: ignore[arg-type]


def test_a_feed_never_seen_has_state_never_and_no_dates() -> None:
    assert cli.feed_status(SOURCE, None, 0) == {
        "url": SOURCE.url,
        "name": "Alpha",
        "state": "never",
        "last_fetched": None,
        "next_due": None,
        "last_status": None,
        "last_error": None,
        "items": 0,
        "moved_to": None,
        "last_error_kind": None,
        "last_result": "-",
        "enabled": True,
        "failures": 0,
        "interval_seconds": 1800,
        "interval_reason": "set for this feed",
    }
    # a stored state that was never fetched (only scheduled) is still "never"
    row = cli.feed_status(SOURCE, state(next_due=DUE, title="Feed title"), 0)
    assert row["state"] == "never" and row["next_due"] == "2026-11-23T13:51:45Z"


def test_a_fetched_feed_is_ok_with_iso_dates_and_its_status() -> None:
    row = cli.feed_status(
        SOURCE, state(last_fetched=FETCHED, next_due=DUE, last_status=200), items=7
    )
    assert row["state"] == "ok"
    assert (row["last_fetched"], row["next_due"]) == (
        "2026-11-23T13:21:45Z",
        "2026-11-23T13:51:45Z",
    )
    assert (row["last_status"], row["items"], row["last_error"]) == (200, 7, None)


def test_a_failing_feed_is_error_with_its_message_redacted() -> None:
    row = cli.feed_status(
        SOURCE,
        state(
            last_fetched=FETCHED,
            last_status=302,
            last_error="redirected to https://u:pw@evil.example/x?api_key=k3y",
        ),
        0,
    )
    assert row["state"] == "error"
    assert row["last_error"] == "redirected to https://***@evil.example/x?api_key=***"


def test_a_gone_feed_is_gone_and_has_no_next_due() -> None:
    # gone wins over a stored error; a gone feed is not polled, so it is not "due"
    row = cli.feed_status(
        SOURCE,
        state(last_fetched=FETCHED, next_due=DUE, last_status=410, gone=True, last_error="gone"),
        3,
    )
    assert (row["state"], row["next_due"], row["items"]) == ("gone", None, 3)


def test_the_feeds_own_title_names_it_when_the_config_does_not() -> None:
    unnamed = FeedSource(url="https://a.example/feed")
    assert cli.feed_status(unnamed, state(title="Peninsula Watch"), 0)["name"] == (
        "Peninsula Watch"
    )
    assert cli.feed_status(unnamed, None, 0)["name"] is None
    # the configured name wins over the feed's title
    assert cli.feed_status(SOURCE, state(title="Peninsula Watch"), 0)["name"] == "Alpha"


def test_a_moved_feed_shows_its_new_url_redacted() -> None:
    row = cli.feed_status(
        SOURCE, state(last_fetched=FETCHED, moved_to="https://u:pw@new.example/feed"), 0
    )
    assert row["moved_to"] == "https://***@new.example/feed"


@dataclass
class StubStore:
    """What cmd_status reads from a store: the states and item counts by URL (and the
    WebSub subscriptions: none)."""

    states: dict[str, FeedState] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def feed_states(self) -> dict[str, FeedState]:
        return self.states

    def item_counts(self) -> dict[str, int]:
        return self.counts

    def subscriptions(self) -> list[object]:
        return []


def test_status_text_shows_errors_and_moves_and_obeys_no_control_character(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = parse_config(
        "feeds:\n  - url: https://a.example/feed\n  - url: https://b.example/feed\n",
        Path("feeds.yaml"),
    )
    hostile = "Evil\x1b]0;pwned\x07 \u202eTitle\nsecond line"
    store = StubStore(
        states={
            "https://a.example/feed": state(
                title=hostile,
                last_fetched=FETCHED,
                next_due=DUE,
                last_status=500,
                last_error="HTTP 500\x1b[2J",
            ),
            "https://b.example/feed": FeedState(
                url="https://b.example/feed",
                fetch_url="https://c.example/feed",
                last_fetched=FETCHED,
                last_status=200,
                moved_to="https://c.example/feed",
            ),
        },
        counts={"https://a.example/feed": 12},
    )
    later = FETCHED + timedelta(minutes=3)
    assert cli.cmd_status(config, cast("Store", store), as_json=False, now=later, width=100) == 0
    out, _ = capsys.readouterr()
    assert out == (
        # 100 columns: the feed column gives way, the name is cut
        "FEED                     STATE  LAST FETCH  RESULT                     ITEMS"
        "  NEXT DUE   INTERVAL\n"
        "Evil]0;pwned Title sec…  error  3 min ago   500 internal server error     12"
        "  in 27 min  30m default\n"
        "https://b.example/feed   ok     3 min ago   200 OK                         0"
        "  -          30m default\n"
        "\n"
        "2 feeds: 1 ok, 1 error\n"
        "\n"
        "Evil]0;pwned Title second line: HTTP 500[2J\n"
        "https://b.example/feed: moved permanently to https://c.example/feed (update feeds.yaml)\n"
    )
    # --json keeps the values as stored (JSON escapes them)
    assert cli.cmd_status(config, cast("Store", store), as_json=True) == 0
    rows = json.loads(capsys.readouterr()[0])
    assert rows[0]["name"] == hostile
