"""Item identity and story matching: entry keys, content hashes, near-duplicate decisions. No I/O.

Two levels (CONTRACT.md "One story, one item" and "Same story"):

- `entry_key` names an entry within its feed, so a re-polled entry updates its item instead of
  adding a new one; `content_hash` tells whether it was edited.
- Across feeds, a new item is one story with a stored one when their canonical links agree
  (store.py compares `Item.canonical_link`, skipping `urls.is_homepage` links) or when
  `is_same_story` says their texts are near-identical. The store finds the candidates to verify
  by the keys `index_keys` gives each item: it saves them for every stored item and looks up the
  new item's keys.

Texts are compared as word sequences (`words`): NFKC, case-folded, punctuation dropped, so
re-wrapped or re-punctuated copies read the same. Matching is by shingles (runs of
`SHINGLE_SIZE` words) and is deliberately strict, because merging two different stories hides
one of them (precision first).
"""

from __future__ import annotations

import array
import bisect
import functools
import hashlib
import html
import itertools
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from aggregator.model import Item, ParsedEntry
from aggregator.urls import canonical_url, is_homepage

__all__ = [
    "KEY_SCHEME",
    "SHINGLE_SIZE",
    "Candidate",
    "StoredStory",
    "StoryChange",
    "content_hash",
    "edit",
    "entry_key",
    "lookup_link",
    "match",
    "merge",
    "index_keys",
    "is_page_of_several",
    "is_same_story",
    "normalize_text",
    "sampled_shingles",
    "shingles",
    "story_title",
    "title_relation",
    "title_key",
    "titles_agree",
    "winnowed_shingles",
    "words",
]

#: names the scheme of `index_keys`: the store keeps the scheme its keys were made with and
#: re-indexes every stored item when this changes, so change it with `index_keys`
KEY_SCHEME = "4"
#: words per shingle: long enough that unrelated texts share almost none, short enough that
#: one changed word spoils only a few
SHINGLE_SIZE = 5
#: an excerpt must have this many words before "is a prefix of" counts as evidence
MIN_PREFIX_WORDS = 25
#: texts shorter than this (one-line summaries) also need agreeing titles
SHORT_TEXT_WORDS = 30
#: share of the shorter text's shingles that must occur in the longer one. Copies made by
#: adding a byline or dateline, trimming the end or cutting an excerpt keep every shingle of
#: the common part, so only the added edge words count against them: 0.8 lets a 6-word byline
#: through on a 60-word text; two different stories do not reach it unless most of the shorter
#: one is shared text (and then the interior rule below still applies)
MIN_CONTAINMENT = 0.8
#: words of the shorter text, away from its start and end, that may be missing from the longer
#: one: one per this many words. Copies differ at the edges (bylines, datelines, trimmed
#: endings); items generated from one template differ in the middle (names, numbers), so
#: texts under 100 words get no interior difference at all
WORDS_PER_INTERIOR_DIFFERENCE = 100
#: words the longer text may have before the shorter one's text starts in it (a byline, a
#: dateline, an editor's note). A copy starts near the top; a digest or round-up that quotes a
#: short item further down is a different story
MAX_LEAD_WORDS = 60
#: Title evidence (`title_relation`): when the titles name the same story, less of the text
#: must agree, and the edge and interior rules (made for copies that differ only at their
#: edges) are replaced by one that matters: no number substituted. Copies that republish a
#: release or a generated article under its own title reorder, cut and pad it (a MarketBeat
#: network item on two sites shares 60-90 % of its shingles); different stories from one
#: template carry different titles (another holder, company, rating or day), and stories
#: that share a title's words but not its text (two outlets' own articles on one event)
#: share at most about half their shingles on the development data. Share of the shorter
#: text's distinct shingles that must occur in the longer one when the titles are the same
#: (or one is the other cut short):
SAME_TITLE_CONTAINMENT = 0.5
#: … and when most of their words are shared (`SIMILAR_TITLE_WORDS`)
SIMILAR_TITLE_CONTAINMENT = 0.65
#: share of the shorter title's distinct words found in the other for "similar" titles
SIMILAR_TITLE_WORDS = 0.75
#: titles shorter than this (in words) are no evidence: "Update", "Markets today"
MIN_TITLE_WORDS = 4
#: an uncovered run of at most this many words between agreeing text is a substitution
#: (a name or a number swapped in a template), not a section one copy lacks
MAX_SUBSTITUTION_WORDS = 4
#: with the titles' help, words swapped for others (a scraper's light rewording: "requires"
#: → "needs") may be one in this many; a figure swapped is never a copy
WORDS_PER_SUBSTITUTION = 25
#: index keys: one shingle in this many is sampled (by hash value, so containment survives)
SAMPLE_MODULUS = 8
#: at most this many sampled shingles per item (the smallest hashes)
MAX_SAMPLED_KEYS = 8
#: index keys: the text's first words, where a copy's text begins, are winnowed
LEAD_KEY_WORDS = 100
#: … in windows of this many shingles (a shared run of 14 words shares a key, one of 34
#: three: a copy with up to 60 words added before it shares 40 with its original there)
WINNOW_WINDOW = 10

