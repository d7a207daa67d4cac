"""ParsedEntry → Item: sanitize HTML, strip boilerplate, make text and excerpt, fix dates. No I/O.

Order per HTML field: strip_boilerplate (lxml, needs the publisher's classes) →
sanitize_html (nh3 allowlist, absolute URLs, no tracking pixels) → html_to_text.
nh3 runs last so nothing the boilerplate pass serializes can reintroduce markup.

The entry key comes in (computed once, before cleaning) and the dedupe keys of the item
(content hash, index keys) are added after it (`ingest.with_dedupe_keys`): cleaning
computes neither.
"""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import datetime
from urllib.parse import urljoin, urlsplit

import lxml.etree
import lxml.html
import nh3

from aggregator.model import Item, ParsedEntry
from aggregator.nesting import exceeds_limits, markup_text
from aggregator.text import single_line
from aggregator.timeutil import to_utc
from aggregator.urls import canonical_url, publishable_url, strip_tracking

# --- sanitizing --------------------------------------------------------------------

#: ordinary article markup; anything else is unwrapped (its text kept)
ALLOWED_TAGS = frozenset(
    {
        *("p", "br", "hr", "div", "span", "small", "sub", "sup", "time", "abbr"),
        *("a", "em", "strong", "b", "i", "u", "s", "del", "ins", "mark", "q", "cite"),
        *("code", "pre", "kbd", "samp", "var", "blockquote"),
        *("ul", "ol", "li", "dl", "dt", "dd"),
        *("h1", "h2", "h3", "h4", "h5", "h6"),
        *("img", "picture", "figure", "figcaption"),
        *("table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption"),
    }
)
#: removed together with everything inside them
REMOVED_WITH_CONTENT = frozenset(
    {
        *("script", "style", "template", "noembed", "noframes"),
        *("iframe", "object", "embed", "applet", "frameset", "frame"),
        *("svg", "math"),
        # newsletter sign-ups and the like: never article text
        *("form", "button", "select", "textarea"),
    }
)
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
    "abbr": {"title"},
    "time": {"datetime"},
    "ol": {"start"},
    "blockquote": {"cite"},
    "q": {"cite"},
}
#: the contract: every URL we publish is http(s) (a mailto: link keeps its text)
URL_SCHEMES = frozenset({"http", "https"})
_URL_ATTRIBUTES = frozenset({"href", "src", "cite"})
_DIMENSION = re.compile(r"\s*(\d+)(?:px)?\s*$")

#: images and links that only count readers or advertise sharing
PIXEL_URLS = re.compile(
    r"""^https?://(
        feeds\.feedburner\.com/~(r|ff|a)/
      | feedproxy\.google\.com/~(r|ff|a)/
      | pixel\.wp\.com/
      | stats\.wordpress\.com/
      | feeds\.wordpress\.com/1\.0/
    )""",
    re.IGNORECASE | re.VERBOSE,
)
# nh3's output is normalized (double-quoted attributes, void <img>), so these are reliable
_ATTRIBUTES = r'(?:\s+[a-z-]+="[^"]*")*'  # a value cannot hold '"'; '>' need not be escaped
_IMG_TAG = re.compile(rf"<img(?P<attributes>{_ATTRIBUTES})\s*/?>")
_ATTRIBUTE = re.compile(r'\s([a-z-]+)="([^"]*)"')
_EMPTY_LINK = re.compile(rf"<a{_ATTRIBUTES}>\s*</a>")
#: a link whose href was refused (javascript:, a tracker): its text stays, unlinked
_BARE_LINK = re.compile(r"<a>(.*?)</a>", re.DOTALL)


#: characters XML 1.0 forbids (our outputs include Atom and RSS) and lone surrogates,
#: which JSON "\ud800" escapes can produce and which cannot be encoded at all
_UNUSABLE_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def remove_unusable_characters(text: str) -> str:
    """`text` without control characters, lone surrogates and non-characters."""
    return _UNUSABLE_CHARACTERS.sub("", text)


def sanitize_html(html_text: str, base_url: str) -> str:
    """`html_text` reduced to ALLOWED_TAGS/ALLOWED_ATTRIBUTES, URLs absolute against `base_url`.

    Scripts, styles, frames, plugins, forms, SVG/MathML and their contents go; so do event
    handlers, URLs other than http(s), tracking pixels, emptied links and characters
    XML cannot carry. Markup that no article has and that would take the parser time
    growing faster than its length (`nesting.exceeds_limits`: too deep, a tag with too
    many attributes, too costly text) is not parsed: only its text is kept.
    """
    html_text = remove_unusable_characters(html_text)
    if not html_text.strip():
        return ""
    if exceeds_limits(html_text):
        return _text_only(html_text)
    return _sanitize(html_text, base_url)


