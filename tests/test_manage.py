"""`aggregator add`, `remove` and `import` as a user runs them: main() in process against
real loopback servers (tests/feedserver.py), asserting feeds.yaml's bytes, exit codes and
messages. The pure parts (feedsfile, discover, opml) have table tests at the end."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from aggregator import cli, feedsfile
from aggregator.config import parse_config, tag_from_label
from aggregator.discover import Candidate, feed_links, usual_urls
from aggregator.feedsfile import EditError, NewFeed, append_feeds, remove_feed, yaml_scalar
from aggregator.opml import OPMLError, read_opml
from tests.feedserver import FeedServer

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Peninsula Watch</title><link>https://pw.example/</link>
<item><title>Talks resume</title><link>https://pw.example/talks</link></item>
</channel></rss>"""
ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Comments on Peninsula Watch</title>
<id>urn:x</id><updated>2024-01-01T00:00:00Z</updated>
<entry><title>Re: talks</title><id>urn:y</id><updated>2024-01-01T00:00:00Z</updated></entry>
</feed>"""
HTML = "text/html; charset=utf-8"

COMMENTED = """\
# My feeds — keep this comment
settings:
  listen: ""          # no server
  database: agg.db

topics:
  korea:
    title: Korea
    feeds: [news]     # by tag

feeds:
  # --- news ---
  - url: https://one.example/feed   # the first
    name: One
    tags: [news]

  # a note about two
  - url: https://two.example/rss.xml
    name: Two
    tags:
      - news
      - asia
  # trailing comment of the list