_APOSTROPHES = re.compile("['\u2019\u02bc]")
# soft hyphen, zero-width space/joiners, word joiner, BOM: invisible, may split a word
_INVISIBLE = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff]")
_WORD = re.compile(r"\w+")
_TAG = re.compile(r"<[^>]*>")
_DIGIT = re.compile(r"\d")
_DIGIT_RUN = re.compile(r"\d+")


# --- normalisation -----------------------------------------------------------------------


#: ASCII text's words by `str.translate` and `str.split`, 3× faster than the pattern: every
#: character `\w` does not match becomes a space, the apostrophe goes
_ASCII_NON_WORD: dict[int, str | None] = {
    code: " " for code in range(128) if not (chr(code).isalnum() or chr(code) == "_")
}
_ASCII_NON_WORD[ord("'")] = None


def words(text: str) -> list[str]:
    """The words of plain text: NFKC, case-folded, apostrophes joined, other punctuation dropped."""
    if text.isascii():  # most text: NFKC is the identity and nothing is invisible
        # what _WORD.findall(_APOSTROPHES.sub("", text.lower())) gives, faster
        return text.lower().translate(_ASCII_NON_WORD).split()
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WORD.findall(_APOSTROPHES.sub("", _INVISIBLE.sub("", text)))


def normalize_text(text: str) -> str:
    """`words(text)` joined by single spaces."""
    return " ".join(words(text))


#: "UPDATE: ", "Analysis: ", "Exclusive - ": a label of at most 3 words before the headline
_TITLE_LABEL = re.compile(r"^\s*[^\W\d][^:|\n]{0,30}?\s*:\s+(?=\S)")
#: " | The Global Herald", " | MarketScreener": the outlet's name after the headline
_TITLE_SITE = re.compile(r"\s+\|\s+[^|]{1,60}$")


def story_title(title: str) -> list[str]:
    """The words of a headline without what outlets add around it: a label before it
    ("UPDATE:", "Analysis:") and their own name after a bar (" | The Global Herald")."""
    label = _TITLE_LABEL.match(title)
    if label and len(label.group(0).split()) <= 3 and len(words(title[label.end() :])) >= 3:
        title = title[label.end() :]
    site = _TITLE_SITE.search(title)
    if site and len(site.group(0).split()) <= 7 and len(words(title[: site.start()])) >= 3:
        title = title[: site.start()]
    return words(title)


def title_relation(a_title: str, b_title: str) -> str | None:
    """ "same" when the headlines (`story_title`) are equal or one is the other cut short
    (aggregators truncate: "… Chief Financial Of"); "similar" when most words of the
    shorter occur in the other; else None. A number in the shorter headline that the other
    lacks makes them neither: "Sells 4,692 Shares" and "Sells 2,230 Shares" differ."""
    a, b = story_title(a_title), story_title(b_title)
    short, long = sorted((a, b), key=len)
    if len(short) < MIN_TITLE_WORDS:
        return None
    if not {w for w in short if _DIGIT.search(w)} <= {w for w in long if _DIGIT.search(w)}:
        return None
    if short == long or _is_cut_short(a, b) or _is_cut_short(b, a):
        return "same"
    distinct = set(short)
    if len(distinct & set(long)) >= SIMILAR_TITLE_WORDS * len(distinct):
        return "similar"
    return None


def _is_cut_short(short: list[str], long: list[str]) -> bool:
    last = len(short) - 1
    return (
        len(short) <= len(long)
        and short[:last] == long[:last]
        and long[last].startswith(short[last])
    )


