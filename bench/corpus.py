"""The benchmark corpus: a deterministic, seeded set of feeds, its ground truth and feeds.yaml.

Stdlib only. The same seed, N and round always give the same bytes, so a warm round sees
every file unchanged (nginx answers 304) and `--mutate ROUND` changes only the feeds that
round touches: files are rewritten only when their bytes differ.

Layout under OUT (default bench/out):
  corpus/feeds/fNNNNN.{xml,atom,rdf,json}  WordPress RSS 2.0, Atom, RSS 1.0, JSON Feed
  corpus/manifest.json   seed, N, round, corpus stats, and per feed: path, url, format
  corpus/truth.jsonl     one line per syndicated story: its copies (feed, id, link, kind)
  feeds.yaml             every feed, one `all` topic, database under run-aggregator/

Every story's text comes from its own RNG (seed, story id, edit number), so a story's copies in
other feeds carry the same text without holding the corpus in memory.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

BASE_DATE = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
#: share of stories copied into other feeds, and how many other feeds carry each copy
SYNDICATED_SHARE = 0.10
EXTRA_COPIES = (2, 4)
ENTRIES_PER_FEED = (10, 50)
BODY_BYTES = (1000, 8000)
#: how a copy differs from the first-seen one: its link (tracking, scheme, slash), a new title
#: and byline (rewrite), or a syndicated repost under the host's own link, with a credit line on
#: top, the host's trailer instead of the origin's and a retouched title (repost)
COPY_KINDS = (("tracking", 30), ("scheme", 10), ("slash", 10), ("rewrite", 30), ("repost", 20))
#: a repost goes out this many minutes after its origin
REPOST_DELAY = (0, 180)
#: share of feeds that end every entry with a trailer paragraph of their own
TRAILER_SHARE = 1 / 3
TRAILERS = (
    'Get our morning briefing: <a href="{site}newsletter/">sign up</a>.',
    "Leave a comment below or send us a tip.",
    "Follow us for more local news.",
    'Support independent journalism: <a href="{site}subscribe/">subscribe today</a>.',
    "Have a story we should cover? Write to newsroom@{host}.",
    "<em>{outlet} is a member of the Regional Press Association.</em>",
)
#: a repost's credit line (origin outlet, its link to the story) and its retouched title
REPOST_CREDITS = (
    'This article first appeared on <a href="{url}">{outlet}</a>.',
    'Originally published at <a href="{url}">{outlet}</a>.',
    'This story was first published by <a href="{url}">{outlet}</a>.',
    "This article first appeared on {outlet} at {url} and is republished with permission.",
    "<em>Originally published at {url}</em>",
    'This story was first published by {outlet}: <a href="{url}">{url}</a>.',
)
REPOST_PREFIXES = ("UPDATE: ", "Analysis: ", "Breaking: ")
FORMATS = (("wordpress", 60), ("atom", 30), ("rss1", 5), ("jsonfeed", 5))
EXTENSIONS = {"wordpress": "xml", "atom": "atom", "rss1": "rdf", "jsonfeed": "json"}

WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but
have an they you were their one all we can her has there been if more when will would who so no
she other its may these about than into them could only any time some two people new city year
years state government council minister report market company said first last after before
between under over against during without within through across around while where because
water energy health school police court river bridge road station harbour village county budget
plan vote election party leader mayor committee board member officer worker student teacher
doctor nurse farmer driver engineer scientist artist writer family child children parent
community service project program research study data system network policy law rule tax price
cost rate growth trade export import industry factory farm crop rain storm flood fire heat
winter summer spring autumn morning evening night week month season history future public
private local national regional global early late small large high low long short strong weak
open closed free full clear dark bright quiet loud fast slow old young new recent major minor
said says told asked announced reported expected planned approved rejected opened closed started
finished built moved raised cut increased reduced changed improved delayed cancelled returned
visited joined left won lost found made took gave kept held brought sent showed called named
agreed argued warned promised claimed denied confirmed revealed suggested decided continued
according although however meanwhile instead despite therefore already still again also even
just almost nearly around about perhaps probably certainly recently finally quickly slowly
museum library hospital airport garden park stadium market theatre gallery centre office
street square avenue district neighbourhood province valley coast island mountain forest lake
concert festival exhibition match season tournament final record team club player coach fan
software hardware device phone computer internet website app update release version feature
bug security privacy account user customer supplier contract deal agreement talks meeting
summit conference debate hearing inquiry review audit survey poll census forecast estimate
""".split()
FIRST_NAMES = """Anna Ben Carla David Elena Farid Grace Hugo Ines Jonas Kofi Lena Marco Nadia Omar
Priya Quentin Rosa Samir Tara Ugo Vera Wen Xavier Yara Zoe""".split()
LAST_NAMES = """Abbott Baker Costa Dubois Eriksen Fischer Garcia Hansen Ito Jensen Kowalski Lopez
Moreau Novak Okafor Petrov Quinn Rossi Silva Tanaka Urban Varga Weber Xu Young Zimmer""".split()
CATEGORIES = """News Politics Business Technology Science Health Sport Culture Local World Opinion
Environment Education Travel Food Music Film Books Transport Energy""".split()
OUTLET_WORDS = """Daily Weekly Herald Gazette Courier Observer Journal Times Post Chronicle Review
Tribune Bulletin Ledger Voice Digest Monitor Standard Dispatch Record""".split()
PLACES = """Northfield Riverton Lakeside Hillcrest Westbrook Eastmoor Southport Oakridge Milltown
Fairhaven Stonebridge Ashford Greenvale Redcliff Brookside""".split()


