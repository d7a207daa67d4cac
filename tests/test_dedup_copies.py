"""Real-copy dedup through the pipeline: reposts, retitled and reordered copies in one cold
round are stored once and name every outlet with its own link; templates stay apart. And
the evaluation on ../shared/dedup-dev (skipped when the folder is absent)."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from random import Random

import pytest

from aggregator.dedupe import SAMPLE_MODULUS, _word_hash
from aggregator.model import FeedSource, PublishedItem, Settings
from aggregator.pipeline import Poller
from aggregator.store import Store
from tests.feedserver import FeedServer
from tests.test_dedupe import VOCABULARY, random_text

ROOT = Path(__file__).resolve().parents[1]
DEDUP_DEV = ROOT.parent / "shared" / "dedup-dev"
#: well before the fetch: a date in the future is taken as the time of the fetch
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def feed(name: str, entries: list[tuple[str, str, str, datetime]]) -> bytes:
    """RSS with (title, link, html, published) entries."""
    items = "".join(
        f"<item><title>{escape(title)}</title><link>{escape(link)}</link>"
        f"<guid>{escape(link)}</guid><pubDate>{published:%a, %d %b %Y %H:%M:%S +0000}</pubDate>"
        f"<description>{escape(html)}</description></item>"
        for title, link, html, published in entries
    )
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>{name}</title>'
        f"<link>https://{name}.example/</link>{items}</channel></rss>"
    ).encode()


def paragraphs(*texts: str) -> str:
    return "".join(f"<p>{escape(text)}</p>" for text in texts)


def sentences(seed: int, count: int, anchorless: bool = False) -> list[str]:
    """Sentences of made-up words; `anchorless`: none of them a sampling anchor of the
    index keys (dedupe.sampled_shingles), as in about 1 in 100 short real texts."""
    rng = Random(seed)
    vocabulary = [w for w in VOCABULARY if not anchorless or _word_hash(w) % SAMPLE_MODULUS]
    return [
        " ".join(rng.choice(vocabulary) for _ in range(30)).capitalize() + "." for _ in range(count)
    ]


def round_settings(tmp_path: Path) -> Settings:
    """A database in `tmp_path`, nothing pruned, no spacing between requests to one host."""
    return Settings(
        database=tmp_path / "agg.db", retention=timedelta(days=3650), per_host_spacing=timedelta(0)
    )


def poll(tmp_path: Path, bodies: dict[str, bytes]) -> list[PublishedItem]:
    """One cold round over the feeds (each answering after its own delay, so copies arrive
    in mixed order); the stored stories."""
    with FeedServer() as server:
        sources = []
        for number, (name, body) in enumerate(bodies.items()):
            server.set(f"/{name}.rss", body, delay=0.05 * (number % 3))
            sources.append(FeedSource(url=server.url(f"/{name}.rss"), name=name))
        settings = round_settings(tmp_path)

        async def round_() -> None:
            async with await Poller.open(settings, parsers=ThreadPoolExecutor(2)) as poller:
                results = await poller.poll_round(sources)
            assert all(r.error is None for r in results), results

        asyncio.run(round_())
        with Store.open(settings.database) as store:
            names = {s.url: s.name or s.url for s in sources}
            return store.newest_items(list(names), 100, lambda item, text: True, names)


def test_reposts_retitled_with_a_first_appeared_line_and_another_trailer_are_one_story(
    tmp_path: Path,
) -> None:
    """The phenomenon an independent corpus found stored twice: a repost adds "This article
    first appeared on <URL>." at the top, ends with its own outlet's trailer instead of the
    original's, and labels or signs the headline; all copies come in one cold round."""
    stories = []
    origin_entries: list[tuple[str, str, str, datetime]] = []
    repost_entries: dict[str, list[tuple[str, str, str, datetime]]] = {
        "herald": [],
        "courier": [],
        "gazette": [],
    }
    labels = ["UPDATE: {}", "Analysis: {}", "{} | The Global Herald"]
    for n in range(12):
        body = sentences(n, Random(n).randint(2, 6), anchorless=n % 4 == 0)
        title = " ".join(random_text(5000 + n, 6)).capitalize()
        link = f"https://origin.example/2026/12/05/story-{n}/"
        stories.append(title)
        origin_entries.append(
            (title, link, paragraphs(*body, "Get our morning briefing: sign up."), NOW)
        )
        outlet = list(repost_entries)[n % 3]
        repost_entries[outlet].append(
            (
                labels[n % 3].format(title),
                f"https://{outlet}.example/news/{n}",
                paragraphs(
                    f"This article first appeared on {link}.",
                    *body,
                    "Leave a comment below or send us a tip.",
                ),
                NOW + timedelta(minutes=30),
            )
        )
    bodies = {"origin": feed("origin", origin_entries)}
    bodies.update({name: feed(name, entries) for name, entries in repost_entries.items()})

    stored = poll(tmp_path, bodies)

    assert sorted(item.title for item in stored) == sorted(stories)  # once each, original's
    for item in stored:
        outlets = [source.title for source in item.sources]
        assert outlets[0] == "origin" and len(outlets) == 2, (item.title, outlets)
        assert item.link.startswith("https://origin.example/")