def content_hash(title: str, text: str) -> str:
    """Hex digest of title and text that changes when either is edited.

    Only whitespace (re-wrapping, indentation) and Unicode normalisation form are ignored: a
    fixed typo, a changed number or capitalisation is an edit the reader may want to see.
    """
    normal = [" ".join(unicodedata.normalize("NFC", part).split()) for part in (title, text)]
    return _digest("\x00".join(normal).encode("utf-8", "surrogatepass"), size=16).hex()


# --- identity within a feed --------------------------------------------------------------


def entry_key(entry: ParsedEntry) -> str:
    """The entry's identity within its feed, stable across polls and restarts.

    "id:" + the entry id (surrounding whitespace ignored, case kept: ids are opaque); else
    "link:" + the canonical link; else "hash:" + a hash of the title and text words. Ids and
    links that only name the site's home page are skipped: feeds that give every entry the
    same home-page link would otherwise collapse into one item.
    """
    entry_id = (entry.entry_id or "").strip()
    if entry_id and not _is_homepage_link(entry_id):
        return "id:" + entry_id
    link = (entry.link or "").strip()
    if link and not is_homepage(link):
        return "link:" + canonical_url(link)
    body = entry.content_html or entry.summary_html
    text = normalize_text(entry.title) + "\x00" + normalize_text(_html_to_text(body))
    return "hash:" + _digest(text.encode("utf-8", "surrogatepass"), size=16).hex()


def _is_homepage_link(value: str) -> bool:
    try:
        has_host = bool(urlsplit(value).netloc)
    except ValueError:
        return False
    return has_host and is_homepage(value)


def _html_to_text(markup: str) -> str:
    """Crude, but enough for a hash: the words matter, not the layout."""
    return html.unescape(_TAG.sub(" ", markup))


# --- near-duplicate detection --------------------------------------------------------------


def shingles(words: Sequence[str], size: int = SHINGLE_SIZE) -> set[int]:
    """Hashes of every run of `size` words, as signed 64-bit ints (SQLite INTEGER).

    A text shorter than `size` words is one shingle; an empty one has none. Stable across runs
    and platforms (built on blake2b, not Python's salted hash()); about 1.5 ms for 5,000 words.
    """
    return set(_shingle_list(words, size))


def index_keys(title: str, text: str) -> set[int]:
    """The keys under which the store indexes an item, and looks up candidates for a new one.

    Two items that `is_same_story` could match share a key:
    - `winnowed_shingles` of the text's first `LEAD_KEY_WORDS` words: one in every window of
      `WINNOW_WINDOW` shingles, chosen by value, so two texts that share a run of
      `WINNOW_WINDOW + SHINGLE_SIZE - 1` words there share a key. A copy starts near the
      top of its original, whatever was added before it (a dateline, "This article first
      appeared on …"), and an excerpt is its start;
    - `sampled_shingles` (at most `MAX_SAMPLED_KEYS`, the smallest): for copies that
      share their text but not its start (sections reordered or cut);
    - a key for the headline (`story_title`: without "UPDATE:" or " | Outlet"), for short
      texts and for copies the title rules match.
    """
    text_words = words(text)
    if len(text_words) < SHINGLE_SIZE:
        # one shingle or none: the whole sample, and the lead's one key
        keys = set(_shingle_list(text_words))
    else:
        keys = _text_keys(text_words)
    key = title_key(title)
    if key is not None:
        keys.add(key)
    return keys


def _text_keys(text_words: list[str]) -> set[int]:
    """The smallest `MAX_SAMPLED_KEYS` of `sampled_shingles(text_words)` and
    `winnowed_shingles(text_words[:LEAD_KEY_WORDS])`, for a text of `SHINGLE_SIZE` words
    or more: the same keys, computed together. The lead's shingles are hashed all at once
    (`_shingles_in_lanes`), each sampled one in one expression (the rolling hash's
    polynomial written out) rather than a loop over its words. numpy did this in a third
    of the time, but cost each parse worker 17 MB."""
    h = list(map(_word_hash, text_words))
    mask = _MASK64
    p4, p3, p2, p1 = _SHINGLE_POWERS
    count = len(h) - SHINGLE_SIZE + 1
    lead_count = min(count, LEAD_KEY_WORDS - SHINGLE_SIZE + 1)
    lead = _shingles_in_lanes(h[: lead_count + SHINGLE_SIZE - 1])
    # anchors by the words' cached flags (no arithmetic per word); those in the lead
    # take the lead's shingles rather than hashing them again
    anchors = list(itertools.compress(range(count), map(_is_anchor_word, text_words)))
    in_lead = bisect.bisect_left(anchors, lead_count)
    sampled = [lead[i] for i in anchors[:in_lead]]
    sampled += _finished(
        [
            (h[i] * p4 + h[i + 1] * p3 + h[i + 2] * p2 + h[i + 3] * p1 + h[i + 4]) & mask
            for i in anchors[in_lead:]
        ]
    )
    keys = set(sorted(set(sampled))[:MAX_SAMPLED_KEYS])
    if lead_count <= WINNOW_WINDOW:
        keys.add(min(lead))
        return keys
    # the minimum of each window: min of the window's k-th shingles, k = 0 … WINNOW_WINDOW - 1
    windows = lead_count - WINNOW_WINDOW + 1
    keys.update(map(min, *(lead[k : k + windows] for k in range(WINNOW_WINDOW))))
    return keys