# --- structure: which story sits in which feed -------------------------------------------


@dataclass
class Copy:
    story: int
    #: "origin" for the first-seen copy, else one of COPY_KINDS
    kind: str
    origin_feed: int
    origin_post: int
    post: int = 0
    date: datetime = BASE_DATE
    edits: int = 0
    updated: datetime | None = None
    #: the first-seen copy's date: its link has the date in it
    origin_date: datetime = BASE_DATE


@dataclass
class Feed:
    index: int
    fmt: str
    site: str
    title: str
    language: str
    entries: list[Copy] = field(default_factory=list)
    #: the paragraph ending every entry this feed publishes, if it has one
    trailer: str | None = None

    @property
    def path(self) -> str:
        return f"feeds/f{self.index:05d}.{EXTENSIONS[self.fmt]}"


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def build_structure(seed: int, n_feeds: int) -> tuple[list[Feed], int]:
    """The feeds and their entries (stories and copies); returns them and the next story id."""
    rng = random.Random(f"{seed}:structure")
    feeds = []
    for index in range(n_feeds):
        fmt = _weighted(rng, FORMATS)
        place, outlet = rng.choice(PLACES), rng.choice(OUTLET_WORDS)
        site = f"{place}{outlet}{index}".lower()
        title = f"{place} {outlet} {index}"
        feeds.append(Feed(index, fmt, site, title, rng.choice(["en-US", "en-GB", "en"])))
    for feed in feeds:
        feed.trailer = _trailer(seed, feed)
    sizes = [rng.randint(*ENTRIES_PER_FEED) for _ in feeds]
    pool = [f for f, size in enumerate(sizes) for _ in range(size)]
    rng.shuffle(pool)
    mean_extra = sum(EXTRA_COPIES) / 2
    unique = round(len(pool) / (1 + SYNDICATED_SHARE * mean_extra))
    syndicated = int(unique * SYNDICATED_SHARE) if n_feeds > 1 else 0
    story = 0
    for _ in range(syndicated):
        extra = min(rng.randint(*EXTRA_COPIES), n_feeds - 1)
        chosen: list[int] = []
        skipped: list[int] = []
        while len(chosen) < 1 + extra and pool:
            f = pool.pop()
            (skipped if f in chosen else chosen).append(f)
        pool.extend(skipped)
        if len(chosen) < 2:
            pool.extend(chosen)
            break
        origin = feeds[chosen[0]]
        post = 1000 + len(origin.entries)
        origin.entries.append(Copy(story, "origin", origin.index, post))
        for f in chosen[1:]:
            kind = _weighted(rng, COPY_KINDS)
            feeds[f].entries.append(Copy(story, kind, origin.index, post))
        story += 1
    for f in pool:
        feed = feeds[f]
        feed.entries.append(Copy(story, "origin", f, 1000 + len(feed.entries)))
        story += 1
    for feed in feeds:
        rng.shuffle(feed.entries)
        when = BASE_DATE - timedelta(minutes=rng.randint(0, 48 * 60))
        for number, copy in enumerate(feed.entries):
            copy.date = when
            if copy.kind == "origin":
                copy.post = copy.origin_post
            else:
                copy.post = 1000 + number + 5000
            when -= timedelta(minutes=rng.randint(60, 36 * 60))
    origin_dates = {c.story: c.date for f in feeds for c in f.entries if c.kind == "origin"}
    for feed in feeds:
        for copy in feed.entries:
            copy.origin_date = origin_dates[copy.story]
            if copy.kind == "repost":
                delay = random.Random(f"{seed}:repost:{copy.story}:{feed.index}")
                copy.date = min(
                    copy.origin_date + timedelta(minutes=delay.randint(*REPOST_DELAY)), BASE_DATE
                )
        # newest first, as feeds are, now that reposts are dated by their origin
        feed.entries.sort(key=lambda c: c.date, reverse=True)
    return feeds, story