# end of file
"""


pytestmark = pytest.mark.usefixtures("hermetic")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        assert isinstance(exit_.code, int)
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def config_file(tmp_path: Path, text: str = COMMENTED) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def without(text: str, lines: list[str]) -> str:
    """`text` minus the given lines (each must be there, whole)."""
    kept = text.splitlines(keepends=True)
    for line in lines:
        kept.remove(line + "\n")
    return "".join(kept)


def inserted(original: str, text: str) -> list[str]:
    """The lines `text` has beyond `original`, which must be one block inserted into it
    with every other line (and byte) of `original` as it was."""
    before, after = original.splitlines(keepends=True), text.splitlines(keepends=True)
    start = next(
        (i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), len(before)
    )
    count = len(after) - len(before)
    assert count > 0
    assert after[:start] + after[start + count :] == before
    return after[start : start + count]


def feeds_of(path: Path) -> list[tuple[str, str | None, tuple[str, ...]]]:
    config = parse_config(path.read_text(encoding="utf-8"), path)
    return [(feed.url, feed.name, feed.tags) for feed in config.feeds]


def page(*links: tuple[str, str, str], base: str | None = None) -> bytes:
    head = f'<base href="{base}">' if base else ""
    head += "".join(
        f'<link rel="alternate" type="{kind}" href="{href}" title="{title}">'
        for kind, href, title in links
    )
    return f"<!doctype html><html><head>{head}</head><body><p>Hello</p></body></html>".encode()


def test_help_names_the_commands_and_their_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("add", "remove", "import"):
        assert f"    {command} " in out
    code, out, _ = run(capsys, "add", "--help")
    assert code == 0 and "--name" in out and "--tag" in out and "--pick K" in out
    code, _, err = run(capsys, "add", "https://a.example/", "--pick", "0")
    assert code == 2 and "'0': a number from 1" in err


# --- add -------------------------------------------------------------------------------


def test_add_a_page_with_one_advertised_feed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set(
        "/news/", page(("application/rss+xml", "../feeds/main.xml", "Main")), content_type=HTML
    )
    feed_server.set("/feeds/main.xml", RSS)
    path = config_file(tmp_path)
    code, out, err = run(capsys, "-c", str(path), "add", feed_server.url("/news/"), "--tag", "news")
    assert code == 0, err
    url = feed_server.url("/feeds/main.xml")
    assert f"added {url} (Peninsula Watch) to {path}" in out
    # right after the last entry, indented as the entries are, a blank line between as
    # between them; every other byte as it was
    assert inserted(COMMENTED, path.read_text()) == [
        "\n",
        f"  - url: {url}\n",
        "    tags: [news]\n",
    ]
    assert "      - asia\n\n  - url:" in path.read_text()
    assert feeds_of(path)[-1] == (url, None, ("news",))


def test_add_lists_several_feeds_and_takes_the_first_or_the_picked_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    links = (
        ("application/rss+xml", "/feed/", "Site » Feed"),
        ("application/atom+xml", "/comments/feed/", "Site » Comments Feed"),
        ("application/json", "/wp-json/wp/v2/pages/2", "JSON"),
    )
    feed_server.set("/", page(*links), content_type=HTML)
    feed_server.set("/feed/", RSS)
    feed_server.set("/comments/feed/", ATOM, content_type="application/atom+xml")
    path = config_file(tmp_path)
    code, out, _ = run(capsys, "-c", str(path), "add", feed_server.url("/"), "--name", "PW")
    assert code == 0
    assert "advertises 3 feeds:" in out
    assert f"  1. {feed_server.url('/feed/')} (Site » Feed)" in out
    assert f"  2. {feed_server.url('/comments/feed/')} (Site » Comments Feed)" in out
    assert "taking 1, the first; choose another with --pick K" in out
    assert feeds_of(path)[-1] == (feed_server.url("/feed/"), "PW", ())

    code, out, _ = run(capsys, "-c", str(path), "add", feed_server.url("/"), "--pick", "2")
    assert code == 0
    assert "taking 1" not in out
    assert feeds_of(path)[-1] == (feed_server.url("/comments/feed/"), None, ())

    before = path.read_text()
    code, _, err = run(capsys, "-c", str(path), "add", feed_server.url("/"), "--pick", "4")
    assert code == 1
    assert "--pick 4: found 3 feeds, so --pick takes 1 to 3" in err
    assert path.read_text() == before


def test_add_a_page_advertising_nothing_tries_the_usual_paths(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/blog/post-1", page(), content_type=HTML)
    feed_server.redirect("/feed", "/feed/")  # WordPress does so
    feed_server.set("/feed/", RSS)
    path = config_file(tmp_path)
    code, out, err = run(capsys, "-c", str(path), "add", feed_server.url("/blog/post-1"))
    assert code == 0, err
    assert f"found a feed at {feed_server.url('/feed')} (the page advertises none)" in out
    # the permanent redirect's target is what goes into the file
    assert feeds_of(path)[-1] == (feed_server.url("/feed/"), None, ())


def test_add_a_feed_url(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/atom", ATOM, content_type="application/atom+xml")
    path = config_file(tmp_path)
    code, out, _ = run(capsys, "-c", str(path), "add", feed_server.url("/atom"), "--tag", "x")
    assert code == 0
    assert "(Comments on Peninsula Watch)" in out
    assert feeds_of(path)[-1] == (feed_server.url("/atom"), None, ("x",))
    assert [r.path for r in feed_server.requests] == ["/atom"]


def test_add_a_name_yaml_cannot_hold_raw_leaves_a_feeds_yaml_that_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/atom", ATOM, content_type="application/atom+xml")
    path = config_file(tmp_path)
    # a zero-width no-break space, written raw inside quotes, reads back as nothing
    name = "Watch\ufeffend"
    code, _, err = run(capsys, "-c", str(path), "add", feed_server.url("/atom"), "--name", name)
    assert code == 0, err
    assert feeds_of(path)[-1] == (feed_server.url("/atom"), name, ())
    # a non-character no value may hold is refused by name, and the file is left alone
    feed_server.set("/x", RSS, content_type="application/rss+xml")
    before = path.read_bytes()
    code, _, err = run(capsys, "-c", str(path), "add", feed_server.url("/x"), "--name", "A\ufffe")
    assert code == 1 and "U+FFFE (a non-character) is not allowed" in err
    assert path.read_bytes() == before


@pytest.mark.parametrize("feeds", ["feeds: []\n", ""], ids=["empty-list", "no-feeds-key"])
def test_add_keeps_the_configs_limits_before_it_has_any_feed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer, feeds: str
) -> None:
    """A file with settings but no feed yet: its max_feed_size bounds `add`'s requests."""
    big = ATOM.replace(b"</feed>", b"<!--" + b"x" * 4096 + b"--></feed>")
    feed_server.set("/atom", big, content_type="application/atom+xml")
    text = "settings:\n  max_feed_size: 2KB\n" + feeds
    path = config_file(tmp_path, text)
    code, _, err = run(capsys, "-c", str(path), "add", feed_server.url("/atom"))
    assert code == 1
    assert "larger than 2 KB" in err
    assert path.read_text(encoding="utf-8") == text


def test_a_page_without_any_feed_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/", page(), content_type=HTML)
    path = config_file(tmp_path)
    code, out, err = run(capsys, "-c", str(path), "add", feed_server.url("/"))
    assert code == 1
    assert f"aggregator: no feed found at {feed_server.url('/')}" in err
    assert "/feed, /rss, /atom.xml, /index.xml, /feed.json" in err
    assert path.read_text() == COMMENTED


def test_a_url_that_cannot_be_fetched_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    path = config_file(tmp_path)
    code, _, err = run(capsys, "-c", str(path), "add", feed_server.url("/missing"))
    assert code == 1
    assert f"cannot fetch {feed_server.url('/missing')}: HTTP 404" in err
    assert path.read_text() == COMMENTED