#: the low 64 bits of each 128-bit lane of `_shingles_in_lanes`' integers
_LANE_LOW_BITS = int.from_bytes((b"\xff" * 8 + bytes(8)) * LEAD_KEY_WORDS, "little")


def _shingles_in_lanes(hashes: list[int]) -> list[int]:
    """`_finished` hashes of each shingle of the word hashes `hashes` (SHINGLE_SIZE to
    LEAD_KEY_WORDS of them), computed for all shingles at once: each word hash in a
    128-bit lane of one integer, so that the polynomial and the finishing mix are a dozen
    operations on that integer rather than a dozen per shingle (the lead's 96 shingles in
    a third of the time). A lane's high 64 bits are zero before each product (every
    operand is masked to the low 64), so no product carries into the next lane; a shift
    right by 128 bits moves every lane one word along."""
    count = len(hashes)
    lanes = array.array("q", bytes(16 * count))
    lanes[::2] = array.array("q", hashes)  # two's complement: the value modulo 2**64
    if sys.byteorder == "big":
        lanes.byteswap()
    words = int.from_bytes(lanes, "little")
    low = _LANE_LOW_BITS
    p4, p3, p2, p1 = _SHINGLE_POWERS
    value = (
        ((words * p4) & low)
        + (((words >> 128) * p3) & low)
        + (((words >> 256) * p2) & low)
        + (((words >> 384) * p1) & low)
        + (words >> 512)
    ) & low
    value = (((value ^ (value >> 31)) & low) * _MIX) & low
    value ^= (value >> 29) & low
    finished = array.array("q", value.to_bytes(16 * count, "little"))
    if sys.byteorder == "big":
        finished.byteswap()
    # the low halves, as signed 64-bit ints; the last SHINGLE_SIZE - 1 lanes start no shingle
    return finished[: 2 * (count - SHINGLE_SIZE + 1) : 2].tolist()


def title_key(title: str) -> int | None:
    """The index key of a headline (`story_title`), None for an empty one."""
    headline = story_title(title)
    if not headline:
        return None
    return _signed64(_digest(b"title\x00" + " ".join(headline).encode()))


def winnowed_shingles(words: Sequence[str], window: int = WINNOW_WINDOW) -> set[int]:
    """The smallest shingle hash of every `window` consecutive shingles (winnowing): texts
    sharing a run of `window + SHINGLE_SIZE - 1` words share one of these."""
    hashes = _shingle_list(words)
    if len(hashes) <= window:
        return {min(hashes)} if hashes else set()
    return {min(hashes[i : i + window]) for i in range(len(hashes) - window + 1)}


def sampled_shingles(words: Sequence[str], size: int = SHINGLE_SIZE) -> set[int]:
    """The shingles that start at an anchor word (one word in `SAMPLE_MODULUS`, chosen by the
    word's hash). Choosing by the first word rather than by the shingle's own hash gives the
    same containment property while hashing only the sampled shingles: 8× less work on the
    path every new entry takes."""
    if len(words) < size:
        return set(_shingle_list(words, size))
    hashes = list(map(_word_hash, words))
    mask, multiplier = _MASK64, _MULTIPLIER
    modulus = SAMPLE_MODULUS
    anchors = [i for i, value in enumerate(hashes[: len(hashes) - size + 1]) if not value % modulus]
    rolling_hashes = []
    for start in anchors:
        rolling = 0
        for value in hashes[start : start + size]:
            rolling = (rolling * multiplier + value) & mask
        rolling_hashes.append(rolling)
    return set(_finished(rolling_hashes))