def _trailer(seed: int, feed: Feed) -> str | None:
    """A third of the feeds end every entry with a paragraph of their own (own RNG: the
    structure's draws stay as they were)."""
    rng = random.Random(f"{seed}:trailer:{feed.index}")
    if rng.random() >= TRAILER_SHARE:
        return None
    text = rng.choice(TRAILERS).format(
        site=f"https://{feed.site}.example/", host=f"{feed.site}.example", outlet=escape(feed.title)
    )
    return f"<p>{text}</p>"


def mutate(feeds: list[Feed], seed: int, round_number: int, next_story: int) -> int:
    """Round `round_number`: ~5% of feeds gain 1-3 entries, ~2% edit one entry's text."""
    rng = random.Random(f"{seed}:mutate:{round_number}")
    now = BASE_DATE + timedelta(hours=round_number)
    for feed in feeds:
        roll = rng.random()
        if roll < 0.05:
            for extra in range(rng.randint(1, 3)):
                post = 1000 + 9000 + round_number * 10 + extra
                copy = Copy(next_story, "origin", feed.index, post, post=post)
                copy.date = copy.origin_date = now - timedelta(minutes=extra * 7)
                feed.entries.insert(0, copy)
                next_story += 1
        elif roll < 0.07 and feed.entries:
            copy = rng.choice(feed.entries)
            copy.edits += 1
            copy.updated = now
    return next_story


# --- text --------------------------------------------------------------------------------


def _sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(8, 24))
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(PLACES))
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), str(rng.randint(2, 2000)))
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(".....?!")


def _title(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(4, 10))
    words.insert(rng.randrange(len(words)), rng.choice(PLACES))
    text = " ".join(words)
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class Story:
    title: str
    paragraphs: tuple[str, ...]
    author: str | None
    categories: tuple[str, ...]


def story_text(seed: int, story: int, edits: int = 0) -> Story:
    """A story's title and HTML paragraphs; each edit replaces one paragraph."""
    rng = random.Random(f"{seed}:story:{story}")
    title = _title(rng)
    author = None if rng.random() < 0.15 else f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    categories = tuple(rng.sample(CATEGORIES, rng.randint(0, 4)))
    target = rng.randint(*BODY_BYTES)
    paragraphs: list[str] = []
    size = 0
    while size < target:
        sentences = [_sentence(rng) for _ in range(rng.randint(2, 6))]
        roll = rng.random()
        if roll < 0.12:
            slug = "-".join(rng.choices(WORDS, k=3))
            sentences[0] = (
                f'{sentences[0]} <a href="/{rng.randint(2019, 2026)}/{slug}/">{slug}</a>.'
            )
        elif roll < 0.2:
            sentences[-1] = f"<strong>{sentences[-1]}</strong>"
        if roll > 0.93:
            photo = rng.randint(1, 99999)
            paragraphs.append(
                f'<figure><img src="/wp-content/uploads/2026/05/photo-{photo}.jpg" '
                f'alt="{escape(rng.choice(WORDS))}" width="1024" height="683" />'
                f"<figcaption>{_sentence(rng)}</figcaption></figure>"
            )
        elif roll > 0.88:
            paragraphs.append(f"<h2>{_title(rng)}</h2>")
        elif roll > 0.85:
            items = "".join(f"<li>{_sentence(rng)}</li>" for _ in range(rng.randint(2, 5)))
            paragraphs.append(f"<ul>{items}</ul>")
        elif roll > 0.82:
            paragraphs.append(f"<blockquote><p>{_sentence(rng)}</p></blockquote>")
        paragraphs.append("<p>" + " ".join(sentences) + "</p>")
        size += len(paragraphs[-1])
    for edit in range(1, edits + 1):
        edit_rng = random.Random(f"{seed}:edit:{story}:{edit}")
        spot = edit_rng.randrange(len(paragraphs))
        paragraphs[spot] = "<p>" + _sentence(edit_rng) + " " + _sentence(edit_rng) + "</p>"
    return Story(title, tuple(paragraphs), author, categories)