def test_already_present_feeds_change_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/feed.xml", RSS)
    feed_server.redirect("/latest", "/feed.xml", status=302)
    feed_server.set("/", page(("application/rss+xml", "/feed.xml", "Main")), content_type=HTML)
    path = config_file(tmp_path)
    code, _, err = run(capsys, "-c", str(path), "add", feed_server.url("/feed.xml"))
    assert code == 0, err
    text = path.read_text()
    line = text.splitlines().index(f"  - url: {feed_server.url('/feed.xml')}") + 1

    # the same URL in another spelling: refused before any request
    feed_server.clear()
    spelling = feed_server.url("/feed.xml/").replace("http://127.0.0.1", "HTTPS://127.0.0.1")
    code, _, err = run(capsys, "-c", str(path), "add", spelling)
    assert code == 1
    assert f"already in {path}: " in err and f"is feeds[2] {feed_server.url('/feed.xml')}" in err
    assert f"line {line}" in err
    assert feed_server.requests == []
    # a URL that redirects to it, and a page that advertises it
    for url in (feed_server.url("/latest"), feed_server.url("/")):
        code, _, err = run(capsys, "-c", str(path), "add", url)
        assert code == 1, url
        assert "already in" in err
        assert path.read_text() == text


def test_add_refuses_a_name_taken_and_a_bad_tag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    path = config_file(tmp_path)
    code, _, err = run(capsys, "-c", str(path), "add", feed_server.url("/x"), "--name", "Two")
    assert code == 1
    assert "the name 'Two' is taken by feeds[1]" in err
    assert feed_server.requests == []
    code, _, err = run(capsys, "-c", str(path), "add", feed_server.url("/x"), "--tag", "a b")
    assert code == 2
    assert "a tag may hold only letters, digits" in err
    code, _, err = run(capsys, "-c", str(path), "add", "ftp://example.org/feed")
    assert code == 1 and "not an http(s) URL" in err
    assert path.read_text() == COMMENTED


def test_add_creates_a_missing_feeds_yaml_and_refuses_an_invalid_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/rss", RSS)
    path = tmp_path / "feeds.yaml"
    code, out, _ = run(capsys, "-c", str(path), "add", feed_server.url("/rss"))
    assert code == 0
    assert out.endswith("(created)\n")
    assert feeds_of(path) == [(feed_server.url("/rss"), None, ())]
    assert path.read_text().startswith("# aggregator configuration")

    broken = "feeds:\n  - url: https://a.example/feed\n    interval: 5\n"
    path.write_text(broken)
    code, _, err = run(capsys, "-c", str(path), "add", feed_server.url("/rss"))
    assert code == 2
    assert f"{path}:3: feeds[0].interval: expected a duration with a unit" in err
    assert path.read_text() == broken


