import re
from datetime import timedelta
from pathlib import Path

import pytest

from aggregator.config import load_config, parse_config
from aggregator.errors import ConfigError
from aggregator.model import Config, FeedSource, Settings, Topic

DATA = Path(__file__).parent / "data" / "config"

# one valid feed, appended to snippets that test something else
FEED = "feeds:\n  - url: https://a.example/feed\n    name: A\n    tags: [news]\n"


def error_of(text: str, path: str = "feeds.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path(path))
    return str(info.value)


# --- the contract's example ------------------------------------------------------


def test_contract_example_parses():
    path = DATA / "valid.yaml"
    config = load_config(path)
    assert config.path == path
    assert config.settings == Settings(
        database=DATA / "aggregator.db",
        output_dir=DATA / "public",
        listen="127.0.0.1:8080",
        base_url="http://127.0.0.1:8080/",
        interval=timedelta(minutes=30),
        max_items=50,
        retention=timedelta(days=365),
    )
    assert config.feeds == (
        FeedSource(
            url="https://example.org/feed/",
            name="Example Outlet",
            tags=("news",),
            interval=timedelta(minutes=15),
            line=17,
        ),
    )
    (topic,) = config.topics
    assert (topic.slug, topic.title, topic.line) == ("north-korea", "North Korea", 10)
    assert topic.description == "Peace, sanctions and diplomacy on the Korean peninsula"
    assert [t.source for t in topic.include] == [
        "North Korea",
        "DPRK",
        "Pyongyang",
        "/Kim Jong[- ]?Un/",
    ]
    assert [t.source for t in topic.exclude] == ["fundraising"]
    assert topic.feeds == ("news",)
    assert topic.include[3].pattern.search("kim jong-un")
    assert not topic.include[1].pattern.search("DPRKX")


def test_minimal_config_gets_defaults_and_the_all_topic():
    config = parse_config("feeds:\n  - url: https://a.example/feed\n", Path("/etc/agg/feeds.yaml"))
    assert config.settings == Settings(
        database=Path("/etc/agg/aggregator.db"), output_dir=Path("/etc/agg/public")
    )
    assert config.topics == (Topic(slug="all", title="All feeds"),)
    assert config.feeds == (
        FeedSource(
            url="https://a.example/feed",
            interval=timedelta(minutes=30),
            min_interval=timedelta(minutes=10),
            max_interval=timedelta(hours=12),
            line=2,
        ),
    )


@pytest.mark.parametrize("topics", ["", "topics:\n", "topics: {}\n"])
def test_no_topics_means_one_topic_with_everything(topics):
    config = parse_config(topics + FEED, Path("feeds.yaml"))
    assert config.topics == (Topic(slug="all", title="All feeds", feeds=None),)


def test_empty_settings_block_gives_defaults():
    config = parse_config("settings:\n" + FEED, Path("feeds.yaml"))
    assert config.settings == Settings()


# --- settings --------------------------------------------------------------------


def test_relative_paths_are_resolved_against_the_config_folder():
    text = "settings:\n  database: data/agg.db\n  output_dir: /srv/www\n" + FEED
    settings = parse_config(text, Path("conf/feeds.yaml")).settings
    assert settings.database == Path("conf/data/agg.db")
    assert settings.output_dir == Path("/srv/www")


def test_home_is_expanded_in_paths():
    settings = parse_config("settings:\n  database: ~/agg.db\n" + FEED, Path("feeds.yaml")).settings
    assert settings.database == Path.home() / "agg.db"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1s", timedelta(seconds=1)),
        ("1h30m", timedelta(minutes=90)),
    ],
)
def test_durations(value, expected):
    text = f"settings:\n  interval: {value}\n  retention: {value}\n" + FEED
    settings = parse_config(text, Path("feeds.yaml")).settings
    assert settings.interval == expected
    assert settings.retention == expected


def test_feed_interval_defaults_to_settings_interval():
    text = (
        "settings:\n  interval: 5m\nfeeds:\n  - url: https://a.example/\n"
        "  - url: https://b.example/\n    interval: 1h\n"
    )
    feeds = parse_config(text, Path("feeds.yaml")).feeds
    assert [f.interval for f in feeds] == [timedelta(minutes=5), timedelta(hours=1)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('""', ""),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("localhost:1", "localhost:1"),
        ("0.0.0.0:65535", "0.0.0.0:65535"),
        ("'[::1]:8080'", "[::1]:8080"),
        ("feeds.example.org:80", "feeds.example.org:80"),
    ],
)
def test_valid_listen(value, expected):
    text = f"settings:\n  listen: {value}\n" + FEED
    assert parse_config(text, Path("feeds.yaml")).settings.listen == expected