# --- rendering one entry in its host feed -----------------------------------------------


@dataclass(frozen=True)
class Entry:
    entry_id: str
    link: str
    title: str
    html: str
    excerpt: str
    author: str | None
    categories: tuple[str, ...]
    published: datetime
    updated: datetime


def _slug(title: str) -> str:
    return "-".join(title.lower().split()[:6])


def _link(feed: Feed, post: int, slug: str, date: datetime) -> str:
    if feed.fmt == "wordpress":
        return f"https://www.{feed.site}.example/{date:%Y/%m}/{slug}/"
    if feed.fmt == "atom":
        return f"https://{feed.site}.example/{date:%Y/%m}/{slug}-{post}.html"
    if feed.fmt == "rss1":
        return f"http://{feed.site}.example/articles/{post}"
    return f"https://{feed.site}.example/posts/{slug}-{post}"


def _entry_id(feed: Feed, post: int, link: str) -> str:
    if feed.fmt == "wordpress":
        return f"https://www.{feed.site}.example/?p={post}"
    if feed.fmt == "atom":
        return f"tag:{feed.site}.example,2026:post-{post}"
    if feed.fmt == "rss1":
        return link
    return f"{feed.site}-{post}"


def _variant(link: str, kind: str, rng: random.Random) -> str:
    if kind == "tracking":
        params = rng.choice(
            [
                "utm_source=rss&utm_medium=rss&utm_campaign={slug}",
                "utm_source=feedburner&utm_medium=feed&utm_campaign=Feed%3A+{slug}",
                "fbclid=IwAR{token}",
                "utm_source=twitter&utm_medium=social&fbclid=IwAR{token}",
            ]
        )
        token = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=24))
        query = params.format(slug="news", token=token)
        return link + ("&" if "?" in link else "?") + query
    if kind == "scheme":
        scheme, rest = link.split("://", 1)
        return ("https" if scheme == "http" else "http") + "://" + rest
    if kind == "slash":
        return link[:-1] if link.endswith("/") else link + "/"
    return link


def _boilerplate(feed: Feed, link: str, title: str, post: int) -> str:
    """What WordPress and its plugins append to content:encoded."""
    site_url = f"https://www.{feed.site}.example/"
    share = "".join(
        f'<li class="share-{name}"><a rel="nofollow noopener noreferrer" class="share-{name}'
        f' sd-button" href="{link}?share={name}&amp;nb=1" target="_blank" title="Click to share'
        f' on {name.title()}"><span>{name.title()}</span></a></li>'
        for name in ("twitter", "facebook", "linkedin", "email")
    )
    return (
        '<div class="sharedaddy sd-sharing-enabled"><div class="robots-nocontent sd-block'
        ' sd-social sd-social-icon-text sd-sharing"><h3 class="sd-title">Share this:</h3>'
        f'<div class="sd-content"><ul>{share}</ul></div></div></div>'
        f'<img src="https://pixel.wp.com/b.gif?host=www.{feed.site}.example&amp;blog={feed.index}'
        f'&amp;post={post}&amp;subd={feed.site}&amp;ref=&amp;feed=1" width="1" height="1"'
        ' alt="" style="display:none;" />'
        f'<p>The post <a rel="nofollow" href="{link}">{escape(title)}</a> appeared first on'
        f' <a rel="nofollow" href="{site_url}">{escape(feed.title)}</a>.</p>'
    )