def test_add_through_a_symlink_keeps_the_link_and_the_mode(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    feed_server.set("/rss", RSS)
    real = config_file(tmp_path)
    real.chmod(0o600)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    code, _, err = run(capsys, "-c", str(link), "add", feed_server.url("/rss"))
    assert code == 0, err
    assert link.is_symlink()
    assert feeds_of(real)[-1][0] == feed_server.url("/rss")
    assert real.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --- remove ----------------------------------------------------------------------------


def test_remove_by_url_or_name_keeps_every_other_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config_file(tmp_path)
    code, out, err = run(capsys, "-c", str(path), "remove", "http://TWO.example/rss.xml/")
    assert code == 0, err
    assert f"removed feeds[1] https://two.example/rss.xml (Two), line 18 from {path}" in out
    assert "kept the comment above it (line 17): edit it if it was about this feed" in out
    entry = [
        "  - url: https://two.example/rss.xml",
        "    name: Two",
        "    tags:",
        "      - news",
        "      - asia",
    ]
    assert path.read_text() == without(COMMENTED, entry)

    path = config_file(tmp_path)
    code, out, _ = run(capsys, "-c", str(path), "remove", "one")  # a name, in any case
    assert code == 0
    entry = ["  - url: https://one.example/feed   # the first", "    name: One", "    tags: [news]"]
    assert path.read_text() == without(COMMENTED, entry)


def test_remove_what_is_not_there_or_must_stay(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config_file(tmp_path)
    code, _, err = run(capsys, "-c", str(path), "remove", "Three")
    assert code == 1
    assert f"no feed with the URL or name 'Three' in {path}" in err

    single = "feeds:\n  - url: https://a.example/feed\n"
    path.write_text(single)
    code, _, err = run(capsys, "-c", str(path), "remove", "https://a.example/feed")
    assert code == 1
    assert "not changed: the result would be invalid" in err and "no feeds configured" in err
    assert path.read_text() == single

    named = "topics:\n  t:\n    feeds: [A]\nfeeds:\n  - url: https://a.example/f\n    name: A\n"
    named += "  - url: https://b.example/f\n"
    path.write_text(named)
    code, _, err = run(capsys, "-c", str(path), "remove", "A")
    assert code == 1
    assert "topics.t.feeds[0]: selects no feed: 'A'" in err
    assert path.read_text() == named

    code, _, err = run(capsys, "-c", str(tmp_path / "none.yaml"), "remove", "A")
    assert code == 2 and "none.yaml: cannot read" in err


def test_edits_keep_the_files_crlf_line_endings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A feeds.yaml saved on Windows: every line keeps its CRLF, the new ones get one."""
    text = (
        "# saved on Windows\r\n"
        "feeds:\r\n"
        "  - url: https://a.example/f\r\n"
        "  - url: https://b.example/f  # b\r\n"
        "    name: B\r\n"
        "settings:\r\n"
        "  listen: ''\r\n"
    )
    path = tmp_path / "feeds.yaml"
    path.write_bytes(text.encode())
    code, _, err = run(capsys, "-c", str(path), "remove", "B")
    assert code == 0, err
    removed = text.replace("  - url: https://b.example/f  # b\r\n    name: B\r\n", "")
    assert path.read_bytes() == removed.encode()

    (tmp_path / "x.opml").write_text(
        '<opml version="2.0"><body><outline text="N" xmlUrl="https://n.example/f"/></body></opml>'
    )
    code, _, err = run(capsys, "-c", str(path), "import", "x.opml")
    assert code == 0, err
    added = removed.replace(
        "/a.example/f\r\n", "/a.example/f\r\n  - url: https://n.example/f\r\n    name: N\r\n"
    )
    assert path.read_bytes() == added.encode()


def test_edits_take_a_file_with_tabs_before_its_comments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Comments lined up with tabs: `check` accepts the file, so `remove` and `import` edit
    it too."""
    text = (
        "settings:\n"
        "  listen: ''\t\t# no server\n"
        "feeds:\t# all of them\n"
        "  - url: https://a.example/f\t# a\n"
        "  - url: https://b.example/f\n"
        "    name: B\t\t# b\n"
    )
    path = config_file(tmp_path, text)
    code, _, err = run(capsys, "-c", str(path), "check")
    assert code == 0, err
    code, _, err = run(capsys, "-c", str(path), "remove", "B")
    assert code == 0, err
    removed = without(text, ["  - url: https://b.example/f", "    name: B\t\t# b"])
    assert path.read_text() == removed
    (tmp_path / "x.opml").write_text(
        '<opml version="2.0"><body><outline text="N" xmlUrl="https://n.example/f"/></body></opml>'
    )
    code, _, err = run(capsys, "-c", str(path), "import", "x.opml")
    assert code == 0, err
    assert inserted(removed, path.read_text()) == [
        "  - url: https://n.example/f\n",
        "    name: N\n",
    ]
    assert feeds_of(path) == [
        ("https://a.example/f", None, ()),
        ("https://n.example/f", "N", ()),
    ]


# --- import ----------------------------------------------------------------------------

OPML = """<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <head><title>Miniflux</title></head>
  <body>
    <outline text="Tech &amp; Science" title="Tech &amp; Science">
      <outline type="rss" text="Ars" title="Ars Technica" xmlUrl="https://ars.example/feed"/>
      <outline text="Space">
        <outline type="rss" text="NASA" xmlUrl="https://nasa.example/rss"/>
      </outline>
    </outline>
    <outline text="Nouvelles générales">
      <outline type="rss" text="Le Monde" xmlUrl="https://lemonde.example/rss"/>
      <outline type="rss" text="Ars again" xmlUrl="http://ARS.example/feed/"/>
    </outline>
    <outline text="日本">
      <outline type="rss" text="NHK" xmlUrl="https://nhk.example/rss"/>
    </outline>
    <outline type="rss" text="One again" xmlUrl="https://one.example/feed?utm_source=x"/>
    <outline type="rss" text="Gopher" xmlUrl="gopher://old.example/feed"/>
    <outline type="rss" text="Two" xmlUrl="https://another.example/feed"/>
    <outline type="rss" text="https://plain.example/atom" xmlUrl="https://plain.example/atom"/>
    <outline text="empty folder"/>
    <outline type="rss" text="Lost"/>
  </body>
</opml>
"""


def test_import_adds_feeds_with_their_folders_as_tags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config_file(tmp_path)
    (tmp_path / "export.opml").write_text(OPML, encoding="utf-8")
    code, out, err = run(capsys, "-c", str(path), "import", "export.opml", "--tag", "imported")
    assert code == 0, err
    assert out.splitlines()[-1] == "added 6, skipped 2 (already present), invalid 2"
    assert "invalid: 'Gopher': not an http(s) URL: 'gopher://old.example/feed'" in err
    assert "invalid: 'Lost': no xmlUrl (its address)" in err
    assert "note: the name 'Two' is taken; https://another.example/feed added unnamed" in err
    assert "note: the folder or category '日本' gives no tag" in out
    assert feeds_of(path) == [
        ("https://one.example/feed", "One", ("news",)),
        ("https://two.example/rss.xml", "Two", ("news", "asia")),
        # listed twice, in two folders: once, with both folders' tags
        (
            "https://ars.example/feed",
            "Ars Technica",
            ("Tech-Science", "imported", "Nouvelles-generales"),
        ),
        ("https://nasa.example/rss", "NASA", ("Tech-Science", "Space", "imported")),
        ("https://lemonde.example/rss", "Le Monde", ("Nouvelles-generales", "imported")),
        ("https://nhk.example/rss", "NHK", ("imported",)),
        ("https://another.example/feed", None, ("imported",)),
        ("https://plain.example/atom", None, ("imported",)),
    ]
    block = inserted(COMMENTED, path.read_text())
    assert block[:3] == [
        "\n",
        "  - url: https://ars.example/feed\n",
        "    name: Ars Technica\n",
    ]

    # importing again adds nothing and leaves the file alone
    before = path.read_bytes()
    code, out, _ = run(capsys, "-c", str(path), "import", "export.opml")
    assert code == 0
    assert out.splitlines()[-1] == "added 0, skipped 8 (already present), invalid 2"
    assert path.read_bytes() == before


def test_import_shows_an_outline_as_one_line_without_its_credentials(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config_file(tmp_path)
    (tmp_path / "x.opml").write_text(
        '<opml version="2.0"><body>'
        '<outline type="rss" xmlUrl="ftp://reader:s3cret@files.example/feed"/>'
        '<outline type="rss" text="Line one&#10;&#x202e;line two" xmlUrl="gopher://g.example/"/>'
        f'<outline type="rss" text="{"Long " * 100}" xmlUrl="https://long.example/feed"/>'
        "</body></opml>"
    )
    code, out, err = run(capsys, "-c", str(path), "import", "x.opml")
    assert code == 0, out + err
    shown = out + err
    assert "s3cret" not in shown and "ftp://***@files.example/feed" in shown
    assert "\u202e" not in shown and "Line one line two" in shown
    assert len(feeds_of(path)[-1][1] or "") <= 200


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"this is not xml", "not well-formed XML"),
        (b"", "not well-formed XML"),
        (b"<rss version='2.0'><channel/></rss>", "the root element is <rss>, not <opml>"),
        (b"<opml version='2.0'><head/></opml>", "no <body> in <opml>"),
        (b"<opml><body><outline xmlUrl='https://a.example/f'></body></opml>", "not well-formed"),
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            b"<opml><body><outline text='&lol2;' xmlUrl='https://a.example/f'/></body></opml>",
            "has a DOCTYPE with declarations",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<opml><body><outline text='&x;' xmlUrl='https://a.example/f'/></body></opml>",
            "references external entity 'x'",
        ),
    ],
)
def test_malformed_opml_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, document: bytes, problem: str
) -> None:
    path = config_file(tmp_path)
    (tmp_path / "bad.opml").write_bytes(document)
    code, out, err = run(capsys, "-c", str(path), "import", "bad.opml")
    assert code == 1
    assert err.startswith("aggregator: bad.opml: not an OPML subscription list: ")
    assert problem in err
    assert path.read_text() == COMMENTED