def test_websub_hub_is_an_http_url_or_absent() -> None:
    assert parse_config(FEED, Path("feeds.yaml")).settings.websub_hub is None
    text = "settings:\n  websub_hub: https://hub.example/publish\n" + FEED
    hub = parse_config(text, Path("feeds.yaml")).settings.websub_hub
    assert hub == "https://hub.example/publish"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://news.example/agg", "https://news.example/agg/"),
        ("https://news.example/agg/", "https://news.example/agg/"),
        ("http://news.example", "http://news.example/"),
    ],
)
def test_base_url_ends_with_a_slash(value, expected):
    text = f"settings:\n  base_url: {value}\n" + FEED
    assert parse_config(text, Path("feeds.yaml")).settings.base_url == expected


# Each rule: a config snippet and the message `check` prints, after "feeds.yaml:".
INVALID = [
    # the document
    ("", "1: no feeds configured: the file is empty"),
    ("# nothing\n", "1: no feeds configured: the file is empty"),
    ("- url: x\n", "1: expected a mapping with settings, topics and feeds, got a list"),
    ("settings: {}\n", "1: feeds: missing: at least one feed is required"),
    (
        FEED + "sources: []\n",
        "5: sources: unknown key; expected one of settings, topics, feeds",
    ),
    (FEED + "topic: {}\n", "5: topic: unknown key; did you mean 'topics'?"),
    (FEED + "1: x\n", "5: keys must be strings, got an integer (1)"),
    # settings
    ("settings: 5\n" + FEED, "1: settings: expected a mapping, got an integer"),
    (
        "settings:\n  intervall: 5m\n" + FEED,
        "2: settings.intervall: unknown key; did you mean 'interval'?",
    ),
    ("settings:\n  database: ''\n" + FEED, "2: settings.database: must not be empty"),
    (
        "settings:\n  output_dir: [a]\n" + FEED,
        "2: settings.output_dir: expected a string, got a list",
    ),
    (
        "settings:\n  interval: 30\n" + FEED,
        "2: settings.interval: expected a duration with a unit (s, m, h or d), got 30; e.g. 30m",
    ),
    (
        "settings:\n  interval: 0s\n" + FEED,
        "2: settings.interval: must be at least 1s, got '0s'",
    ),
    (
        "settings:\n  interval: 30 minutes\n" + FEED,
        "2: settings.interval: expected a duration such as 90s, 15m, 2h or 1d, got '30 minutes'",
    ),
    (
        "settings:\n  interval: -5m\n" + FEED,
        "2: settings.interval: expected a duration such as 90s, 15m, 2h or 1d, got '-5m'",
    ),
    (
        "settings:\n  interval: 1.5h\n" + FEED,
        "2: settings.interval: expected a duration such as 90s, 15m, 2h or 1d, got '1.5h'",
    ),
    (
        "settings:\n  retention: 1y\n" + FEED,
        "2: settings.retention: expected a duration such as 90s, 15m, 2h or 1d, got '1y'",
    ),
    (
        "settings:\n  retention: [1d]\n" + FEED,
        "2: settings.retention: expected a duration such as 30m, got a list",
    ),
    (
        "settings:\n  max_items: true\n" + FEED,
        "2: settings.max_items: expected a positive integer, got a boolean",
    ),
    (
        "settings:\n  max_items: 0\n" + FEED,
        "2: settings.max_items: must be at least 1, got 0",
    ),
    (
        "settings:\n  max_items: '50'\n" + FEED,
        "2: settings.max_items: expected a positive integer, got a string",
    ),
    (
        "settings:\n  max_items: 2.5\n" + FEED,
        "2: settings.max_items: expected a positive integer, got a number",
    ),
    (
        "settings:\n  listen: 8080\n" + FEED,
        '2: settings.listen: expected "host:port" or "", got an integer',
    ),
    (
        "settings:\n  listen: localhost\n" + FEED,
        "2: settings.listen: expected host:port such as 127.0.0.1:8080, got 'localhost'",
    ),
    (
        "settings:\n  listen: ':8080'\n" + FEED,
        "2: settings.listen: expected host:port such as 127.0.0.1:8080, got ':8080'",
    ),
    (
        "settings:\n  listen: localhost:0\n" + FEED,
        "2: settings.listen: port must be a number from 1 to 65535, got '0'",
    ),
    (
        "settings:\n  listen: localhost:65536\n" + FEED,
        "2: settings.listen: port must be a number from 1 to 65535, got '65536'",
    ),
    (
        "settings:\n  listen: localhost:http\n" + FEED,
        "2: settings.listen: port must be a number from 1 to 65535, got 'http'",
    ),
    (
        "settings:\n  listen: '::1:8080'\n" + FEED,
        "2: settings.listen: write an IPv6 address in brackets, e.g. [::1]:8080, got '::1:8080'",
    ),
    (
        "settings:\n  listen: '[nope]:8080'\n" + FEED,
        "2: settings.listen: not an IPv6 address: '[nope]'",
    ),
    (
        "settings:\n  listen: 'my host:8080'\n" + FEED,
        "2: settings.listen: not a host name or address: 'my host'",
    ),
    (
        "settings:\n  base_url: ftp://x.example/\n" + FEED,
        "2: settings.base_url: not an http(s) URL: 'ftp://x.example/'",
    ),
    (
        "settings:\n  base_url: /feeds/\n" + FEED,
        "2: settings.base_url: not an http(s) URL: '/feeds/'",
    ),
    (
        "settings:\n  base_url: https://x.example/?a=1\n" + FEED,
        "2: settings.base_url: must not have a query or fragment: 'https://x.example/?a=1'",
    ),
    (
        "settings:\n  websub_hub: ftp://hub.example/\n" + FEED,
        "2: settings.websub_hub: not an http(s) URL: 'ftp://hub.example/'",
    ),
    (
        "settings:\n  websub_hub: https://u:pw@hub.example/\n" + FEED,
        "2: settings.websub_hub: must not hold a user name or password: it is published in"
        " every feed",
    ),
    # feeds
    ("feeds:\n", "1: feeds: no feeds configured: at least one is required"),
    ("feeds: []\n", "1: feeds: no feeds configured: at least one is required"),
    ("feeds: https://a.example/\n", "1: feeds: expected a list, got a string"),
    (
        FEED + "  - https://b.example/\n",
        "5: feeds[1]: expected a mapping with a url, got a string",
    ),
    (FEED + "  - name: B\n", "5: feeds[1].url: missing: every feed needs a url"),
    (
        FEED + "  - url: https://b.example/\n    title: B\n",
        "6: feeds[1].title: unknown key; expected one of url, name, tags, interval, auth, enabled,"
        " user_agent, headers, max_items_per_round",
    ),
    (
        FEED + "  - url: ftp://b.example/\n",
        "5: feeds[1].url: not an http(s) URL: 'ftp://b.example/'",
    ),
    (
        FEED + "  - url: b.example/feed\n",
        "5: feeds[1].url: not an http(s) URL: 'b.example/feed'",
    ),
    (
        FEED + "  - url: https:///feed\n",
        "5: feeds[1].url: not an http(s) URL: 'https:///feed'",
    ),
    (
        FEED + "  - url: https://b.example/a feed\n",
        "5: feeds[1].url: not an http(s) URL: 'https://b.example/a feed'",
    ),
    (
        FEED + "  - url: https://b.example:99999/\n",
        "5: feeds[1].url: not a valid http(s) URL: 'https://b.example:99999/'",
    ),
    (
        FEED + "  - url: [https://b.example/]\n",
        "5: feeds[1].url: expected an http(s) URL, got a list",
    ),
    (
        FEED + "  - url: HTTPS://A.Example/feed/\n",
        "5: feeds[1].url: the same URL as feeds[0].url on line 2",
    ),
    (
        FEED + "  - url: https://b.example/\n    name: A\n",
        "6: feeds[1].name: the same name as feeds[0].name on line 3",
    ),
    (
        FEED + "  - url: https://b.example/\n    name: ' '\n",
        "6: feeds[1].name: must not be empty",
    ),
    (
        FEED + "  - url: https://b.example/\n    name: 7\n",
        "6: feeds[1].name: expected a string, got an integer",
    ),
    (
        FEED + "  - url: https://b.example/\n    tags: news\n",
        "6: feeds[1].tags: expected a list, got a string",
    ),
    (
        FEED + "  - url: https://b.example/\n    tags: [ok, 'not ok']\n",
        "6: feeds[1].tags[1]: a tag may hold only letters, digits, '_' and '-', got 'not ok'",
    ),
    (
        FEED + "  - url: https://b.example/\n    tags:\n      - ok\n      - {a: 1}\n",
        "8: feeds[1].tags[1]: expected a string, got a mapping",
    ),
    (
        FEED + "  - url: https://b.example/\n    interval: 15\n",
        "6: feeds[1].interval: expected a duration with a unit (s, m, h or d), got 15; e.g. 15m",
    ),
    # topics
    ("topics: [a]\n" + FEED, "1: topics: expected a mapping of topic slugs, got a list"),
    (
        "topics:\n  North Korea: {}\n" + FEED,
        "2: topics.North Korea: a topic slug may hold only a-z, 0-9 and '-'",
    ),
    (
        "topics:\n  nk_2: {}\n" + FEED,
        "2: topics.nk_2: a topic slug may hold only a-z, 0-9 and '-'",
    ),
    (
        "topics:\n  2024: {}\n" + FEED,
        "2: topics.2024: a topic slug must be a string, got an integer; quote it",
    ),
    ("topics:\n  nk: [DPRK]\n" + FEED, "2: topics.nk: expected a mapping, got a list"),
    (
        "topics:\n  nk:\n    inclde: [DPRK]\n" + FEED,
        "3: topics.nk.inclde: unknown key; did you mean 'include'?",
    ),
    ("topics:\n  nk:\n    title: ''\n" + FEED, "3: topics.nk.title: must not be empty"),
    (
        "topics:\n  nk:\n    description: [a]\n" + FEED,
        "3: topics.nk.description: expected a string, got a list",
    ),
    (
        "topics:\n  nk:\n    include: DPRK\n" + FEED,
        "3: topics.nk.include: expected a list, got a string",
    ),
    (
        "topics:\n  nk:\n    include: [DPRK, 2024]\n" + FEED,
        "3: topics.nk.include[1]: expected a string, got an integer",
    ),
    (
        "topics:\n  nk:\n    include: [DPRK, '']\n" + FEED,
        "3: topics.nk.include[1]: empty term",
    ),
    (
        "topics:\n  north-korea:\n    include:\n"
        "      - DPRK\n      - Pyongyang\n      - Seoul\n      - /Kim Jong(/\n" + FEED,
        "7: topics.north-korea.include[3]: invalid regular expression: "
        "missing ), unterminated subpattern at position 8",
    ),
    (
        "topics:\n  nk:\n    exclude: ['/[/']\n" + FEED,
        "3: topics.nk.exclude[0]: invalid regular expression: "
        "unterminated character set at position 0",
    ),
    (
        "topics:\n  nk:\n    feeds: news\n" + FEED,
        "3: topics.nk.feeds: expected a list, got a string",
    ),
    (
        "topics:\n  nk:\n    feeds: [news, xyz]\n" + FEED,
        "3: topics.nk.feeds[1]: selects no feed: 'xyz' is no feed name or tag",
    ),
    (
        "topics:\n  nk:\n    feeds: []\n" + FEED,
        "3: topics.nk.feeds: selects no feed: the list is empty (leave `feeds` out to select all)",
    ),
    # YAML itself
    ("feeds: [\n", "2: yaml: expected the node content, but found '<stream end>'"),
    (
        "feeds:\n  - url: a\n - url: b\n",
        "3: yaml: expected <block end>, but found '<block sequence start>'",
    ),
    (
        "feeds:\n\t- url: a\n",
        "2: yaml: found character '\\t' that cannot start any token",
    ),
    ("a: \x01\n", "1: yaml: character U+0001: special characters are not allowed"),
    (FEED + "---\n" + FEED, "5: yaml: but found another document"),
    (FEED + "feeds: []\n", "5: yaml: duplicate key 'feeds' (first on line 1)"),
    (
        FEED + "  - url: https://b.example/\n    name: B\n    name: C\n",
        "7: yaml: duplicate key 'name' (first on line 6)",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_config_message(text, message):
    assert error_of(text) == "feeds.yaml:" + message


def test_error_names_the_file_as_given():
    assert error_of("feeds: []\n", "conf/../feeds.yaml").startswith("conf/../feeds.yaml:1: ")


def test_error_carries_its_parts():
    with pytest.raises(ConfigError) as info:
        parse_config("settings:\n  max_items: 0\n" + FEED, Path("f.yaml"))
    assert (info.value.file, info.value.line, info.value.where) == (
        "f.yaml",
        2,
        "settings.max_items",
    )


def test_first_problem_is_reported():
    text = "settings:\n  max_items: 0\n  interval: 5\n" + FEED
    assert error_of(text).startswith("feeds.yaml:2: settings.max_items:")


def test_null_optional_keys_mean_defaults():
    text = (
        "settings:\n  interval:\ntopics:\n  nk:\n    include:\n    feeds:\n"
        "feeds:\n  - url: https://a.example/\n    name:\n    tags:\n"
    )
    config = parse_config(text, Path("feeds.yaml"))
    assert config.settings.interval == timedelta(minutes=30)
    assert config.topics == (Topic(slug="nk", title="nk", line=4),)
    assert config.feeds[0].name is None and config.feeds[0].tags == ()


def test_topic_feeds_may_name_a_feed_or_a_tag():
    text = (
        "topics:\n  one:\n    feeds: [Outlet]\n  two:\n    feeds: [world, news]\n"
        "feeds:\n  - url: https://a.example/\n    name: Outlet\n    tags: [news]\n"
        "  - url: https://b.example/\n    tags: [world]\n"
    )
    config = parse_config(text, Path("feeds.yaml"))
    assert [(t.slug, t.feeds, t.line) for t in config.topics] == [
        ("one", ("Outlet",), 2),
        ("two", ("world", "news"), 4),
    ]


def test_topics_keep_file_order_and_anchors_work():
    text = (
        "topics:\n  b-topic: &t\n    include: [x]\n  a-topic: *t\n"
        "feeds:\n  - &f {url: 'https://a.example/'}\n  - {url: 'https://b.example/', tags: [t]}\n"
    )
    config = parse_config(text, Path("feeds.yaml"))
    assert [t.slug for t in config.topics] == ["b-topic", "a-topic"]
    assert [t.include[0].source for t in config.topics] == ["x", "x"]
    assert [f.line for f in config.feeds] == [6, 7]


def test_distinct_urls_are_not_duplicates():
    text = (
        "feeds:\n  - url: https://a.example/feed\n  - url: https://a.example/feed?page=2\n"
        "  - url: http://a.example/Feed\n"
        # two accounts: user names and passwords are case-sensitive
        "  - url: https://Reader:Secret@private.example/feed\n"
        "  - url: https://reader:secret@private.example/feed\n"
    )
    assert len(parse_config(text, Path("feeds.yaml")).feeds) == 5
    same_host = "feeds:\n  - url: https://u:p@A.example/f\n  - url: https://u:p@a.example/f/\n"
    assert "the same URL as" in error_of(same_host)


# --- load_config -----------------------------------------------------------------


def test_load_config_reads_the_file(tmp_path):
    path = tmp_path / "feeds.yaml"
    path.write_text(FEED, encoding="utf-8")
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.feeds[0].url == "https://a.example/feed"
    assert config.settings.database == tmp_path / "aggregator.db"


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line is None
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_load_config_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.line is None
    assert str(info.value).startswith(f"{tmp_path}: cannot read: ")


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "feeds.yaml"
    path.write_bytes(b"feeds:\n  - url: https://a.example/\n    name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 3  # the line of the first byte that is not UTF-8
    assert re.fullmatch(rf"{re.escape(str(path))}:3: not UTF-8 text: .+", str(info.value))


# --- libyaml and ruamel's own composer agree -------------------------------------

TRICKY = """\
settings:
  interval: 45m
  max_items: 0x10
topics:
  nk:
    title: "North Korea: 'news' & analysis"
    include: &terms [Pyongyang, "Kim Jong Un", no, 'yes']
    exclude:
      - >-
        folded
        text
  nk2:
    title: Again
    include: *terms
feeds:
  - &first
    url: https://a.example/feed
    interval: 2h
    tags: [nk]
  - <<: *first
    url: https://b.example/feed?x=1&y=2#frag
    name: |
      B  literal
"""


@pytest.mark.parametrize(
    "path", [DATA / "valid.yaml", Path(__file__).parents[1] / "feeds.yaml", None]
)
def test_the_libyaml_fast_path_reads_a_config_exactly_as_ruamels_own_composer(
    path: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aggregator.config as config_module

    text = path.read_text() if path else TRICKY
    where = path or Path("feeds.yaml")
    assert config_module.compose_fast(text) is not None  # the C extension is installed
    fast = parse_config(text, where)
    monkeypatch.setattr(config_module, "compose_fast", lambda text: None)
    assert parse_config(text, where) == fast


@pytest.mark.parametrize(
    "snippet",
    [
        FEED + "feeds:\n  - url: https://b.example/\n",  # duplicate key
        FEED + "topics:\n  nk:\n    title: [unclosed\n",  # libyaml rejects: ruamel words it
        FEED + "topics:\n  nk:\n    title: x\n    include: [1, 2]\n  nk2: 3\n",
        FEED + "topics:\n  nk:\n    include: [a, 2024-01-01]\n",
        # errors raised while constructing, after composing succeeded
        "feeds:\n  - <<: first\n    url: https://a.example/\n",
        FEED + "settings:\n  true: a\n  True: b\n",
        # a directive for YAML 1.1 (where 010 would be octal and no false) is refused
        "# feeds\n%YAML 1.1\n---\n" + FEED + "settings:\n  max_items: 010\n",
    ],
)
def test_errors_are_the_same_with_and_without_the_fast_path(
    snippet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aggregator.config as config_module

    fast = error_of(snippet)
    monkeypatch.setattr(config_module, "compose_fast", lambda text: None)
    assert error_of(snippet) == fast
    assert re.match(r"feeds\.yaml:\d+: ", fast)


def test_a_yaml_version_directive_is_refused_with_its_line() -> None:
    message = error_of("# feeds\n%YAML 1.1\n---\n" + FEED)
    assert message.startswith("feeds.yaml:2: yaml: a %YAML directive is not supported")
    # after a byte-order mark too (an editor on Windows writes one): it was read as 1.2 here
    # and as 1.1 (max_items 8) without libyaml
    message = error_of("\ufeff%YAML 1.1\n---\n" + FEED + "settings:\n  max_items: 010\n")
    assert message.startswith("feeds.yaml:1: yaml: a %YAML directive is not supported")


# --- auth: passwords kept outside feeds.yaml -------------------------------------


AUTH_FEED = "feeds:\n  - url: https://a.example/feed\n    auth:\n{auth}"


def test_auth_password_is_read_from_its_file(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    config_path = tmp_path / "feeds.yaml"
    config_path.write_text(
        AUTH_FEED.format(auth=f"      username: bob\n      password_file: {tmp_path}/pw\n")
    )
    (feed,) = load_config(config_path).feeds
    assert feed.auth is not None
    assert feed.auth.credentials().username == "bob"
    assert feed.auth.credentials().password == "s3cret"
    assert "s3cret" not in repr(feed)


def test_auth_password_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEED_PW", "from-env")
    config_path = tmp_path / "feeds.yaml"
    config_path.write_text(AUTH_FEED.format(auth="      {username: al, password_env: FEED_PW}\n"))
    (feed,) = load_config(config_path).feeds
    assert feed.auth is not None and feed.auth.password == "from-env"


@pytest.mark.parametrize(
    "auth, message",
    [
        ("      username: bob\n", "give exactly one of password_file or password_env"),
        ("      password_env: X\n", "feeds[0].auth.username: missing"),
        ("      {username: 'a:b', password_env: X}\n", "cannot hold ':'"),
        ("      {username: a, password_env: X, password: p}\n", "unknown key"),
        ("      {username: a, password_env: 'no such'}\n", "not an environment variable name"),
    ],
)
def test_invalid_auth(auth, message):
    assert message in error_of(AUTH_FEED.format(auth=auth))


def test_an_unreadable_password_file_is_a_config_error_with_its_line(tmp_path):
    config_path = tmp_path / "feeds.yaml"
    config_path.write_text(
        AUTH_FEED.format(auth="      username: bob\n      password_file: /nonexistent/pw\n")
    )
    with pytest.raises(ConfigError) as info:
        load_config(config_path)
    assert str(info.value).startswith(f"{config_path}:5: feeds[0].auth.password_file: cannot read")


def test_enabled_is_true_or_false_with_file_and_line() -> None:
    feed = "feeds:\n  - url: https://a.example/f\n    enabled: {}\n"
    assert parse_config(feed.format("false"), Path("feeds.yaml")).feeds[0].enabled is False
    assert parse_config(feed.format("true"), Path("feeds.yaml")).feeds[0].enabled is True
    with pytest.raises(ConfigError, match=r"feeds.yaml:3.*enabled.*true or false"):
        parse_config(feed.format('"no"'), Path("feeds.yaml"))