def render_entry(seed: int, feed: Feed, copy: Copy, origin: Feed) -> Entry:
    story = story_text(seed, copy.story, copy.edits)
    rng = random.Random(f"{seed}:copy:{copy.story}:{feed.index}")
    origin_link = _link(origin, copy.origin_post, _slug(story.title), copy.origin_date)
    title = story.title
    paragraphs = list(story.paragraphs)
    author = story.author
    if copy.kind == "origin":
        link = origin_link
    elif copy.kind == "rewrite":
        title = _title(rng)
        link = _link(feed, copy.post, _slug(title), copy.date)
        byline = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        paragraphs.insert(0, f"<p><em>By {byline}, {escape(origin.title)}</em></p>")
        author = byline
    elif copy.kind == "repost":
        # syndicated: the host's own URL, the origin credited on top, the host's title touch
        roll = rng.randrange(len(REPOST_PREFIXES) + 1)
        if roll < len(REPOST_PREFIXES):
            title = REPOST_PREFIXES[roll] + title
        else:
            title = f"{title} | {feed.title}"
        link = _link(feed, copy.post, _slug(story.title), copy.date)
        credit = rng.choice(REPOST_CREDITS).format(
            url=escape(origin_link), outlet=escape(origin.title)
        )
        paragraphs.insert(0, f"<p>{credit}</p>")
    else:
        link = _variant(origin_link, copy.kind, rng)
    if feed.trailer:
        paragraphs.append(feed.trailer)
    html = "".join(paragraphs)
    if feed.fmt == "wordpress":
        html += _boilerplate(feed, link, title, copy.post)
    elif feed.fmt == "atom" and feed.index % 3 == 0:
        html += (
            '<div class="blogger-post-footer"><img width="1" height="1" alt="" '
            f'src="https://tracker.{feed.site}.example/t/{copy.post}.gif" /></div>'
        )
    first = paragraphs[0]
    plain = "".join(ch for ch in first if ch not in "<>")[:300]
    excerpt = plain.rsplit(" ", 1)[0] + " [&#8230;]"
    return Entry(
        entry_id=_entry_id(feed, copy.post, link),
        link=link,
        title=title,
        html=html,
        excerpt=excerpt,
        author=author,
        categories=story.categories,
        published=copy.date,
        updated=copy.updated or copy.date,
    )


# --- feed formats -------------------------------------------------------------------------


def _rfc822(when: datetime) -> str:
    return when.strftime("%a, %d %b %Y %H:%M:%S +0000")


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_wordpress(feed: Feed, entries: list[Entry], url: str) -> str:
    site = f"https://www.{feed.site}.example"
    out = [
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"'
        ' xmlns:content="http://purl.org/rss/1.0/modules/content/"'
        ' xmlns:wfw="http://wellformedweb.org/CommentAPI/"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:atom="http://www.w3.org/2005/Atom"'
        ' xmlns:sy="http://purl.org/rss/1.0/modules/syndication/"'
        ' xmlns:slash="http://purl.org/rss/1.0/modules/slash/">\n<channel>\n',
        f"\t<title>{escape(feed.title)}</title>\n",
        f'\t<atom:link href="{escape(url)}" rel="self" type="application/rss+xml" />\n',
        f"\t<link>{site}</link>\n\t<description>News from {escape(feed.title)}</description>\n",
        f"\t<lastBuildDate>{_rfc822(max(e.updated for e in entries))}</lastBuildDate>\n",
        f"\t<language>{feed.language}</language>\n",
        "\t<sy:updatePeriod>hourly</sy:updatePeriod>\n\t<sy:updateFrequency>1</sy:updateFrequency>\n",
        "\t<generator>https://wordpress.org/?v=6.5.3</generator>\n",
    ]
    for e in entries:
        out.append(f"\t<item>\n\t\t<title>{escape(e.title)}</title>\n")
        out.append(f"\t\t<link>{escape(e.link)}</link>\n")
        out.append(f"\t\t<comments>{escape(e.link)}#respond</comments>\n")
        if e.author:
            out.append(f"\t\t<dc:creator>{_cdata(e.author)}</dc:creator>\n")
        out.append(f"\t\t<pubDate>{_rfc822(e.published)}</pubDate>\n")
        out.extend(f"\t\t<category>{_cdata(c)}</category>\n" for c in e.categories)
        out.append(f'\t\t<guid isPermaLink="false">{escape(e.entry_id)}</guid>\n')
        appeared = (
            f'<p>The post <a rel="nofollow" href="{escape(e.link)}">{escape(e.title)}</a>'
            f' appeared first on <a rel="nofollow" href="{site}/">{escape(feed.title)}</a>.</p>'
        )
        out.append(f"\t\t<description>{_cdata(e.excerpt + appeared)}</description>\n")
        out.append(f"\t\t<content:encoded>{_cdata(e.html)}</content:encoded>\n")
        out.append(f"\t\t<wfw:commentRss>{escape(e.link)}feed/</wfw:commentRss>\n")
        out.append("\t\t<slash:comments>0</slash:comments>\n\t</item>\n")
    out.append("</channel>\n</rss>\n")
    return "".join(out)


