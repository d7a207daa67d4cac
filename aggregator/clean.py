"""ParsedEntry → Item: sanitize HTML, strip boilerplate, make text and excerpt, fix dates. No I/O.

Order per HTML field: strip_boilerplate (lxml, needs the publisher's classes) →
sanitize_html (nh3 allowlist, absolute URLs, no tracking pixels) → html_to_text.
nh3 runs last so nothing the boilerplate pass serializes can reintroduce markup.

The entry key comes in (computed once, before cleaning) and the dedupe keys of the item
(content hash, index keys) are added after it (`ingest.with_dedupe_keys`): cleaning
computes neither.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any, cast
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
#: an image's width or height: at most six digits (int() refuses over 4,300, and no image
#: is a million pixels wide)
_DIMENSION = re.compile(r"\s*(\d{1,6})(?:px)?\s*$")

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


#: every byte but the ASCII characters of _UNUSABLE_CHARACTERS (the bytes of a multi-byte
#: UTF-8 character are all here)
_USABLE_BYTES = bytes(code for code in range(256) if not _UNUSABLE_CHARACTERS.match(chr(code)))


def remove_unusable_characters(text: str) -> str:
    """`text` without control characters, lone surrogates and non-characters."""
    # Nearly every text has none: UTF-8 encoding (which refuses a lone surrogate) and
    # deleting the usable bytes tells so 7× faster than the pattern can.
    try:
        has_none = not text.encode().translate(None, _USABLE_BYTES)
    except UnicodeEncodeError:
        has_none = False
    if has_none and "\ufffe" not in text and "\uffff" not in text:
        return text
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
    cleaned = _cleaner(base_url).clean(html_text)
    cleaned = _IMG_TAG.sub(_drop_useless_image, cleaned)
    cleaned = _EMPTY_LINK.sub("", cleaned)
    return _BARE_LINK.sub(r"\1", cleaned).strip()


@functools.lru_cache(maxsize=64)
def _cleaner(base_url: str) -> nh3.Cleaner:
    """nh3 as `_sanitize` uses it, URLs made absolute against `base_url`. Made once per
    base: setting nh3 up cost as much as cleaning a typical entry (nh3.clean does it on
    every call), and a feed's entries share their base.

    The base is the feed's URL (or an xml:base) and may carry the feed's credentials: a
    "#section" or "" reference resolved against it would publish them. So the base
    itself is taken as published (`urls.publishable_url`: no userinfo, no secret-looking
    parameters; not http(s): nothing relative resolves)."""
    base_url = publishable_url(base_url) or ""

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
        elif origin is not None and _is_plain_path(value):
            absolute = origin + value  # what urljoin gives, its scheme allowed
        else:
            absolute = urljoin(base_url, value)
            if not _has_allowed_scheme(absolute):
                return None
        return None if PIXEL_URLS.match(absolute) else absolute

    origin = _http_origin(base_url)
    # link_rel=None: we drop target=, so rel=noopener is moot, and noreferrer would hide
    # from publishers the readers we send them; renderers add rel to their own pages.
    return nh3.Cleaner(
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(REMOVED_WITH_CONTENT),
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=resolve,
        url_schemes=set(URL_SCHEMES),
        link_rel=None,
        strip_comments=True,
    )


def _http_origin(base_url: str) -> str | None:
    """The "scheme://host" of an http(s) `base_url`, as urljoin joins a path to it (scheme
    lower-cased, host as written); None for any other base."""
    try:
        parts = urlsplit(base_url)
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in URL_SCHEMES else None


#: a path that urljoin puts after the base's host unchanged: from the root, not "//" (a
#: host), no query, fragment or parameters, nothing urlsplit strips, and (tested apart) no
#: "." or ".." segment
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_~%-][A-Za-z0-9_~%/.-]*")


def _is_plain_path(value: str) -> bool:
    return _PLAIN_PATH.fullmatch(value) is not None and "/." not in value


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

# Phrase families, each matched against the whole text of a block or link (whitespace
# collapsed, case ignored). Every family starts with one of _BOILERPLATE_STARTS: that is
# what the cheap test before the lxml pass looks for, so a rule added here needs its start
# there (the test is exact only so).

#: "Related", "Related posts:" …: a heading, or the label of a row of links
_RELATED = r"related(\ (posts?|articles?|stories|reading|coverage|links|content))?"
#: labels of a row that is only links (a label and its links are both boilerplate)
_LINK_ROW_LABELS = rf"""(
        {_RELATED}
      | you\ (may|might)\ also\ (like|enjoy)
      | share(\ (this(\ (post|article|story))?|it|on|via))?
      | follow(\ (us|me)(\ on)?|(?=\ ?:))
      | (connect\ with|find)\ (us|me)(\ on)?
      | read\ (more|also)
    )"""

#: blocks whose whole text is one of these are removed wherever they are
BOILERPLATE_PARAGRAPHS = re.compile(
    rf"""^(
        the\ post\ .+\ appeared\ first\ on\ .+         # WordPress (Yoast) RSS footer
      | the\ post\ .+\ first\ appeared\ on\ .+         # ClassicPress / newer wording
      | this\ (post|article|story)\ (was\ )?(originally\ )?(appeared|published)
        \ (first\ )?on\ .+
      | (share|like)\ this:?                           # Jetpack headings
      | {_RELATED}:?
      | you\ (may|might)\ also\ (like|enjoy)\W*
      | continue\ reading\b.*
      | (read|view)\ more\W*
      | read\ the\ rest\b.*
      | keep\ reading\b.*
      | \[?\s*(…|\.\.\.)\s*\]?
        # the comment form WordPress themes append: its heading and what is left of the
        # form when a feed has dropped the <form> tag (nh3 drops it with its content)
      | leave\ a\ (reply|comment)(\ cancel\ reply)?\W*
      | cancel\ reply
      | your\ email\ address\ will\ not\ be\ published\b.*
      | required\ fields\ are\ marked\b.*
      | you\ must\ be\ logged\ in\ to\ post\ a\ comment\b.*
      | save\ my\ name,?\ email,?\ and\ website\b.*
      | this\ site\ uses\ akismet\ to\ reduce\ spam\b.*
      | post\ comment
    )$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