def titles_agree(a_title: str, b_title: str) -> bool:
    """Normalised titles are equal, or one is a run of words inside the other."""
    a_words, b_words = words(a_title), words(b_title)
    if not a_words or not b_words:
        return False
    shorter, longer = sorted((a_words, b_words), key=len)
    return f" {' '.join(shorter)} " in f" {' '.join(longer)} "


def is_same_story(
    a_title: str, a_text: str, b_title: str, b_text: str, *, same_feed: bool = False
) -> bool:
    """Whether two items are copies of one story (CONTRACT.md "Same story"). Symmetric.

    By text alone: the shorter text (in words) is an excerpt of the longer one (a prefix of
    at least `MIN_PREFIX_WORDS` words, its last word possibly cut), or most of its shingles
    (`MIN_CONTAINMENT`) occur in the longer text, starting near its top (`MAX_LEAD_WORDS`),
    while it differs from it only at its edges (`WORDS_PER_INTERIOR_DIFFERENCE`) and never
    by a number. Texts under `SHORT_TEXT_WORDS` words also need `titles_agree`.

    With the titles' help (`title_relation`): "same" headlines need
    `SAME_TITLE_CONTAINMENT` of the shorter text's shingles in the longer, "similar" ones
    `SIMILAR_TITLE_CONTAINMENT`, wherever they are, and no number substituted between
    agreeing text. An empty text matches nothing.

    `same_feed`: both come from one feed, under different entry keys. One outlet puts the
    same byline, dateline and trailer on all its items, so texts that each have their own
    words at the same edge are not one story with two outlets' additions but two stories
    sharing the feed's standfirst or footer (a podcast's episodes, a newsletter's issues).
    """
    a, b = _compared_text(a_text), _compared_text(b_text)
    if not a.words or not b.words:
        return False
    # order by content, not by argument position, so the answer is symmetric
    short_text, long_text = sorted((a, b), key=lambda text: (len(text.words), text.words))
    short, long = short_text.words, long_text.words
    if len(short) < SHORT_TEXT_WORDS and not titles_agree(a_title, b_title):
        return False
    if _is_excerpt(short, long):
        return True
    short_shingles = short_text.shingles()
    long_positions = long_text.positions()
    found = [key in long_positions for key in short_shingles]
    if _is_contained(short, long, short_shingles, found, long_positions, same_feed):
        return True
    relation = title_relation(a_title, b_title)
    if relation is None or len(short) < SHORT_TEXT_WORDS:
        return False
    needed = SAME_TITLE_CONTAINMENT if relation == "same" else SIMILAR_TITLE_CONTAINMENT
    return _containment(short_shingles, found) >= needed and not _is_template_fill(
        short, short_shingles, found, long, long_positions
    )


class _ComparedText:
    """A text as `is_same_story` compares it: its words, and (when asked) its shingles in
    order and the position of each shingle's first occurrence."""

    __slots__ = ("words", "_shingles", "_positions")

    def __init__(self, text: str) -> None:
        self.words = words(text)
        self._shingles: list[int] | None = None
        self._positions: dict[int, int] | None = None

    def shingles(self) -> list[int]:
        if self._shingles is None:
            self._shingles = _shingle_list(self.words)
        return self._shingles

    def positions(self) -> dict[int, int]:
        if self._positions is None:
            positions: dict[int, int] = {}
            for position, key in enumerate(self.shingles()):
                positions.setdefault(key, position)
            self._positions = positions
        return self._positions


#: a new item is compared with each of its candidates, and a story's text with each copy
#: that arrives: each text is read into words and shingles once, not once per comparison
_compared_text = functools.lru_cache(maxsize=32)(_ComparedText)


def _containment(short_shingles: list[int], found: list[bool]) -> float:
    """Share of the distinct shingles of the shorter text found in the other text."""
    distinct = set(short_shingles)
    found_distinct = {key for key, is_found in zip(short_shingles, found, strict=True) if is_found}
    return len(found_distinct) / len(distinct) if distinct else 0.0