@pytest.mark.parametrize(
    "doctype", ["<!DOCTYPE opml>", '<!DOCTYPE opml SYSTEM "http://example.org/opml.dtd">']
)
def test_a_doctype_that_declares_nothing_is_read(doctype: str) -> None:
    document = f"<?xml version='1.0'?>{doctype}<opml><body>"
    document += "<outline text='A' xmlUrl='https://a.example/f'/></body></opml>"
    [outline] = read_opml(document.encode())
    assert (outline.url, outline.label) == ("https://a.example/f", "A")


def test_import_into_no_feeds_yaml_creates_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "export.opml").write_text(OPML, encoding="utf-8")
    code, out, _ = run(capsys, "import", "export.opml")  # ./feeds.yaml, the default
    assert code == 0
    assert out.splitlines()[-1] == "added 7, skipped 1 (already present), invalid 2"
    assert len(feeds_of(tmp_path / "feeds.yaml")) == 7
    code, out, _ = run(capsys, "check")
    assert code == 0 and "ok: 7 feeds" in out


def test_export_then_import_gives_the_same_feeds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    exported = tmp_path / "a"
    exported.mkdir()
    source = config_file(
        exported,
        'settings: {listen: ""}\n'
        "feeds:\n"
        "  - url: https://one.example/feed\n    name: One\n    tags: [news, Asia_Pacific]\n"
        "  - url: https://two.example/rss?page=1&lang=en\n    name: 'Two: the \"second\"'\n"
        "  - url: http://three.example/atom.xml\n    tags: [x-y]\n",
    )
    code, _, err = run(capsys, "-c", str(source), "build")
    assert code == 0, err
    opml_file = exported / "public" / "feeds.opml"
    imported = tmp_path / "b" / "feeds.yaml"
    imported.parent.mkdir()
    code, out, err = run(capsys, "-c", str(imported), "import", str(opml_file))
    assert code == 0, err
    assert out.splitlines()[-1] == "added 3, skipped 0 (already present), invalid 0"
    assert feeds_of(imported) == feeds_of(source)