def render_atom(feed: Feed, entries: list[Entry], url: str) -> str:
    site = f"https://{feed.site}.example/"
    out = [
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="{feed.language}">\n',
        f"  <id>tag:{feed.site}.example,2026:feed</id>\n",
        f"  <title>{escape(feed.title)}</title>\n",
        f"  <updated>{_iso(max(e.updated for e in entries))}</updated>\n",
        f'  <link rel="self" type="application/atom+xml" href={quoteattr(url)}/>\n',
        f'  <link rel="alternate" type="text/html" href="{site}"/>\n',
        "  <generator>Hugo</generator>\n",
    ]
    for e in entries:
        out.append("  <entry>\n")
        out.append(f"    <id>{escape(e.entry_id)}</id>\n    <title>{escape(e.title)}</title>\n")
        out.append(f'    <link rel="alternate" type="text/html" href={quoteattr(e.link)}/>\n')
        out.append(f"    <published>{_iso(e.published)}</published>\n")
        out.append(f"    <updated>{_iso(e.updated)}</updated>\n")
        if e.author:
            out.append(f"    <author><name>{escape(e.author)}</name></author>\n")
        out.extend(f"    <category term={quoteattr(c)}/>\n" for c in e.categories)
        out.append(f'    <summary type="html">{escape(e.excerpt)}</summary>\n')
        out.append(f'    <content type="html">{escape(e.html)}</content>\n  </entry>\n')
    out.append("</feed>\n")
    return "".join(out)


def render_rss1(feed: Feed, entries: list[Entry], url: str) -> str:
    site = f"http://{feed.site}.example/"
    seq = "".join(f"      <rdf:li rdf:resource={quoteattr(e.entry_id)}/>\n" for e in entries)
    out = [
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
        ' xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:content="http://purl.org/rss/1.0/modules/content/">\n',
        f"  <channel rdf:about={quoteattr(url)}>\n    <title>{escape(feed.title)}</title>\n",
        f"    <link>{site}</link>\n    <description>{escape(feed.title)}</description>\n",
        f"    <items>\n    <rdf:Seq>\n{seq}    </rdf:Seq>\n    </items>\n  </channel>\n",
    ]
    for e in entries:
        out.append(f"  <item rdf:about={quoteattr(e.entry_id)}>\n")
        out.append(f"    <title>{escape(e.title)}</title>\n    <link>{escape(e.link)}</link>\n")
        out.append(f"    <description>{escape(e.excerpt)}</description>\n")
        out.append(f"    <content:encoded>{_cdata(e.html)}</content:encoded>\n")
        out.append(f"    <dc:date>{_iso(e.updated)}</dc:date>\n")
        if e.author:
            out.append(f"    <dc:creator>{escape(e.author)}</dc:creator>\n")
        out.extend(f"    <dc:subject>{escape(c)}</dc:subject>\n" for c in e.categories)
        out.append("  </item>\n")
    out.append("</rdf:RDF>\n")
    return "".join(out)


def render_jsonfeed(feed: Feed, entries: list[Entry], url: str) -> str:
    items = []
    for e in entries:
        item: dict[str, object] = {
            "id": e.entry_id,
            "url": e.link,
            "title": e.title,
            "content_html": e.html,
            "summary": e.excerpt,
            "date_published": _iso(e.published),
            "date_modified": _iso(e.updated),
        }
        if e.author:
            item["authors"] = [{"name": e.author}]
        if e.categories:
            item["tags"] = list(e.categories)
        items.append(item)
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": feed.title,
        "home_page_url": f"https://{feed.site}.example/",
        "feed_url": url,
        "language": feed.language,
        "items": items,
    }
    return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