def _substitutions(
    short: list[str],
    shingles: list[int],
    found: list[bool],
    long: list[str],
    long_positions: dict[int, int],
) -> list[tuple[list[str], list[str]]]:
    """Short runs of `short` (at most `MAX_SUBSTITUTION_WORDS` words) that the other text
    lacks, between runs it has, where the other text has other words between the same
    runs: (these words, the other's). A template filled in for another story differs so
    (another figure, name or day); a copy that drops a clause or a section does not."""
    covered = _covered(short, found)
    found_runs = []
    position, end = 0, len(short)
    while position < end:
        if covered[position]:
            position += 1
            continue
        run_end = position
        while run_end < end and not covered[run_end]:
            run_end += 1
        if (
            position >= SHINGLE_SIZE
            and run_end < len(shingles)
            and run_end - position <= MAX_SUBSTITUTION_WORDS
        ):
            # the agreeing runs on either side are found shingles: where they are in `long`
            after_left = long_positions[shingles[position - SHINGLE_SIZE]] + SHINGLE_SIZE
            right = long_positions[shingles[run_end]]
            if 0 < right - after_left <= MAX_SUBSTITUTION_WORDS:
                found_runs.append((short[position:run_end], long[after_left:right]))
        position = run_end
    return found_runs


def _is_template_fill(
    short: list[str],
    short_shingles: list[int],
    found: list[bool],
    long: list[str],
    long_positions: dict[int, int],
) -> bool:
    """Whether the texts read as one template filled in twice: a figure substituted (a
    number for another one; "40th" written "40" is the same figure), or more words
    substituted than a light rewording explains (one per `WORDS_PER_SUBSTITUTION`)."""
    substitutions = _substitutions(short, short_shingles, found, long, long_positions)
    for ours, theirs in substitutions:
        if _figures(ours) != _figures(theirs):
            return True
    return len(substitutions) > len(short) // WORDS_PER_SUBSTITUTION


#: a figure: digits, maybe with an ordinal or a scale ("14th", "5m"); not a model name
_FIGURE = re.compile(r"\d+(?:st|nd|rd|th|s|k|m|bn)?")


def _figures(words: list[str]) -> set[str]:
    """The figures among `words`, as digits ("40th" and "40" are one figure)."""
    return {"".join(ch for ch in word if ch.isdigit()) for word in words if _FIGURE.fullmatch(word)}


def _covered(short: list[str], found: list[bool]) -> list[bool]:
    """For each word of `short`, whether a shingle found in the other text holds it."""
    covered = [False] * len(short)
    size = min(SHINGLE_SIZE, len(short))
    for start, is_found in enumerate(found):
        if is_found:
            for position in range(start, start + size):
                covered[position] = True
    return covered


def _is_excerpt(short: list[str], long: list[str]) -> bool:
    return len(short) >= MIN_PREFIX_WORDS and _is_cut_short(short, long)


def _is_contained(
    short: list[str],
    long: list[str],
    short_shingles: list[int],
    found: list[bool],
    long_positions: dict[int, int],
    same_feed: bool = False,
) -> bool:
    if not any(found) or _containment(short_shingles, found) < MIN_CONTAINMENT:
        return False
    first = found.index(True)
    last = len(found) - 1 - found[::-1].index(True)
    long_first = long_positions[short_shingles[first]]
    long_last = long_positions[short_shingles[last]]
    if long_first - first > MAX_LEAD_WORDS:
        return False
    if len(short) < SHINGLE_SIZE:  # one shingle, and it was found
        return True
    if same_feed and (
        (first > 0 and long_first > 0)
        or (last + SHINGLE_SIZE < len(short) and long_last + SHINGLE_SIZE < len(long))
    ):
        return False  # each has its own words at one edge: one feed's two items
    # Words before and after the common part: an addition (byline, dateline, trailer) when
    # the other text has nothing there, else a replacement, which must not change a number.
    if _changes_a_number(short[:first], long[:long_first]) or _changes_a_number(
        short[last + SHINGLE_SIZE :], long[long_last + SHINGLE_SIZE :], last_may_be_cut=True
    ):
        return False
    differing = _interior_uncovered_words(short, found)
    if any(_DIGIT.search(word) for word in differing):
        return False
    return len(differing) <= len(short) // WORDS_PER_INTERIOR_DIFFERENCE


def _changes_a_number(
    edge: list[str], other_edge: list[str], last_may_be_cut: bool = False
) -> bool:
    """Whether `edge` has a number that the other text's words at the same place lack.

    A number the other edge holds inside a word counts as there: two copies of one story,
    one opening "By Kofi Rossi, Northfield Post 145", the other "Originally published at
    https://www.northfieldpost145.example/…", name the same outlet. With
    `last_may_be_cut`, the last word may be the start of one (an excerpt cut at "6…" of
    "600").
    """
    if not other_edge:
        return False
    other_words = set(other_edge)
    if _is_swapped_edge(edge, other_words):
        return False
    other_digits = {run for word in other_edge for run in _DIGIT_RUN.findall(word)}
    for index, word in enumerate(edge):
        if not _DIGIT.search(word) or word in other_words:
            continue
        if set(_DIGIT_RUN.findall(word)) <= other_digits:
            continue
        is_last = index == len(edge) - 1
        if not (last_may_be_cut and is_last and any(o.startswith(word) for o in other_edge)):
            return True
    return False