def test_import_into_a_file_with_a_byte_order_mark_and_an_empty_list(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Notepad starts a UTF-8 file with a byte-order mark: `feeds: []` on its first line
    becomes the list, the mark kept."""
    text = "\ufefffeeds: []  # none yet\nsettings:\n  listen: ''\n"
    path = config_file(tmp_path, text)
    (tmp_path / "x.opml").write_text(
        '<opml version="2.0"><body><outline text="N" xmlUrl="https://n.example/f"/></body></opml>'
    )
    code, out, err = run(capsys, "-c", str(path), "import", "x.opml")
    assert code == 0, err
    assert out.splitlines()[-1] == "added 1, skipped 0 (already present), invalid 0"
    assert path.read_text(encoding="utf-8") == (
        "\ufefffeeds:  # none yet\n  - url: https://n.example/f\n    name: N\n"
        "settings:\n  listen: ''\n"
    )


def test_import_strips_a_name_cut_before_a_space(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A title cut at 200 characters just before a space is the name the config loader
    reads (stripped), so it is known as taken for the next title, not added twice."""
    long = "x" * 199
    path = config_file(tmp_path)
    (tmp_path / "x.opml").write_text(
        f'<opml version="2.0"><body><outline text="{long} y" xmlUrl="https://n.example/f"/>'
        f'<outline text="{long}" xmlUrl="https://m.example/f"/></body></opml>'
    )
    code, out, err = run(capsys, "-c", str(path), "import", "x.opml")
    assert code == 0, err
    assert f"note: the name '{long}' is taken; https://m.example/f added unnamed" in err
    assert feeds_of(path)[-2:] == [
        ("https://n.example/f", long, ()),
        ("https://m.example/f", None, ()),
    ]


# --- feeds.yaml as text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", "feeds:\n  - url: https://n.example/f\n"),
        ("# only a comment", "# only a comment\nfeeds:\n  - url: https://n.example/f\n"),
        ("settings: {}\n", "settings: {}\nfeeds:\n  - url: https://n.example/f\n"),
        ("feeds:\n", "feeds:\n  - url: https://n.example/f\n"),
        ("feeds: []  # none yet\n", "feeds:  # none yet\n  - url: https://n.example/f\n"),
        ("feeds: null\nx: 1\n", "feeds:\n  - url: https://n.example/f\nx: 1\n"),
        (
            "feeds:\n- url: https://a.example/f\n  name: A",
            "feeds:\n- url: https://a.example/f\n  name: A\n- url: https://n.example/f\n",
        ),
        (
            "feeds:\r\n    -   url: https://a.example/f\r\n",
            "feeds:\r\n    -   url: https://a.example/f\r\n    -   url: https://n.example/f\r\n",
        ),
        (
            "feeds:\n  -\n    url: https://a.example/f\n    note: |\n      text\n\n# end\n",
            "feeds:\n  -\n    url: https://a.example/f\n    note: |\n      text\n"
            "  - url: https://n.example/f\n\n# end\n",
        ),
        (
            "feeds:\n  - {url: https://a.example/f,\n     name: A}\n  - url: https://b.example/f\n"
            "    name:\ntopics: {}\n",
            "feeds:\n  - {url: https://a.example/f,\n     name: A}\n  - url: https://b.example/f\n"
            "    name:\n  - url: https://n.example/f\ntopics: {}\n",
        ),
    ],
)
def test_append_keeps_the_file_and_follows_its_layout(before: str, after: str) -> None:
    assert append_feeds(before, [NewFeed("https://n.example/f")]) == after


def test_append_refuses_a_flow_list() -> None:
    with pytest.raises(EditError, match=r"\[flow, list\]"):
        append_feeds("feeds: [{url: https://a.example/f}]\n", [NewFeed("https://n.example/f")])


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("\ufefffeeds: []\n", "\ufefffeeds:\n  - url: https://n.example/f\n"),
        ("\ufefffeeds: null  # x\r\n", "\ufefffeeds:  # x\r\n  - url: https://n.example/f\r\n"),
        ("\ufeff", "\ufefffeeds:\n  - url: https://n.example/f\n"),
        (
            "---\nsettings: {}\n... # end\n",
            "---\nsettings: {}\nfeeds:\n  - url: https://n.example/f\n... # end\n",
        ),
        (
            "settings: {}\r\n...\r\n",
            "settings: {}\r\nfeeds:\r\n  - url: https://n.example/f\r\n...\r\n",
        ),
        (
            "  settings:\n    listen: ''\n",
            "  settings:\n    listen: ''\n  feeds:\n    - url: https://n.example/f\n",
        ),
    ],
    ids=["bom-empty-list", "bom-null", "bom-only", "document-end", "crlf", "indented-top-level"],
)
def test_append_where_the_composers_marks_need_care(before: str, after: str) -> None:
    """A byte-order mark the composer's columns do not count; a new `feeds:` inside the
    document (before its `...`) and at the top level's own indentation."""
    result = append_feeds(before, [NewFeed("https://n.example/f")])
    assert result == after
    assert [feed.url for feed in parse_config(result, Path("feeds.yaml")).feeds] == [
        "https://n.example/f"
    ]


def test_remove_takes_the_entry_with_its_own_comments() -> None:
    text = (
        "feeds:\n"
        "  - url: https://a.example/f\n"
        "  # about b\n"
        "  - url: https://b.example/f  # b's line\n"
        "    # between b's keys\n"
        "    name: B\n"
        "  - url: https://c.example/f\n"
    )
    removed = remove_feed(text, 1)
    assert removed.text == (
        "feeds:\n  - url: https://a.example/f\n  # about b\n  - url: https://c.example/f\n"
    )
    assert removed.kept_comment_lines == (3,)