def _sanitize(html_text: str, base_url: str) -> str:
    """`sanitize_html` once `nesting.exceeds_limits` has been asked."""

    def resolve(tag: str, attribute: str, value: str) -> str | None:
        if attribute in ("width", "height"):
            size = _DIMENSION.match(value)
            return size.group(1) if size else None
        if attribute not in _URL_ATTRIBUTES:
            return value
        value = value.strip()
        if "\\" in value:
            return None  # not a URL (RFC 3986); browsers read it as "/", our checks would not
        if _is_plain_absolute(value):
            absolute = value  # most are: urljoin and urlsplit would cost more than nh3 itself
        else:
            absolute = urljoin(base_url, value)
            if not _has_allowed_scheme(absolute):
                return None
        return None if PIXEL_URLS.match(absolute) else absolute

    # link_rel=None: we drop target=, so rel=noopener is moot, and noreferrer would hide
    # from publishers the readers we send them; renderers add rel to their own pages.
    cleaned = nh3.clean(
        html_text,
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(REMOVED_WITH_CONTENT),
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=resolve,
        url_schemes=set(URL_SCHEMES),
        link_rel=None,
        strip_comments=True,
    )
    cleaned = _IMG_TAG.sub(_drop_useless_image, cleaned)
    cleaned = _EMPTY_LINK.sub("", cleaned)
    return _BARE_LINK.sub(r"\1", cleaned).strip()


def _text_only(html_text: str) -> str:
    """The text of markup too costly to parse, as HTML: no element, nothing readable lost."""
    return html.escape(remove_unusable_characters(markup_text(html_text)), quote=False)


def _is_plain_absolute(url: str) -> bool:
    """An http(s) URL that urljoin would return unchanged: no tabs or newlines (which it
    strips), no empty query or fragment (which it drops)."""
    host_at = 8 if url.startswith("https://") else 7 if url.startswith("http://") else 0
    return (
        host_at > 0
        # "https:///pixel.wp.com/…": browsers skip the extra slashes, so the pixel test
        # must see the URL urljoin makes of it
        and url[host_at : host_at + 1] not in ("", "/")
        and url.isprintable()
        and not url.endswith(("#", "?"))
        and "?#" not in url
    )


def _has_allowed_scheme(url: str) -> bool:
    try:
        return urlsplit(url).scheme.lower() in URL_SCHEMES
    except ValueError:
        return False


def _drop_useless_image(match: re.Match[str]) -> str:
    """Drops <img> with no usable src and 1×1 (or smaller) tracking pixels."""
    attributes = dict(_ATTRIBUTE.findall(match.group("attributes")))
    if "src" not in attributes:
        return ""
    width, height = attributes.get("width"), attributes.get("height")
    if width is not None and height is not None and int(width) <= 1 and int(height) <= 1:
        return ""
    return match.group(0)


# --- boilerplate -------------------------------------------------------------------

#: elements (by class or id) that are sharing, liking, related-posts or ad blocks
BOILERPLATE_CLASSES = frozenset(
    {
        "sharedaddy",  # Jetpack sharing and likes
        "sd-sharing-enabled",
        "sd-like",
        "jetpack-likes-widget-wrapper",
        "jp-relatedposts",  # Jetpack related posts
        "jp-post-flair",
        "wp-block-jetpack-sharing-buttons",
        "wp-block-jetpack-related-posts",
        "addtoany_share_save_container",  # AddToAny
        "a2a_kit",
        "shared-counts-wrap",
        "feedflare",  # FeedBurner flare
        "yarpp-related",  # Yet Another Related Posts
        "yarpp-related-rss",
    }
)
BOILERPLATE_IDS = frozenset({"jp-relatedposts", "jp-post-flair"})