#: edges of at least this many words that share almost none are different additions
MIN_SWAPPED_EDGE_WORDS = 4


def _is_swapped_edge(edge: list[str], other_words: set[str]) -> bool:
    """Whether the two texts' edges are different additions rather than one sentence with
    another figure: each outlet's own trailer or byline ("Hillcrest Daily 98 is a member
    of the Regional Press Association" where the other has "Get our morning briefing"),
    sharing at most one word in five. A figure changed in place keeps the words around
    it ("a high of 21 degrees" against "a high of 23 degrees")."""
    if len(edge) < MIN_SWAPPED_EDGE_WORDS or len(other_words) < MIN_SWAPPED_EDGE_WORDS:
        return False
    shared = sum(word in other_words for word in edge)
    return shared * 5 <= len(edge)


def _interior_uncovered_words(short: list[str], found: list[bool]) -> list[str]:
    """Words of `short` in no shingle found in the other text, except at its start and end."""
    covered = _covered(short, found)
    first = covered.index(True)
    last = len(covered) - 1 - covered[::-1].index(True)
    return [short[i] for i in range(first, last + 1) if not covered[i]]


#: shingle hashes are a rolling polynomial over per-word hashes: one blake2b per distinct
#: word (cached) instead of one per shingle, about 5× faster on long texts
_MASK64 = (1 << 64) - 1
_MULTIPLIER = 0x100000001B3  # FNV-64 prime: odd, so the low bits of a shingle mix all words
_MIX = 0x9E3779B97F4A7C15
#: the weights of a shingle's words in its rolling hash, first word first (`_text_keys`)
_SHINGLE_POWERS = tuple(pow(_MULTIPLIER, n, 1 << 64) for n in range(SHINGLE_SIZE - 1, 0, -1))
assert SHINGLE_SIZE == 5, "_text_keys writes a shingle's polynomial out for 5 words"


class _WordHashes(dict[str, int]):
    """Word → its hash, computed on first use. Signed 64-bit, so that arrays take them as
    they are (`_text_keys`); shingles and the sample use them modulo 2**64 and modulo
    `SAMPLE_MODULUS`, where a signed value and its unsigned bits are the same. A dict
    rather than an lru_cache: looked up for every word of every text, in half the time.
    Emptied when full."""

    def __missing__(self, word: str) -> int:
        if len(self) >= _MAX_WORD_HASHES:
            self.clear()
        digest = hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        value = self[word] = int.from_bytes(digest, "little", signed=True)
        return value


_MAX_WORD_HASHES = 1 << 16
_word_hash = _WordHashes().__getitem__


class _AnchorWords(dict[str, bool]):
    """Word → whether shingles starting at it are sampled (its hash is 0 modulo
    `SAMPLE_MODULUS`), computed on first use: `_text_keys` finds a text's anchors by C-level
    lookups instead of an arithmetic test per word. Emptied when full."""

    def __missing__(self, word: str) -> bool:
        if len(self) >= _MAX_WORD_HASHES:
            self.clear()
        flag = self[word] = not _word_hash(word) % SAMPLE_MODULUS
        return flag


_is_anchor_word = _AnchorWords().__getitem__


def _shingle_list(words: Sequence[str], size: int = SHINGLE_SIZE) -> list[int]:
    """Shingle hashes in text order (with repeats), stable across runs and platforms."""
    if not words:
        return []
    hashes = [_word_hash(word) for word in words]
    if len(words) < size:
        size = len(words)
    mask, multiplier = _MASK64, _MULTIPLIER
    leading = pow(multiplier, size - 1, 1 << 64)  # weight of the word leaving the window
    rolling = 0
    for value in hashes[:size]:
        rolling = (rolling * multiplier + value) & mask
    windows = [rolling]
    for old, new in zip(hashes, hashes[size:], strict=False):
        rolling = ((rolling - old * leading) * multiplier + new) & mask
        windows.append(rolling)
    return _finished(windows)