#: calls to action: removed only among the first or last blocks of an entry, since a
#: paragraph inside an article may say the same words and mean them
EDGE_PARAGRAPHS = re.compile(
    r"""^(
        this\ (post|article|story)\ (was\ )?(originally\ |first\ )?(appeared|published)
        \ (first\ )?in\ .+                           # "This article first appeared in …"
      | support\ us\b.*
      | support\ (our|my|this)\ (journalism|work|writing|reporting|newsroom|mission|site
        |blog|podcast|show|newsletter)\b.*
      | support\ (independent|local|quality|nonprofit|reader-funded)\ (journalism|media
        |news|reporting)\b.*
      | become\ a\ (paid\ |founding\ |sustaining\ )?(member|patron|subscriber|supporter|donor)\b.*
      | donate\ (now|today|here|to\ (us|our|my|this))\b.*
      | please\ (consider\ )?(support(ing)?|donat(e|ing)\ to|contribut(e|ing)\ to
        |subscrib(e|ing)\ to)\ (us|me|my|our|this)\b.*
      | please\ (consider\ )?(donating|making\ a\ donation
        |becoming\ a\ (paid\ )?(member|patron|subscriber|supporter))\b.*
      | if\ you(['’]d\ like|\ would\ like|\ want|\ wish)\ to\ support\ (us|me|my|our|this)\b.*
      | if\ you\ (like|liked|enjoy|enjoyed|value|appreciate)\ (this|what|our|my|reading)\b
        .*\b(support|donate|donating|subscribe|become\ a)\b.*
      | (did\ you\ )?(enjoy|enjoyed|like|liked)\ this\b[^?]{0,60}\?
        .*\b(support|donate|subscribe|sign\ up|become\ a)\b.*
        # newsletter sign-ups
      | (sign\ up|subscribe|register)\ (for|to)\ (our|my|the)\b
        .*\b(newsletters?|mailing\ list|email\ list)\b.*
      | (get|join)\ (our|my|the)\b.*\b(newsletters?|mailing\ list)\b.*
      | follow\ (us|me)\ on\ (twitter|x|facebook|instagram|mastodon|bluesky|threads
        |linkedin|youtube|tiktok|social\ media)\b.*
    )$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
#: links whose whole text is one of these are removed wherever they are
BOILERPLATE_LINKS = re.compile(
    r"""^(
        continue\ reading\b.*
      | \[?\s*(read|view)\ more\b.*
      | read\ (on|the\ rest)\b.*
      | keep\ reading\b.*
      | more\W*
      | \[?\s*(…|\.\.\.)\s*\]?
    )$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
#: what a block holding only links says besides them: a label, then separators
_LINK_ROW = re.compile(
    rf"^{_LINK_ROW_LABELS}\W*((and|or)\b\W*)*$", re.IGNORECASE | re.VERBOSE | re.DOTALL
)
_ONLY_SEPARATORS = re.compile(r"^\W*((and|or)\b\W*)*$", re.IGNORECASE | re.DOTALL)
#: headings whose list of links after them is boilerplate too
_RELATED_HEADING = re.compile(
    rf"^({_RELATED}|you\ (may|might)\ also\ (like|enjoy))\W*$", re.IGNORECASE | re.VERBOSE
)
#: share links to social sites: a block of two or more and nothing else is a share row.
#: Each one holds one of _SHARE_LINK_MARKERS as written (the cheap test looks for them).
SHARE_LINKS = re.compile(
    r"""^(https?:)?//([a-z0-9-]+\.)*(
        (twitter|x)\.com/(intent/|share)
      | facebook\.com/(sharer|share\.php|dialog/share)
      | linkedin\.com/share
      | reddit\.com/submit
      | pinterest\.[a-z.]+/pin/create
      | whatsapp\.com/send
      | (t|telegram)\.me/share
      | bsky\.app/intent/
      | tumblr\.com/(widgets/)?share
      | news\.ycombinator\.com/submit
    )|^mailto:\?""",
    re.IGNORECASE | re.VERBOSE,
)
_SHARE_LINK_MARKERS = (
    "/share",
    "/intent/",
    "/submit",
    "/pin/create",
    "whatsapp.com/send",
    "mailto:?",
)
#: WordPress's excerpt ellipsis "[…]" at the end of a text
_BRACKETED_ELLIPSIS = re.compile(r"\s*\[\s*(…|\.\.\.|&hellip;|&#8230;)\s*\]\s*$")
_BOILERPLATE_CLASS_NAMES = frozenset({"more-link", *BOILERPLATE_CLASSES})
#: how the text of every boilerplate block or link starts (lower-cased)
_BOILERPLATE_STARTS = (
    *("the post ", "this post ", "this article ", "this story ", "share", "like this"),
    *("related", "continue reading", "read", "view more", "keep reading", "more"),
    *("[", "…", "...", "you may also", "you might also", "follow us", "follow me"),
    *("follow:", "follow :", "connect with", "find us", "find me", "leave a"),
    *("cancel reply", "your email address", "required fields", "post comment"),
    *("you must be logged in", "save my name", "this site uses akismet", "support us"),
    *("support our", "support my", "support independent", "support local"),
    *("support quality", "support nonprofit", "support reader-funded", "support this"),
    *("become a ", "donate ", "please consider ", "please support", "please donat"),
    *("please contribut", "please subscrib", "please mak", "please becom"),
    *("if you'd like to support", "if you\u2019d like to support", "if you want to support"),
    *("if you would like to support", "if you wish to support", "if you like"),
    *("if you liked", "if you enjoy", "if you value", "if you appreciate", "enjoy this"),
    *("enjoyed this", "liked this", "did you enjoy", "sign up for", "sign up to"),
    *("subscribe to", "subscribe for", "register for", "register to", "get our "),
    *("get my ", "get the ", "join our ", "join my ", "join the "),
)
# The cheap test before the lxml pass works on markup, where text may still hold
# character references: spaces, apostrophes and ellipses are matched in all spellings.
_MARKUP_SPACE = r"(?:\s|&nbsp;|&#160;|&#xa0;)"
#: between two words of a start, tags may come too: "<em>The</em> post … appeared first on"
_MARKUP_GAP = r"(?:\s|&nbsp;|&#160;|&#xa0;|<[^<>]*>)"
_MARKUP_APOSTROPHE = r"(?:'|\u2019|&#39;|&#x27;|&apos;|&#8217;|&#x2019;|&rsquo;)"
#: (the text itself may say "&hellip;", double-escaped feeds do: "&amp;hellip;" in markup)
_MARKUP_ELLIPSIS = r"(?:…|\.\.\.|&hellip;|&#8230;|&#x2026;|&amp;hellip;|&amp;#8230;)"


def _markup_alternatives(starts: tuple[str, ...]) -> str:
    """A pattern for markup that spells one of `starts` (lower-cased text), built as a
    trie of characters: a text that starts no start is refused after a character or two,
    however many starts there are."""
    trie: dict[str, dict[str, Any]] = {}
    for start in starts:
        node = trie
        for char in "\u2019".join(start.split("'")):
            node = node.setdefault(char, {})
        node[""] = {}  # a start ends here: whatever follows, the text starts like it

    def pattern(node: dict[str, Any]) -> str:
        if "" in node:
            return ""
        branches = []
        for char, child in node.items():
            if char == " ":
                spelled = _MARKUP_GAP + "+"
            elif char == "\u2019":
                spelled = _MARKUP_APOSTROPHE
            else:
                spelled = re.escape(char)
            branches.append(spelled + pattern(child))
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return pattern(trie)


_BOILERPLATE_START_AFTER_TAG = re.compile(
    rf">{_MARKUP_SPACE}*(?:{_MARKUP_ELLIPSIS}|"
    + _markup_alternatives(tuple(s for s in _BOILERPLATE_STARTS if s not in ("…", "...")))
    + ")",
    re.IGNORECASE,
)
_BRACKETED_ELLIPSIS_MARKUP = re.compile(
    rf"\[{_MARKUP_SPACE}*{_MARKUP_ELLIPSIS}{_MARKUP_SPACE}*\]", re.IGNORECASE
)
#: what the cheap test looks for as written: class and id names (matched case-sensitively
#: by the lxml pass too), and the share link markers; a name holding another is not needed
_NAMES = frozenset({*_BOILERPLATE_CLASS_NAMES, *BOILERPLATE_IDS, *_SHARE_LINK_MARKERS})
_BOILERPLATE_NAMES = tuple(
    sorted(name for name in _NAMES if not any(o != name and o in name for o in _NAMES))
)
#: what a text shorter than a start may be and still begin one ("supp", "if you")
_START_PREFIXES = frozenset(
    start[:end] for start in _BOILERPLATE_STARTS for end in range(1, len(start))
)
#: boilerplate blocks are short; longer ones are article text whatever they start with
_MAX_BOILERPLATE_CHARS = 400
#: a list of related links may be longer than one block of boilerplate
_MAX_LINK_LIST_CHARS = 2000
#: blocks that may be boilerplate by their text
_TEXT_BLOCKS = frozenset({"p", "div", "h2", "h3", "h4", "h5", "h6"})
#: blocks that may be a row of share links or a list of related links
_LINK_BLOCKS = frozenset({*_TEXT_BLOCKS, "ul", "ol"})
#: blocks that may be a call to action at the start or end of an entry
_EDGE_BLOCKS = frozenset({*_TEXT_BLOCKS, "section", "aside"})
#: what wraps a whole entry (its first or last blocks are inside)
_WRAPPERS = frozenset({"div", "section", "article", "main"})
#: what may be left of a paragraph after its read-more link is removed
_LEFTOVER = re.compile(r"^[\s\W]*$")
_WHITESPACE = re.compile(r"\s+")


def strip_boilerplate(html_text: str) -> str:
    """`html_text` without sharing blocks and rows, related-link lists, comment forms,
    "The post … appeared first on …" footers, read-more links and excerpt ellipses, and
    without calls to donate, subscribe or follow among its first or last blocks. Article
    text is left as it was."""
    if not _may_hold_boilerplate(html_text):
        return html_text
    try:
        root = _fragment(html_text)
    except (lxml.etree.ParserError, ValueError):
        return html_text
    changed = False
    # A share row has two links to share sites or more: the tree has two such links (the
    # tree only loses elements) and the markup, as written, a marker. Most entries have no
    # such link, and then no block is tested.
    share_rows = _has_share_links(root) and _has_share_marker(html_text)
    # In document order, the root (index 0) left out. What is inside a removed element
    # comes right after it and is skipped: it is out of the tree, and removing more of it
    # would change nothing there (a third of the elements of the bench corpus's entries).
    elements = list(root.iter())
    index = 1
    while index < len(elements):
        element = elements[index]
        index += 1
        if not isinstance(element.tag, str):
            continue  # a comment or processing instruction
        if element.getparent() is None:  # removed as the list after a "Related" heading
            index += _descendant_count(element)
            continue
        if _is_boilerplate_element(element, share_rows):
            links = _link_list_after(element)
            _remove(element)
            index += _descendant_count(element)
            if links is not None:
                _remove(links)
            changed = True
    if _remove_edge_calls_to_action(root):
        changed = True
    if _drop_trailing_ellipsis(root):
        changed = True
    if not changed:
        return html_text
    serialized = str(lxml.html.tostring(root, encoding="unicode"))
    # the parent we created: '<div>' … '</div>'
    return serialized[len("<div>") : -len("</div>")].strip()


#: libxml2's HTML parser as lxml.html sets it up, but giving out lxml's plain elements:
#: lxml.html finds each element its Python class by a Python call (a tenth of this pass),
#: and the pass needs none of their methods (`_drop_tree`, `_text_content` are theirs)
_HTML_PARSER = lxml.etree.HTMLParser()
#: HtmlMixin.text_content
_STRING_CONTENT = lxml.etree.XPath("string()", smart_strings=False)


def _fragment(html_text: str) -> lxml.etree._Element:
    """The tree `lxml.html.fragment_fromstring(html_text, create_parent="div")` gives,
    built as it builds it, of plain elements. Raises what it raises."""
    elements = lxml.html.fragments_fromstring(html_text, parser=_HTML_PARSER)
    root = _HTML_PARSER.makeelement("div")
    if elements:
        if isinstance(elements[0], str):
            root.text = elements[0]
            del elements[0]
        root.extend(elements)
    return root


def _text_content(element: lxml.etree._Element) -> str:
    """lxml.html's `element.text_content()`."""
    return str(_STRING_CONTENT(element))


def _has_text(element: lxml.etree._Element) -> bool:
    """Whether the element's text (`_text_content`) is more than whitespace: read only as
    far as its first such piece, without an XPath call."""
    return any(not piece.isspace() for piece in _itertext(element) if piece)


def _itertext(element: lxml.etree._Element) -> Iterator[str]:
    """`element.itertext()`, typed: an HTML parser's text is str."""
    return cast("Iterator[str]", element.itertext())


def _drop_tree(element: lxml.etree._Element) -> None:
    """lxml.html's `element.drop_tree()`: removes it, its tail joined to the text before."""
    parent = element.getparent()
    assert parent is not None
    if element.tail:
        previous = element.getprevious()
        if previous is None:
            parent.text = (parent.text or "") + element.tail
        else:
            previous.tail = (previous.tail or "") + element.tail
    parent.remove(element)


def _descendant_count(element: lxml.etree._Element) -> int:
    """How many nodes `root.iter()` gives inside `element` (comments included)."""
    return sum(1 for _ in element.iter()) - 1


def _may_hold_boilerplate(html_text: str) -> bool:
    """False when no element can be boilerplate, so the lxml pass can be skipped: no
    boilerplate class or id is named, no share link is there, no element's text starts
    like boilerplate (text starts right after a tag, perhaps after spaces), and there is
    no bracketed ellipsis."""
    # the cheapest first: twenty substring scans cost five times the pattern's one
    return (
        _BOILERPLATE_START_AFTER_TAG.search(html_text) is not None
        or _BRACKETED_ELLIPSIS_MARKUP.search(html_text) is not None
        or any(name in html_text for name in _BOILERPLATE_NAMES)
    )


def _is_boilerplate_element(element: lxml.etree._Element, share_rows: bool) -> bool:
    """Whether `element` is boilerplate wherever it is; `share_rows`: whether the entry
    may have a row of share links at all."""
    classes = element.get("class")
    if classes and not _BOILERPLATE_CLASS_NAMES.isdisjoint(classes.split()):
        return True
    if element.get("id") in BOILERPLATE_IDS:
        return True
    tag = element.tag
    if tag == "a":
        text = _text_starting_like_boilerplate(element)
        return text is not None and BOILERPLATE_LINKS.match(text) is not None
    if tag not in _LINK_BLOCKS:
        return False
    if share_rows and _is_share_row(element):
        return True
    text = _text_starting_like_boilerplate(element)
    if text is None:
        return False
    if tag in _TEXT_BLOCKS and BOILERPLATE_PARAGRAPHS.match(text):
        return True
    # "Related: <a>…</a>, <a>…</a>", "Follow us on <a>…</a> and <a>…</a>."
    return _LINK_ROW.match(_text_outside_links(element)) is not None and _has_links(element)


def _text_starting_like_boilerplate(element: lxml.etree._Element) -> str | None:
    """The element's short text (`_short_text_of`) if it starts like boilerplate, else None."""
    # Most blocks are article paragraphs: their first text rules them out before the whole
    # text is gathered (the first piece may be short: "<p>The <em>post</em> …").
    first = element.text  # itertext's first piece, when it is not space
    if first is None or first.isspace():
        first = next((piece for piece in _itertext(element) if not piece.isspace()), "")
    head = " ".join(first[:64].split()).lower()  # a prefix of the collapsed whole text
    if not head.startswith(_BOILERPLATE_STARTS) and head not in _START_PREFIXES:
        return None
    text = _short_text_of(element)
    if not text or not text.lower().startswith(_BOILERPLATE_STARTS):
        return None
    return text


def _is_share_row(element: lxml.etree._Element) -> bool:
    """Two or more links to share the entry on social sites and no text but a label."""
    links = 0
    for link in element.iter("a"):  # stops at the first other link: a wrapper of an
        href = link.get("href") or ""  # article pays for one link, not all of them
        # the marker as written: what the cheap test saw (the pattern then says which site)
        if not any(marker in href for marker in _SHARE_LINK_MARKERS):
            return False
        if not SHARE_LINKS.match(href.strip()):
            return False
        links += 1
    return (
        links >= 2
        and _short_text_of(element) is not None
        and _is_label_or_nothing(_text_outside_links(element))
    )


def _has_share_links(root: lxml.etree._Element) -> bool:
    """Whether two links of the tree or more have a share link marker in their href."""
    found = 0
    for link in root.iter("a"):
        href = link.get("href") or ""
        if any(marker in href for marker in _SHARE_LINK_MARKERS):
            found += 1
            if found == 2:
                return True
    return False


def _has_share_marker(html_text: str) -> bool:
    """Whether the markup, as written, holds a share link marker at all."""
    return any(marker in html_text for marker in _SHARE_LINK_MARKERS)


def _is_label_or_nothing(text: str) -> bool:
    return _ONLY_SEPARATORS.match(text) is not None or _LINK_ROW.match(text) is not None


def _link_list_after(element: lxml.etree._Element) -> lxml.etree._Element | None:
    """The list of links right after a "Related" heading that is `element`, if there is one."""
    if element.tag not in _TEXT_BLOCKS or (element.tail or "").strip():
        return None
    text = _short_text_of(element)
    if not text or not _RELATED_HEADING.match(text):
        return None
    after = element.getnext()
    if after is None or after.tag not in _LINK_BLOCKS or not _has_links(after):
        return None
    text = _short_text_of(after, _MAX_LINK_LIST_CHARS)
    outside = _text_outside_links(after)
    return after if text and _ONLY_SEPARATORS.match(outside) else None


def _remove_edge_calls_to_action(root: lxml.etree._Element) -> bool:
    """Removes the calls to action (EDGE_PARAGRAPHS) that are among an entry's first or
    last blocks, looking past empty blocks and images; never the entry's only text."""
    container = root
    while (
        len(container) == 1
        and container[0].tag in _WRAPPERS
        and not (container.text or "").strip()
        and not (container[0].tail or "").strip()
    ):
        container = container[0]
    blocks = [child for child in container if isinstance(child.tag, str)]
    found: list[lxml.etree._Element] = []
    for run in (blocks, blocks[::-1]):
        for block in run:
            if block in found:
                break
            if not _has_text(block):
                continue  # an image, a rule: look past it
            if not _is_call_to_action(block):
                break
            found.append(block)
    if not found:
        return False
    kept_text = (container.text or "").strip() or any(
        _has_text(block) for block in blocks if block not in found
    )
    if not kept_text:
        return False  # the entry is the call (a post announcing a membership drive)
    for block in found:
        _remove(block)
    return True


def _is_call_to_action(block: lxml.etree._Element) -> bool:
    """A short block whose text, or whose first block's (a box: "<div><h3>Become a
    member</h3><p>…</p></div>"), is one of EDGE_PARAGRAPHS."""
    if block.tag not in _EDGE_BLOCKS or _text_starting_like_boilerplate(block) is None:
        return False
    while len(block) and block[0].tag in _EDGE_BLOCKS and not (block.text or "").strip():
        block = block[0]  # its text is the start of the box's text
    text = _short_text_of(block)
    return (
        text is not None
        and len(_SENTENCE_END.findall(text)) <= MAX_CALL_SENTENCES
        and EDGE_PARAGRAPHS.match(text) is not None
    )


#: a call to action says its piece in a sentence or two; a paragraph of three or more
#: that starts like one ("Sign up for the Korea Brief newsletter… It is free, arrives once
#: a week…") is what an item about the newsletter says, for topics to match or exclude
MAX_CALL_SENTENCES = 2
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def _text_outside_links(element: lxml.etree._Element) -> str:
    """The element's text but that of its links, whitespace collapsed."""
    parts = [element.text or ""] if isinstance(element.tag, str) else []
    for child in element:
        if isinstance(child.tag, str) and child.tag != "a":
            parts.append(_text_outside_links(child))
        parts.append(child.tail or "")
    return " ".join(" ".join(parts).split())


def _has_links(element: lxml.etree._Element) -> bool:
    return any(_has_text(link) for link in element.iter("a"))


def _remove(element: lxml.etree._Element) -> None:
    """Removes `element` but keeps its tail text; then its parent if nothing is left in it."""
    parent = element.getparent()
    _drop_tree(element)
    if parent is None or parent.getparent() is None:
        return
    if len(parent) == 0 and _LEFTOVER.match(_text_content(parent) or ""):
        _remove(parent)


def _drop_trailing_ellipsis(root: lxml.etree._Element) -> bool:
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


def _short_text_of(element: lxml.etree._Element, limit: int = _MAX_BOILERPLATE_CHARS) -> str | None:
    """The element's text with whitespace collapsed, or None when it is `limit` characters
    or longer. Stops reading early, so nested blocks don't cost their whole text each."""
    parts = []
    length = 0
    for piece in _itertext(element):
        length += len(piece)
        if length > 2 * limit:  # room for collapsible whitespace
            return None
        parts.append(piece)
    text = " ".join("".join(parts).split())
    return text if len(text) < limit else None


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
    # text, tag name, text, …, text: each tag a word break (a block) or nothing
    pieces = _SANITIZED_TAG.split(html_text)
    pieces[1::2] = [" " if name in _BLOCK_TAGS else "" for name in pieces[1::2]]
    return " ".join(html.unescape("".join(pieces)).split())


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
    # the entry's texts are usable now: not scanned again
    content_html = _clean_usable_html(entry.content_html, entry.base_url)
    summary_html = _clean_usable_html(entry.summary_html, entry.base_url)
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
        image_url=lead_image(entry.image_url, entry.base_url, content_html or summary_html),
    )


#: a content image declared smaller than this (an emoji, an icon, a button) is no lead
_MIN_LEAD_IMAGE = 48


def lead_image(feed_image: str | None, base_url: str, sanitized_html: str) -> str:
    """The entry's lead image: the one its feed names (resolved against `base_url`), else
    the first <img> of its sanitized content that is not declared tiny; an absolute
    http(s) URL without credentials (`urls.publishable_url`), else ""."""
    if feed_image:
        url = publishable_url(remove_unusable_characters(feed_image), base_url)
        if url:
            return url
    for tag in _IMG_TAG.finditer(sanitized_html):
        attributes = dict(_ATTRIBUTE.findall(tag.group("attributes")))
        sizes = [attributes.get("width"), attributes.get("height")]
        if any(size is not None and int(size) < _MIN_LEAD_IMAGE for size in sizes):
            continue
        # the sanitizer wrote the attribute escaped (&amp;)
        url = publishable_url(html.unescape(attributes.get("src", "")), base_url)
        if url:
            return url
    return ""


def _without_unusable_characters(entry: ParsedEntry) -> ParsedEntry:
    fix = remove_unusable_characters
    fixed: dict[str, Any] = {
        "title": fix(entry.title),
        "link": fix(entry.link) if entry.link else entry.link,
        "content_html": fix(entry.content_html),
        "summary_html": fix(entry.summary_html),
        "author": fix(entry.author) if entry.author else entry.author,
        "categories": tuple(fix(category) for category in entry.categories),
    }
    if all(getattr(entry, name) == value for name, value in fixed.items()):
        return entry  # nearly always: nothing removed, so no copy
    return replace(entry, **fixed)


def clean_html(html_text: str, base_url: str) -> str:
    """Boilerplate stripped, then sanitized with absolute URLs (markup too costly to parse:
    its text only, before lxml sees it)."""
    return _clean_usable_html(remove_unusable_characters(html_text), base_url)


def _clean_usable_html(html_text: str, base_url: str) -> str:
    """`clean_html` of a text without unusable characters (`remove_unusable_characters`)."""
    if not html_text.strip():
        return ""
    if exceeds_limits(html_text):
        return _text_only(html_text)
    stripped = strip_boilerplate(html_text)
    if stripped is html_text:
        return _sanitize(html_text, base_url)
    return sanitize_html(stripped, base_url)  # what lxml wrote is asked again
