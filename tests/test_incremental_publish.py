"""`poll --once` renders only the topics its round changed (issue 17: a warm round need
not render every topic), and never leaves a file stale: a config edit, a missing file, a
feed's new title or a prune still bring every output up to date."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from aggregator import pipeline, publish
from aggregator.config import load_config
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
        config: Config, store: Store, only: Collection[str] | None = None
    ) -> Iterator[tuple[str, bytes]]:
        rendered.append(None if only is None else set(only))
        return real(config, store, only)

    monkeypatch.setattr(publish, "iter_outputs", counting)
    with FeedServer() as server:
        server.set("/asia.rss", rss("Asia", [make_story("a1")]))
        server.set("/europe.rss", rss("Europe", [make_story("e1")]))
        config = load_config(write(tmp_path, server))
        pipeline.run_loop(pipeline.poll_and_publish(config))
        pipeline.run_loop(pipeline.poll_and_publish(config))  # nothing changed
        server.set("/europe.rss", rss("Europe", [make_story("e2"), make_story("e1")]))
        pipeline.run_loop(pipeline.poll_and_publish(config))
    # the first round renders everything (no outputs yet), the second no topic, the third
    # the one topic whose feed brought a story
    assert rendered == [None, set(), {"europe"}]
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