RENDERERS = {
    "wordpress": render_wordpress,
    "atom": render_atom,
    "rss1": render_rss1,
    "jsonfeed": render_jsonfeed,
}


# --- writing ------------------------------------------------------------------------------


def feed_url(feed: Feed, port: int, hosts: int) -> str:
    """Feeds are spread over `hosts` loopback addresses, as real feeds are over servers."""
    return f"http://127.0.0.{10 + feed.index % hosts}:{port}/{feed.path}"


def write_if_changed(path: Path, data: bytes) -> bool:
    """Keep the file (and so its mtime, nginx's ETag and Last-Modified) when nothing changed."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def feeds_yaml(urls: list[str]) -> str:
    lines = [
        "# generated by bench/corpus.py: the benchmark's feeds, served by nginx on loopback",
        "settings:",
        "  per_host_spacing: 0  # a few loopback servers serve every feed",
        "  database: run-aggregator/aggregator.db",
        "  output_dir: run-aggregator/public",
        '  listen: ""',
        "  base_url: http://127.0.0.1:8080/",
        "  interval: 30m",
        "  max_items: 50",
        "  retention: 3650d   # the corpus is dated around 2026-06-01",
        "topics:",
        "  all:",
        "    title: All stories",
        "feeds:",
    ]
    lines += [f"  - url: {url}" for url in urls]
    return "\n".join(lines) + "\n"


def generate(
    out: Path, seed: int, n_feeds: int, round_number: int, port: int, hosts: int
) -> dict[str, int]:
    feeds, next_story = build_structure(seed, n_feeds)
    for r in range(1, round_number + 1):
        next_story = mutate(feeds, seed, r, next_story)
    corpus = out / "corpus"
    (corpus / "feeds").mkdir(parents=True, exist_ok=True)
    truth: dict[int, list[dict[str, str]]] = {}
    manifest = []
    written = total_bytes = entries = 0
    for feed in feeds:
        url = feed_url(feed, port, hosts)
        rendered = [render_entry(seed, feed, c, feeds[c.origin_feed]) for c in feed.entries]
        entries += len(rendered)
        data = RENDERERS[feed.fmt](feed, rendered, url).encode("utf-8")
        total_bytes += len(data)
        written += write_if_changed(corpus / feed.path, data)
        manifest.append({"path": feed.path, "url": url, "format": feed.fmt})
        for copy, entry in zip(feed.entries, rendered, strict=True):
            copies = truth.setdefault(copy.story, [])
            copies.append(
                {"feed": feed.path, "id": entry.entry_id, "link": entry.link, "kind": copy.kind}
            )
    # A previous, larger corpus must not leave feeds behind (the parse-only floor reads them all).
    current = {Path(m["path"]).name for m in manifest}
    for stale in (corpus / "feeds").iterdir():
        if stale.name.removesuffix(".gz") not in current:
            stale.unlink()
    truth_lines = [
        json.dumps({"story": f"s{story}", "copies": copies}, sort_keys=True)
        for story, copies in sorted(truth.items())
        if len(copies) > 1
    ]
    write_if_changed(corpus / "truth.jsonl", ("\n".join(truth_lines) + "\n").encode())
    stats = {
        "seed": seed,
        "feeds": n_feeds,
        "round": round_number,
        "port": port,
        "hosts": hosts,
        "entries": entries,
        "stories": len(truth),
        "syndicated_stories": len(truth_lines),
        "bytes": total_bytes,
    }
    write_if_changed(
        corpus / "manifest.json", json.dumps({**stats, "files": manifest}, indent=1).encode()
    )
    write_if_changed(out / "feeds.yaml", feeds_yaml([m["url"] for m in manifest]).encode())
    return {**stats, "files_written": written}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=2000, help="number of feeds (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--mutate", type=int, default=0, metavar="ROUND", help="apply mutation rounds 1..ROUND"
    )
    parser.add_argument("--port", type=int, default=8731, help="nginx port in the feed URLs")
    parser.add_argument(
        "--hosts", type=int, default=50, help="loopback addresses to spread feeds over"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)
    stats = generate(args.out, args.seed, args.feeds, args.mutate, args.port, args.hosts)
    print(json.dumps(stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