def _finished(values: list[int]) -> list[int]:
    """Each rolling hash finished: all 64 bits mixed into the low ones (the sample takes
    hash mod 8), made a signed 64-bit int for SQLite. In one loop, not a call per
    shingle: that was a third of the time."""
    mix, mask, sign, wrap = _MIX, _MASK64, 1 << 63, 1 << 64
    finished = []
    for value in values:
        value = ((value ^ (value >> 31)) * mix) & mask
        value ^= value >> 29
        finished.append(value - wrap if value >= sign else value)
    return finished


def _digest(data: bytes, size: int = 8) -> bytes:
    return hashlib.blake2b(data, digest_size=size).digest()


def _signed64(digest: bytes) -> int:
    return int.from_bytes(digest, "little", signed=True)


# --- decisions the store applies -----------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A stored story a new item may be a copy of, as the store found it."""

    id: str
    title: str = ""
    text: str = ""
    #: found by the item's `lookup_link`: the same article, whatever the texts say
    same_link: bool = False
    #: the feed this version of the story came from ("" when unknown)
    feed_url: str = ""


@dataclass(frozen=True)
class StoredStory:
    """What `merge` and `edit` need to know of a stored story."""

    id: str
    published: datetime
    updated: datetime
    #: the outlet whose copy is published (the first seen, or the earliest in its round)
    lead_feed_url: str
    #: the poll round in which the story was first stored (see pipeline.Poller)
    first_round: str | None


@dataclass(frozen=True)
class StoryChange:
    """What a copy or an edit changes in a stored story; nothing when every field is None."""

    #: the story's text, title and links become this item's (a new lead or the lead's edit)
    text_from: Item | None = None
    #: the outlet that now leads, when it changes
    lead_feed_url: str | None = None
    published: datetime | None = None
    updated: datetime | None = None


def lookup_link(item: Item) -> str | None:
    """The link under which a stored copy of the same article is looked up, if it has one
    that names an article (a home page names every story of its site)."""
    if item.canonical_link and not is_homepage(item.canonical_link):
        return item.canonical_link
    return None


def is_page_of_several(item: Item, same_feed_titles: Iterable[str]) -> bool:
    """Whether `item`'s link names a page that holds several of its feed's entries rather
    than one article: the titles of the feed's other entries (other entry keys) with the
    same canonical link, and one of them is another headline (`titles_agree`). A podcast
    linking every episode to the show's page, a live blog each of whose updates links to
    a fragment of it, a section's landing page: the link is then no evidence, and the
    texts decide. The same headline under the same link is the entry given a new id."""
    return any(not titles_agree(item.title, title) for title in same_feed_titles)


def match(item: Item, candidates: Iterable[Candidate]) -> list[str]:
    """The ids of the stored stories that are `item`'s story, best first: it joins the
    first, and the others are the same story stored apart (copies that did not match
    each other, both found before the one that matches both), which join it too.
    Candidates come lazily, the cheapest first; a story already matched is not compared
    again."""
    matched: list[str] = []
    for candidate in candidates:
        if candidate.id in matched:
            continue
        if candidate.same_link or is_same_story(
            item.title,
            item.text,
            candidate.title,
            candidate.text,
            same_feed=candidate.feed_url == item.feed_url,
        ):
            matched.append(candidate.id)
    return matched


def merge(story: StoredStory, copy: Item, round_id: str) -> StoryChange:
    """A further copy of a stored story. The story's published date becomes the earliest.
    A copy from the round that first stored the story takes the lead when it was published
    earlier (ties: by feed URL): within a round, which copy is "first seen" depends on which
    server answered faster, and the same round must give the same story in any order."""
    if story.first_round == round_id and (copy.published, copy.feed_url) < (
        story.published,
        story.lead_feed_url,
    ):
        return StoryChange(
            text_from=copy,
            lead_feed_url=copy.feed_url,
            published=copy.published,
            updated=copy.updated,
        )
    if copy.published < story.published:
        return StoryChange(published=copy.published)
    return StoryChange()


def edit(story: StoredStory, item: Item, now: datetime) -> StoryChange:
    """An entry already stored came back with another content hash. Only the lead outlet's
    edits change the published story, so two outlets' versions never take turns. Feeds
    often edit without moving their own date; then the edit's time is now."""
    if item.feed_url != story.lead_feed_url:
        return StoryChange()
    updated = item.updated if item.updated > story.updated else max(now, story.updated)
    return StoryChange(text_from=item, updated=updated)