#: paragraphs whose whole text is one of these are removed (matched case-insensitively)
BOILERPLATE_PARAGRAPHS = re.compile(
    r"""^(
        the\ post\ .+\ appeared\ first\ on\ .+         # WordPress (Yoast) RSS footer
      | the\ post\ .+\ first\ appeared\ on\ .+         # ClassicPress / newer wording
      | this\ (post|article)\ (was\ )?(originally\ )?(appeared|published)\ (first\ )?on\ .+
      | (share|like)\ this:?                           # Jetpack headings
      | related(\ posts|\ articles)?:?
      | continue\ reading\b.*
      | (read|view)\ more\W*
      | read\ the\ rest\b.*
      | keep\ reading\b.*
      | \[?\s*(…|\.\.\.)\s*\]?
    )$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
#: links whose whole text is one of these are removed wherever they are
BOILERPLATE_LINKS = re.compile(
    r"""^(
        continue\ reading\b.*
      | (read|view)\ more\b.*
      | read\ (on|the\ rest)\b.*
      | keep\ reading\b.*
      | more\W*
      | \[?\s*(…|\.\.\.)\s*\]?
    )$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
#: WordPress's excerpt ellipsis "[…]" at the end of a text
_BRACKETED_ELLIPSIS = re.compile(r"\s*\[\s*(…|\.\.\.|&hellip;|&#8230;)\s*\]\s*$")
_BOILERPLATE_CLASS_NAMES = frozenset({"more-link", *BOILERPLATE_CLASSES})
#: how the text of every boilerplate paragraph or link starts (lower-cased)
_BOILERPLATE_STARTS = (
    *("the post ", "this post ", "this article ", "share", "like this", "related"),
    *("continue reading", "read", "view more", "keep reading", "more", "[", "…", "..."),
)
# The cheap test before the lxml pass works on markup, where text may still hold
# character references: spaces and ellipses are matched in both spellings.
_MARKUP_SPACE = r"(?:\s|&nbsp;|&#160;|&#xa0;)"
#: between two words of a start, tags may come too: "<em>The</em> post … appeared first on"
_MARKUP_GAP = r"(?:\s|&nbsp;|&#160;|&#xa0;|<[^<>]*>)"
#: (the text itself may say "&hellip;", double-escaped feeds do: "&amp;hellip;" in markup)
_MARKUP_ELLIPSIS = r"(?:…|\.\.\.|&hellip;|&#8230;|&#x2026;|&amp;hellip;|&amp;#8230;)"
_BOILERPLATE_START_AFTER_TAG = re.compile(
    rf">{_MARKUP_SPACE}*(?:"
    + "|".join(
        (_MARKUP_GAP + "+").join(re.escape(word) for word in start.split())
        + (_MARKUP_GAP if start.endswith(" ") else "")
        if start not in ("…", "...")
        else _MARKUP_ELLIPSIS
        for start in _BOILERPLATE_STARTS
    )
    + ")",
    re.IGNORECASE,
)
_BRACKETED_ELLIPSIS_MARKUP = re.compile(
    rf"\[{_MARKUP_SPACE}*{_MARKUP_ELLIPSIS}{_MARKUP_SPACE}*\]", re.IGNORECASE
)
_BOILERPLATE_NAMES = tuple(sorted({*_BOILERPLATE_CLASS_NAMES, *BOILERPLATE_IDS}))
#: a text this long decides alone whether it starts like boilerplate
_LONGEST_START = max(len(start) for start in _BOILERPLATE_STARTS)
#: boilerplate blocks are short; longer ones are article text whatever they start with
_MAX_BOILERPLATE_CHARS = 400
#: what may be left of a paragraph after its read-more link is removed
_LEFTOVER = re.compile(r"^[\s\W]*$")
_WHITESPACE = re.compile(r"\s+")


def strip_boilerplate(html_text: str) -> str:
    """`html_text` without sharing blocks, "The post … appeared first on …" footers,
    read-more links and excerpt ellipses. Article text is left as it was."""
    if not _may_hold_boilerplate(html_text):
        return html_text
    try:
        root = lxml.html.fragment_fromstring(html_text, create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return html_text
    changed = False
    for element in list(root.iter()):
        if not isinstance(element.tag, str) or element.getparent() is None:
            continue  # a comment, or already removed with an ancestor
        if _is_boilerplate_element(element):
            _remove(element)
            changed = True
    if _drop_trailing_ellipsis(root):
        changed = True
    if not changed:
        return html_text
    serialized = str(lxml.html.tostring(root, encoding="unicode"))
    # the parent we created: '<div>' … '</div>'
    return serialized[len("<div>") : -len("</div>")].strip()


def _may_hold_boilerplate(html_text: str) -> bool:
    """False when no element can be boilerplate, so the lxml pass can be skipped: no
    boilerplate class or id is named, no element's text starts like boilerplate (text
    starts right after a tag, perhaps after spaces), and there is no bracketed ellipsis."""
    lowered = html_text.lower()
    return (
        any(name in lowered for name in _BOILERPLATE_NAMES)
        or _BOILERPLATE_START_AFTER_TAG.search(html_text) is not None
        or _BRACKETED_ELLIPSIS_MARKUP.search(html_text) is not None
    )


def _is_boilerplate_element(element: lxml.html.HtmlElement) -> bool:
    classes = element.get("class")
    if classes and not _BOILERPLATE_CLASS_NAMES.isdisjoint(classes.split()):
        return True
    if element.get("id") in BOILERPLATE_IDS:
        return True
    tag = element.tag
    if tag == "a":
        patterns = BOILERPLATE_LINKS
    elif tag in ("p", "div", "h2", "h3", "h4", "h5", "h6"):
        patterns = BOILERPLATE_PARAGRAPHS
    else:
        return False
    # Most blocks are article paragraphs: their first text rules them out before the whole
    # text is gathered (the first piece may be short: "<p>The <em>post</em> …").
    first = next((piece for piece in element.itertext() if not piece.isspace()), "")
    head = " ".join(first[:64].split()).lower()  # a prefix of the collapsed whole text
    if len(head) >= _LONGEST_START and not head.startswith(_BOILERPLATE_STARTS):
        return False
    text = _short_text_of(element)
    return bool(text and text.lower().startswith(_BOILERPLATE_STARTS) and patterns.match(text))


def _remove(element: lxml.html.HtmlElement) -> None:
    """Removes `element` but keeps its tail text; then its parent if nothing is left in it."""
    parent = element.getparent()
    element.drop_tree()
    if parent is None or parent.getparent() is None:
        return
    if len(parent) == 0 and _LEFTOVER.match(parent.text_content() or ""):
        _remove(parent)


def _drop_trailing_ellipsis(root: lxml.html.HtmlElement) -> bool:
    """'… the Korean War. […]' → '… the Korean War. …' (no link, no brackets)."""
    last = root
    while len(last) and not (last[-1].tail or "").strip():
        last = last[-1]
    if len(last) and last[-1].tail:
        before: str = last[-1].tail
        after = _BRACKETED_ELLIPSIS.sub(" …", before)
        last[-1].tail = after
    elif last.text:
        before = last.text
        after = _BRACKETED_ELLIPSIS.sub(" …", before)
        last.text = after
    else:
        return False
    return after != before


def _short_text_of(element: lxml.html.HtmlElement) -> str | None:
    """The element's text with whitespace collapsed, or None when it is too long to be
    boilerplate. Stops reading early, so nested blocks don't cost their whole text each."""
    parts = []
    length = 0
    for piece in element.itertext():
        length += len(piece)
        if length > 2 * _MAX_BOILERPLATE_CHARS:  # room for collapsible whitespace
            return None
        parts.append(piece)
    text = " ".join("".join(parts).split())
    return text if len(text) < _MAX_BOILERPLATE_CHARS else None


# --- text --------------------------------------------------------------------------

#: elements whose boundaries separate words
_BLOCK_TAGS = frozenset(
    {
        *("p", "br", "hr", "div", "li", "dt", "dd", "tr", "td", "th", "caption"),
        *("h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "figure", "figcaption"),
        *("ul", "ol", "dl", "table", "section", "article", "header", "footer", "aside"),
    }
)
_ANY_TAG = re.compile(r"<[^>]*>")


# a tag of nh3's output, matched left to right, a double-quoted attribute value as a
# whole: should a '<' or '>' ever appear inside one, it stays inside its tag
_SANITIZED_TAG = re.compile(r'</?([a-z][a-z0-9]*)\b(?:[^>"]|"[^"]*")*>')


def html_to_text(html_text: str) -> str:
    """Plain text of an HTML fragment: entities unescaped, blocks apart, whitespace collapsed."""
    html_text = remove_unusable_characters(html_text)
    if "<" not in html_text and "&" not in html_text:
        return _WHITESPACE.sub(" ", html_text).strip()
    if exceeds_limits(html_text):
        return remove_unusable_characters(markup_text(html_text))
    # nh3 parses like a browser and drops script/style contents; what is left of the
    # markup is block tags without attributes, each one a word break
    only_blocks = nh3.clean(
        html_text,
        tags=set(_BLOCK_TAGS),
        clean_content_tags={"script", "style", "template", "svg", "math"},
        attributes={},
        link_rel=None,
    )
    return " ".join(html.unescape(_ANY_TAG.sub(" ", only_blocks)).split())


def sanitized_html_to_text(html_text: str) -> str:
    """`html_to_text` for what `sanitize_html` returned, without a second parse: its markup
    is normalized (no comments, scripts or styles; attribute values double-quoted), so
    block tags can be found by pattern. (Measured equal to html_to_text on the bench and
    real-world corpora.)"""
    if "<" not in html_text and "&" not in html_text:
        return " ".join(html_text.split())
    text = _SANITIZED_TAG.sub(_word_break_or_nothing, html_text)
    return " ".join(html.unescape(text).split())


def _word_break_or_nothing(tag: re.Match[str]) -> str:
    return " " if tag.group(1) in _BLOCK_TAGS else ""


def make_excerpt(text: str, limit: int = 300) -> str:
    """At most `limit` characters of `text`, cut at a word boundary and ended with "…"."""
    # Only the head matters; collapsing whitespace can only shorten it.
    head = " ".join(text[: 4 * limit + 4].split())
    if len(head) <= limit and len(text) <= 4 * limit + 4:
        return head
    text = head if len(head) > limit else " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit + 1]
    space = cut.rfind(" ")
    # a single very long word is cut where it is, rather than losing most of the excerpt
    kept = cut[:space] if space > limit // 2 else text[:limit]
    return kept.rstrip(" ,;:-–—([{\"'") + "…"


# --- entries -----------------------------------------------------------------------

_EXCERPT_MIN_SUMMARY = 40
_UNTITLED_LIMIT = 80


def clean_entry(
    entry: ParsedEntry,
    feed_url: str,
    now: datetime,
    first_seen: datetime | None = None,
    *,
    entry_key: str,
) -> Item:
    """The publishable form of `entry`, stored under `entry_key` (`dedupe.entry_key`,
    computed before cleaning). `now` is the fetch time; `first_seen` the time the entry was
    first stored, if it was (the date of an undated entry).

    No dedupe keys are computed here: `content_hash` is left "" and `index_keys` None
    until `ingest.with_dedupe_keys` adds them from the cleaned title and text.

    The link is stored only as an absolute http(s) URL without credentials or trackers
    (`urls.publishable_url`, the gate render.py applies again), else as ""; title, author
    and categories are single lines without bidirectional controls (`text.single_line`).
    """
    now = to_utc(now)
    entry = _without_unusable_characters(entry)
    content_html = clean_html(entry.content_html, entry.base_url)
    summary_html = clean_html(entry.summary_html, entry.base_url)
    content_text = sanitized_html_to_text(content_html)
    summary_text = sanitized_html_to_text(summary_html)
    text = content_text or summary_text
    excerpt_source = (
        summary_text
        if len(summary_text) >= _EXCERPT_MIN_SUMMARY or not content_text
        else content_text
    )
    title = single_line(entry.title) or single_line(make_excerpt(text, _UNTITLED_LIMIT))

    published = to_utc(entry.published or entry.updated or first_seen or now)
    published = min(published, now)
    updated = published
    if entry.updated is not None:
        updated = max(published, min(to_utc(entry.updated), now))

    url = publishable_url(entry.link, entry.base_url)
    link = strip_tracking(url) if url else ""
    categories = (single_line(category) for category in entry.categories)
    return Item(
        feed_url=feed_url,
        entry_key=entry_key,
        link=link,
        canonical_link=canonical_url(link) if link else "",
        title=title,
        content_html=content_html or summary_html,
        summary_html=summary_html,
        excerpt=make_excerpt(excerpt_source),
        text=text,
        author=single_line(entry.author) or None,
        categories=tuple(dict.fromkeys(category for category in categories if category)),
        published=published,
        updated=updated,
        content_hash="",
    )


def _without_unusable_characters(entry: ParsedEntry) -> ParsedEntry:
    fix = remove_unusable_characters
    return replace(
        entry,
        title=fix(entry.title),
        link=fix(entry.link) if entry.link else entry.link,
        content_html=fix(entry.content_html),
        summary_html=fix(entry.summary_html),
        author=fix(entry.author) if entry.author else entry.author,
        categories=tuple(fix(category) for category in entry.categories),
    )


def clean_html(html_text: str, base_url: str) -> str:
    """Boilerplate stripped, then sanitized with absolute URLs (markup too costly to parse:
    its text only, before lxml sees it)."""
    html_text = remove_unusable_characters(html_text)
    if not html_text.strip():
        return ""
    if exceeds_limits(html_text):
        return _text_only(html_text)
    stripped = strip_boilerplate(html_text)
    if stripped is html_text:
        return _sanitize(html_text, base_url)
    return sanitize_html(stripped, base_url)  # what lxml wrote is asked again