def test_remove_from_a_list_apart_by_blank_lines_keeps_one_blank_line_between() -> None:
    text = "feeds:\n  - url: https://a.example/f\n\n  - url: https://b.example/f\n\n"
    text += "  - url: https://c.example/f\n\n# end\n"
    assert remove_feed(text, 1).text == (
        "feeds:\n  - url: https://a.example/f\n\n  - url: https://c.example/f\n\n# end\n"
    )
    assert remove_feed(text, 2).text == (
        "feeds:\n  - url: https://a.example/f\n\n  - url: https://b.example/f\n\n# end\n"
    )


@given(st.text(min_size=1, max_size=30))
def test_yaml_scalar_reads_back_as_the_same_string(value: str) -> None:
    loaded = YAML(typ="rt").load(f"key: {yaml_scalar(value)}\n")
    assert loaded["key"] == value


_NAMES = st.one_of(
    st.none(),
    st.sampled_from(["A", "yes", "~", "a: b", "#1", "- x", "😀 Ünï", "שלום", "'q'", "x #y", "&a"]),
)


@st.composite
def feeds_yaml_layouts(draw: st.DrawFn) -> str:
    """A hand-written feeds.yaml: line endings, a byte-order mark, `---`/`...`, the list's
    indentation and dash style, names and tags, comments, blank lines, key order."""
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    dash = draw(st.sampled_from([0, 1, 2, 4]))
    gap = draw(st.sampled_from([1, 3, None]))  # None: the dash alone on its line
    spaced = draw(st.booleans())
    body = ["feeds:" + draw(st.sampled_from(["", "  # the list"]))]
    for i in range(draw(st.integers(1, 3))):
        fields = [f"url: https://f{i}.example/x"]
        name = draw(_NAMES)
        if name is not None:
            fields.append(f"name: {yaml_scalar(f'{name} {i}')}")
        if draw(st.booleans()):
            fields.append("tags: [t, u]")
        if draw(st.booleans()):
            fields[draw(st.integers(0, len(fields) - 1))] += "  # note"
        if gap is None:
            lines = [" " * dash + "-"] + [" " * (dash + 2) + field for field in fields]
        else:
            lines = [" " * dash + "-" + " " * gap + fields[0]]
            lines += [" " * (dash + 1 + gap) + field for field in fields[1:]]
        if draw(st.booleans()):
            lines.insert(0, " " * dash + f"# about {i}")
        body += [""] * (spaced and i > 0) + lines
    if draw(st.booleans()):
        body.append(" " * dash + "# end of the list")
    other = ["settings:", "  listen: ''"]
    document = other + body if draw(st.booleans()) else body + other
    text = draw(st.sampled_from(["", "\ufeff"])) + draw(st.sampled_from(["", "---" + nl]))
    text += nl.join(document)
    if draw(st.booleans()):
        text += nl + draw(st.sampled_from(["", "..." + nl]))
    return text


@settings(max_examples=60, deadline=None)
@given(feeds_yaml_layouts(), _NAMES, st.lists(st.sampled_from(["a", "1", "yes"]), unique=True))
def test_edits_of_any_layout_keep_the_file_and_the_other_feeds(
    text: str, name: str | None, tags: list[str]
) -> None:
    path = Path("feeds.yaml")

    def feeds(text: str) -> list[tuple[str, str | None, tuple[str, ...]]]:
        return [(feed.url, feed.name, feed.tags) for feed in parse_config(text, path).feeds]

    def content(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip()]

    before = feeds(text)
    new = NewFeed("https://new.example/f", name, tuple(tags))
    added = append_feeds(text, [new])
    assert feeds(added) == [*before, (new.url, name, new.tags)]
    rest = iter(added.splitlines(keepends=True))
    assert all(
        line.rstrip("\r\n") in (x.rstrip("\r\n") for x in rest) for line in text.splitlines()
    )
    assert content(remove_feed(added, len(before)).text) == content(text)
    for index in range(len(before) if len(before) > 1 else 0):
        removed = remove_feed(text, index).text
        assert feeds(removed) == before[:index] + before[index + 1 :]


@given(st.from_regex(feedsfile._PLAIN_SAFE, fullmatch=True))
def test_a_scalar_written_plain_reads_back_as_the_same_string(value: str) -> None:
    # the values the plain-scalar test is asked about, with the loader's own types
    written = yaml_scalar(value)
    assert YAML(typ="rt").load(f"key: {written}\n")["key"] == value
    if written == value:  # and read by the config loader as this string, not a number
        text = f"feeds:\n  - url: https://a.example/\n    name: {written}\n"
        assert parse_config(text, Path("feeds.yaml")).feeds[0].name == value