def test_a_network_republishing_a_generated_article_is_one_story_and_templates_are_not(
    tmp_path: Path,
) -> None:
    """Sites of one network publish a generated article under the same headline, its
    paragraphs reordered, some cut and their own added; the same template filled for
    another holder or another day is another story."""
    shared = sentences(70, 6)

    def holding(holder: str, shares: str) -> str:
        return (
            f"{holder} bought a new stake in Cintas Co. during the third quarter, according"
            f" to its most recent filing. The fund bought {shares} shares of the company."
        )

    title = "Summit Global Investments Takes Position in Cintas Co. (NASDAQ:CTAS)"
    lead = holding("Summit Global Investments", "1,234")
    bodies = {
        "wire": feed(
            "wire",
            [
                (title, "https://wire.example/a/1", paragraphs(lead, *shared), NOW),
                (
                    "Bluestein R H & Co. Takes Position in Cintas Co. (NASDAQ:CTAS)",
                    "https://wire.example/a/2",
                    paragraphs(holding("Bluestein R H & Co.", "5,678"), *shared),
                    NOW,
                ),
            ],
        ),
        "mirror": feed(
            "mirror",
            [
                (
                    title,
                    "https://mirror.example/a/9",
                    paragraphs(lead, *reversed(shared[:4]), *sentences(71, 2)),
                    NOW + timedelta(minutes=5),
                )
            ],
        ),
    }
    stored = poll(tmp_path, bodies)
    by_title = {item.title: item for item in stored}
    assert len(stored) == 2
    assert [s.title for s in by_title[title].sources] == ["wire", "mirror"]


def test_a_podcast_whose_episodes_share_a_long_footer_keeps_every_episode(
    tmp_path: Path,
) -> None:
    """Each episode a line of its own above the show's standard paragraph, five times as
    long: the episodes are different stories."""
    footer = " ".join(sentences(80, 3)[:2])  # 60 words
    lines = [" ".join(random_text(81 + n, 12)).capitalize() + "." for n in range(6)]
    episodes = [
        (f"Episode {n}", f"https://pod.example/ep/{n}", paragraphs(line, footer), NOW)
        for n, line in enumerate(lines)
    ]
    stored = poll(tmp_path, {"pod": feed("pod", episodes)})
    assert sorted(item.title for item in stored) == [f"Episode {n}" for n in range(6)]


def test_a_copy_matching_several_episodes_of_one_feed_joins_one_and_merges_none(
    tmp_path: Path,
) -> None:
    """Another outlet reposts one episode with its own byline, after the episodes are
    stored: by text it matches every episode (they share the show's footer), and the
    stories a copy matches are usually one story stored apart. Not when one feed gave
    them as its own distinct entries. (Stored before the episodes, the repost takes
    them all in: each matches its text. Known, see bench/README or the commit.)"""
    footer = " ".join(sentences(80, 3)[:2])  # 60 words
    lines = [" ".join(random_text(81 + n, 12)).capitalize() + "." for n in range(6)]
    episodes = [
        (f"Episode {n}", f"https://pod.example/ep/{n}", paragraphs(line, footer), NOW)
        for n, line in enumerate(lines)
    ]
    repost = [
        (
            "Heard on the radio",
            "https://radio.example/heard",
            paragraphs("By the radio desk.", lines[0], footer),
            NOW,
        )
    ]
    with FeedServer() as server:
        server.set("/pod.rss", feed("pod", episodes))
        server.set("/radio.rss", feed("radio", repost))
        pod = FeedSource(url=server.url("/pod.rss"), name="pod")
        radio = FeedSource(url=server.url("/radio.rss"), name="radio")
        settings = round_settings(tmp_path)

        async def rounds() -> None:
            async with await Poller.open(settings, parsers=ThreadPoolExecutor(2)) as poller:
                await poller.poll_round([pod])
                await poller.poll_round([pod, radio])

        asyncio.run(rounds())
    with Store.open(settings.database) as store:
        names = {pod.url: "pod", radio.url: "radio"}
        stored = store.newest_items(list(names), 100, lambda item, text: True, names)
    assert sorted(item.title for item in stored) == [f"Episode {n}" for n in range(6)]
    [first] = [item for item in stored if item.title == "Episode 0"]
    assert sorted(source.title for source in first.sources) == ["pod", "radio"]


@pytest.mark.skipif(not DEDUP_DEV.exists(), reason=f"{DEDUP_DEV} is absent")
def test_real_copies_of_the_development_slice_are_merged_and_nothing_else() -> None:
    """../shared/dedup-dev through the real pipeline (bench/dedup_eval.py): precision
    ≥ 0.99 and recall ≥ 0.95 (measured: 33 of 33 pairs, 0 wrong)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import dedup_eval  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "bench"))
    result = dedup_eval.evaluate(DEDUP_DEV)
    assert result.precision >= 0.99, result.wrong
    assert result.recall >= 0.95, result.missed
