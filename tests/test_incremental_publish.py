"""`poll --once` renders only the topics its round changed (issue 17: a warm round need
not render every topic), and never leaves a file stale: a config edit, a missing file, a
feed's new title or a prune still bring every output up to date."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from aggregator import pipeline, publish
from aggregator.config import load_config
from aggregator.errors import PublishError
from aggregator.model import Config
from aggregator.store import Store
from tests.commands import aggregator
from tests.feedserver import FeedServer
from tests.test_daemon import make_story, rss

TOPICS = """\
topics:
  asia:
    title: {title}
    feeds: [asia]
  europe:
    title: Europe
    feeds: [europe]
"""


def write(tmp_path: Path, server: FeedServer, title: str = "Asia") -> Path:
    config = tmp_path / "feeds.yaml"
    config.write_text(
        'settings:\n  per_host_spacing: 0\n  database: agg.db\n  output_dir: public\n  listen: ""\n'
        + TOPICS.format(title=title)
        + "feeds:\n"
        f"  - url: {server.url('/asia.rss')}\n    tags: [asia]\n"
        f"  - url: {server.url('/europe.rss')}\n    tags: [europe]\n"
    )
    return config


def poll(config: Path) -> None:
    result = aggregator(config, "poll", "--once")
    assert result.returncode == 0, result.stderr


def test_a_round_renders_only_the_topics_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[object] = []
    real = publish.iter_outputs

    def counting(
        config: Config, store: Store, only: Collection[str] | None = None, site: bool = True
    ) -> Iterator[tuple[str, bytes]]:
        outputs = list(real(config, store, only, site))
        rendered.append((None if only is None else set(only), [n for n, _ in outputs][-2:]))
        return iter(outputs)

    monkeypatch.setattr(publish, "iter_outputs", counting)
    with FeedServer() as server:
        server.set("/asia.rss", rss("Asia", [make_story("a1")]))
        server.set("/europe.rss", rss("Europe", [make_story("e1")]))
        config = load_config(write(tmp_path, server))
        pipeline.run_loop(pipeline.poll_and_publish(config))
        pipeline.run_loop(pipeline.poll_and_publish(config))  # nothing changed
        server.set("/europe.rss", rss("Europe", [make_story("e2"), make_story("e1")]))
        pipeline.run_loop(pipeline.poll_and_publish(config))
    # the first round renders everything (no outputs yet), the second nothing, not even
    # the index and the OPML, the third the one topic whose feed brought a story, and
    # those two
    site = ["index.html", "feeds.opml"]
    assert rendered == [(None, site), (set(), []), ({"europe"}, site)]
    assert make_story("e2").title in (tmp_path / "public" / "europe.atom").read_text()


def test_what_a_round_did_not_change_is_still_brought_up_to_date(tmp_path: Path) -> None:
    with FeedServer() as server:
        server.set("/asia.rss", rss("Asia", [make_story("a1")]))
        server.set("/europe.rss", rss("Europe", [make_story("e1")]))
        config = write(tmp_path, server)
        poll(config)
        public = tmp_path / "public"

        # the config changed (a topic's title), the feeds did not
        write(tmp_path, server, title="East Asia")
        poll(config)
        assert "<title>East Asia</title>" in (public / "asia.rss").read_text()

        # a published file went missing
        (public / "europe.json").unlink()
        poll(config)
        assert (public / "europe.json").is_file()

        # a feed's own title changed, not its items: the outlet's name follows
        server.set("/asia.rss", rss("Asiatica", [make_story("a1")]))
        poll(config)
        assert "Asiatica" in (public / "asia.html").read_text()


def write_with_a_loose_feed(tmp_path: Path, server: FeedServer) -> Path:
    """`write`'s config and feeds, and "Loose Ends", a feed tagged for no topic."""
    server.set("/asia.rss", rss("Asia", [make_story("a1")]))
    server.set("/europe.rss", rss("Europe", [make_story("e1")]))
    server.set("/loose.rss", rss("Loose Ends", [make_story("l1")]))
    config = write(tmp_path, server)
    with config.open("a") as file:
        file.write(f"  - url: {server.url('/loose.rss')}\n")
    return config


def test_a_feed_in_no_topic_that_renames_itself_is_renamed_in_the_opml(
    tmp_path: Path,
) -> None:
    with FeedServer() as server:
        config = write_with_a_loose_feed(tmp_path, server)
        poll(config)
        opml = tmp_path / "public" / "feeds.opml"
        assert "Loose Ends" in opml.read_text()

        server.set("/loose.rss", rss("Tied Ends", [make_story("l1")]))
        poll(config)
        assert "Tied Ends" in opml.read_text()


def test_a_rename_whose_render_failed_reaches_the_opml_in_the_next_quiet_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FeedServer() as server:
        config = load_config(write_with_a_loose_feed(tmp_path, server))
        pipeline.run_loop(pipeline.poll_and_publish(config))

        # the feed renames itself in a round whose render fails (a full disk, say)
        server.set("/loose.rss", rss("Tied Ends", [make_story("l1")]))

        def failing(*args: object, **kwargs: object) -> None:
            raise PublishError("cannot write outputs: disk full")

        with monkeypatch.context() as patched:
            patched.setattr(pipeline, "index_and_publish", failing)
            with pytest.raises(PublishError):
                pipeline.run_loop(pipeline.poll_and_publish(config, force=True))
        opml = tmp_path / "public" / "feeds.opml"
        assert "Tied Ends" not in opml.read_text()

        # the next round changes nothing, and still brings the OPML up to date
        pipeline.run_loop(pipeline.poll_and_publish(config, force=True))
        assert "Tied Ends" in opml.read_text()