def test_yaml_scalar_is_plain_when_it_can_be() -> None:
    assert yaml_scalar("https://example.org/feed?a=1&b=2") == "https://example.org/feed?a=1&b=2"
    assert yaml_scalar("Daily NK") == "Daily NK"
    assert yaml_scalar("Le Monde diplomatique") == "Le Monde diplomatique"
    assert yaml_scalar("null") == '"null"'
    assert yaml_scalar("2024") == '"2024"'
    assert yaml_scalar("News: World") == '"News: World"'
    assert yaml_scalar("#1 blog") == '"#1 blog"'


# --- discovery -----------------------------------------------------------------------------


def test_feed_links_resolves_and_orders_the_advertised_feeds() -> None:
    html = page(
        ("application/json", "/wp-json/wp/v2/pages/2", "REST"),
        ("application/rss+xml", "feed/", "Main"),
        ("application/atom+xml", "//cdn.example/atom.xml", "Atom"),
        ("application/rss+xml", "https://site.example/blog/feed", "Twice"),
        ("application/feed+json", "javascript:alert(1)", "Script"),
        ("text/css", "/style.css", "CSS"),
        base="https://site.example/blog/",
    )
    assert feed_links(html, "https://site.example/blog/post?id=3") == [
        Candidate("https://site.example/blog/feed/", "Main", "application/rss+xml"),
        Candidate("https://cdn.example/atom.xml", "Atom", "application/atom+xml"),
        Candidate("https://site.example/wp-json/wp/v2/pages/2", "REST", "application/json"),
    ]


@pytest.mark.parametrize(
    "html",
    [
        b"",
        b"\x00\x01\x02",
        b"<html><body><a rel='alternate' type='application/rss+xml' href='/x'>x</a></body>",
        b'<link rel="stylesheet alternate" type="application/rss+xml">',
    ],
)
def test_feed_links_finds_nothing_where_there_is_nothing(html: bytes) -> None:
    assert feed_links(html, "https://site.example/") == []


def test_feed_links_takes_rel_and_type_in_any_case_and_relative_to_the_page() -> None:
    html = b'<LINK REL="Alternate" TYPE="Application/RSS+XML; charset=utf-8" HREF=" rss.xml ">'
    assert feed_links(html, "https://s.example/a/b") == [
        Candidate("https://s.example/a/rss.xml", "", "application/rss+xml")
    ]


def test_usual_urls_are_on_the_pages_site_without_credentials() -> None:
    assert usual_urls("https://u:p@s.example:8443/a/b?c=d")[:2] == [
        "https://s.example:8443/feed",
        "https://s.example:8443/rss",
    ]


# --- OPML ----------------------------------------------------------------------------------


def test_read_opml_takes_categories_and_folders() -> None:
    document = (
        b"<opml version='2.0'><body>"
        b"<outline text='A'><outline text='B' xmlUrl=' https://b.example/f ' category='/x,/y/z'/>"
        b"</outline><outline title='C' text='c' xmlUrl='https://c.example/f'/></body></opml>"
    )
    outlines = read_opml(document)
    assert [(o.url, o.label, o.tags) for o in outlines] == [
        ("https://b.example/f", "B", ("A", "x", "y", "z")),
        ("https://c.example/f", "C", ()),
    ]


def test_read_opml_refuses_a_huge_file() -> None:
    with pytest.raises(OPMLError, match="larger than"):
        read_opml(b" " * (21 * 1024 * 1024))


@pytest.mark.parametrize(
    ("label", "tag"),
    [
        ("news", "news"),
        ("Tech & Science", "Tech-Science"),
        ("Café", "Cafe"),
        ("日本", ""),
        ("-x-", "-x-"),
        (" a  b ", "a-b"),
    ],
)
def test_tag_from_label(label: str, tag: str) -> None:
    assert tag_from_label(label) == tag


def test_a_file_saved_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    from aggregator.errors import NotChanged
    from aggregator.manage import write_text

    path = config_file(tmp_path)
    after = append_feeds(COMMENTED, [NewFeed("https://n.example/f")])
    path.write_text(COMMENTED + "# saved in an editor meanwhile\n")
    with pytest.raises(NotChanged, match="it was edited meanwhile; run the command again"):
        write_text(path, COMMENTED, after)
    assert path.read_text().endswith("# saved in an editor meanwhile\n")
    write_text(path, path.read_text(), after)
    assert path.read_text() == after


def test_a_page_advertising_thousands_of_feeds_lists_the_first_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, feed_server: FeedServer
) -> None:
    links = [("application/rss+xml", f"/feed{n}.rss", f"Feed {n}") for n in range(1, 2001)]
    feed_server.set("/", page(*links), content_type=HTML)
    feed_server.set("/feed1500.rss", RSS)
    path = config_file(tmp_path)
    code, out, _ = run(capsys, "-c", str(path), "add", feed_server.url("/"), "--pick", "1500")
    assert code == 0, out
    listed = [line for line in out.splitlines() if line.startswith("  ") and ". http" in line]
    assert len(listed) == 21  # the first 20 and the one picked
    assert "1500. " in out and "… and 1979 more (--pick K takes any of them)" in out
    assert feeds_of(path)[-1][0] == feed_server.url("/feed1500.rss")
