"""Markup that html5ever or libxml2 would parse in superlinear time, found by linear scans,
and the text of such markup. No I/O.

html5ever (inside nh3) walks its stack of open elements for many tokens ("is there a <p>
in button scope?" for every <div>; the walk down to a matching element for an end tag),
so its time grows with the square of the nesting: 100,000 nested <div> (a 1.1 MB entry)
took 21.6 s to sanitize, 12,500 took 0.29 s. And an element it closed early without
its end tag is opened again before the next text (WHATWG HTML "reconstruct the active
formatting elements"), so 95 KB of `<div><b id=N></div>` and then `<p>x</p>` made 95 MB
of output in 24 s. `is_too_deep` tells such fragments apart from articles before nh3
sees them, and `markup_text` keeps what is readable of them.

The scan follows the tree builder only as far as it must to never count much less than
html5ever's stack: tags and comments are read as the tokenizer reads them (quoted
attribute values may hold '<' and '>'), script and style contents are skipped, void
elements open nothing, and an end tag closes only what the tree builder would close
(a match not across a scope boundary, nor for an unknown tag across an element such as
<div>). Elements closed early are counted again, at most three alike (the "Noah's Ark"
rule). Where it cannot tell, it counts an element as open: a fragment it wrongly finds
too deep loses its markup, not its text.

Both parsers also check each attribute of a tag against the ones before it (a duplicate is
dropped), so a tag's cost grows with the square of its attributes: one <p> with 300,000
(a 4.9 MB entry) took 20 s in nh3, and 100,000 took 14 s in lxml (libxml2, for the
boilerplate pass). `has_crowded_tag` finds a tag with more than MAX_ATTRIBUTES as either
tokenizer reads it: a single pass of one regular expression over the fragment, which reads
tags, comments, and script, style and other raw text as the tokenizers do, and stops at a
crowded tag; html5ever's reading of SVG and MathML (where <style> holds markup and CDATA
sections are text) depends on the tree, so there the scan above decides. libxml2 reads
<noscript> as markup and ignores SVG and MathML: a fragment with those is read twice.

And html5ever adds a character it had to treat apart (a '&', which starts a character
reference, or U+0080 to U+00BF) to its text node by copying the node: 1,000,000 "&amp;"
in one paragraph took 7 s, growing with the square of the text. `has_costly_text` bounds
the sum, over text nodes, of such characters times the node's length.
"""

from __future__ import annotations

import functools
import html
import re
from collections import Counter

#: deeper than this is not an article. The deepest HTML in the 1,465 files of
#: ../shared/realworld-feeds nests 14 levels by this count (the deepest article markup
#: seen in the wild is a few dozen: tables in tables in old newsletters).
MAX_NESTING = 512

#: more attributes than this on one tag is not an article. The most any tag in the HTML of
#: the 1,465 files of ../shared/realworld-feeds has is 12.
MAX_ATTRIBUTES = 256

#: the most a text node may cost html5ever: the characters it adds to the node one at a time
#: (see `has_costly_text`) times the node's length. 10^9 (a node of a megabyte with a
#: thousand of them) is about 7.5 ms of nh3; the most a 10 MB body can then cost is about
#: 2.5 s (nodes of 32 KB holding nothing else; 3.3 s measured on a busy machine, 10 MB of
#: "<p>" and 31,000 '&' cleaned whole). By the scan's count, the costliest HTML in
#: the 1,465 files of ../shared/realworld-feeds comes to 1.1 × 10^8 (a 542 KB entry).
MAX_TEXT_COST = 10**9

#: how far down the stack an end tag looks for its element; one farther down is left open
_REACH = 32

#: what HTML counts as space (Python's \s counts more, which tokenizers do not split at)
_S = r"\t\n\f\r "
#: one attribute, as the tokenizers read it: a name (which may start with '='), then perhaps
#: a value, quoted or not; an unterminated quote runs to the end of the text
_ATTRIBUTE_PATTERN = rf"""
    [^{_S}/>][^{_S}/>=]*+
    (?>[{_S}]*+=[{_S}]*+(?:"[^"]*+(?:"|\Z)|'[^']*+(?:'|\Z)|[^{_S}>]*+))?"""
_ATTRIBUTE = re.compile(_ATTRIBUTE_PATTERN, re.VERBOSE | re.DOTALL)

_TOKEN = re.compile(
    rf"""<(?:
        (?P<comment>!--(?:-?>|.*?(?:--!?>|\Z)))
      | (?P<bogus>(?:[!?]|/(?![A-Za-z]))[^>]*+>?)
      | (?P<close>/)?(?P<name>[A-Za-z][^{_S}/>]*+)
        (?P<attributes>(?:[{_S}]++|/(?!>)|{_ATTRIBUTE_PATTERN})*+)
        (?P<self_closing>/)?(?P<end>>)?
    )""",
    re.VERBOSE | re.DOTALL,
)
_FONT_BREAKOUT = re.compile(r"(?:^|[\s/])(?:color|face|size)(?:[\s/=]|$)", re.IGNORECASE)

_VOID = frozenset(
    {
        *("area", "base", "br", "col", "embed", "hr", "img", "image", "input", "link"),
        *("meta", "source", "track", "wbr", "param", "keygen", "basefont", "bgsound", "frame"),
    }
)
#: contents are text to the tokenizer. (noscript is not here: counted as markup, should
#: html5ever read it as text, it can only make the count larger)
_RAW_TEXT = frozenset(
    {"script", "style", "xmp", "iframe", "noembed", "noframes", "textarea", "title"}
)
_RAW_TEXT_END = {
    name: re.compile(rf"</{name}[{_S}/>]", re.IGNORECASE) for name in (*_RAW_TEXT, "noscript")
}
#: what changes the state of the tokenizer inside a script (WHATWG HTML 13.2.5.4–13.2.5.31)
_SCRIPT_STATE = re.compile(rf"<!--|-->|<(/?)script(?=[{_S}/>])", re.IGNORECASE)
_FORMATTING = frozenset(
    {"a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong"}
    | {"tt", "u"}
)
#: special start tags before which the formatting elements closed early are opened again
#: (every other start tag, and text, does that too)
_REOPENS = _FORMATTING | {
    *("applet", "marquee", "object", "area", "br", "embed", "img", "image", "keygen"),
    *("wbr", "input", "select", "math", "svg", "xmp"),
}
#: where the list of formatting elements starts afresh
_MARKERS = frozenset({"applet", "object", "marquee", "template", "td", "th", "caption"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
#: integration points: HTML rules apply again inside these foreign elements
_INTEGRATION_POINTS = frozenset(
    {"foreignobject", "desc", "title", "mi", "mo", "mn", "ms", "mtext", "annotation-xml"}
)
#: the "has an element in scope" boundaries
_SCOPE = frozenset(
    {"applet", "caption", "html", "table", "td", "th", "marquee", "object", "template"}
    | _INTEGRATION_POINTS
)
_BUTTON_SCOPE = _SCOPE | {"button"}
_LIST_ITEM_SCOPE = _SCOPE | {"ol", "ul"}
_TABLE_SCOPE = frozenset({"html", "table", "template"})
#: the "special" category: an end tag for an unknown element does not close across these
_SPECIAL = (
    frozenset(
        {
            *("address", "applet", "area", "article", "aside", "base", "basefont", "bgsound"),
            *("blockquote", "body", "br", "button", "caption", "center", "col", "colgroup"),
            *("dd", "details", "dir", "div", "dl", "dt", "embed", "fieldset", "figcaption"),
            *("figure", "footer", "form", "frame", "frameset", "head", "header", "hgroup"),
            *("hr", "html", "iframe", "img", "input", "keygen", "li", "link", "listing"),
            *("main", "marquee", "menu", "meta", "nav", "noembed", "noframes", "noscript"),
            *("object", "ol", "p", "param", "plaintext", "pre", "script", "search"),
            *("section", "select", "source", "style", "summary", "table", "tbody", "td"),
            *("template", "textarea", "tfoot", "th", "thead", "title", "tr", "track", "ul"),
            *("wbr", "xmp"),
        }
    )
    | _HEADINGS
    | _INTEGRATION_POINTS
)
#: start tags that first close an open <p> (in button scope)
_CLOSES_P = (
    frozenset(
        {
            *("address", "article", "aside", "blockquote", "center", "details", "dialog"),
            *("dir", "div", "dl", "fieldset", "figcaption", "figure", "footer", "header"),
            *("hgroup", "main", "menu", "nav", "ol", "p", "search", "section", "summary"),
            *("ul", "pre", "listing", "form", "table", "xmp", "li", "dd", "dt", "plaintext"),
        }
    )
    | _HEADINGS
)
#: start tags that leave foreign (SVG, MathML) content
_BREAKOUT = (
    frozenset(
        {
            *("b", "big", "blockquote", "body", "br", "center", "code", "dd", "div", "dl"),
            *("dt", "em", "embed", "head", "hr", "i", "img", "li", "listing", "menu"),
            *("meta", "nobr", "ol", "p", "pre", "ruby", "s", "small", "span", "strong"),
            *("strike", "sub", "sup", "table", "tt", "u", "ul", "var"),
        }
    )
    | _HEADINGS
)
#: block elements whose text is apart from the text around it
_BLOCKS = frozenset(
    {
        *("p", "br", "hr", "div", "li", "dt", "dd", "tr", "td", "th", "caption", "pre"),
        *("blockquote", "figure", "figcaption", "ul", "ol", "dl", "table", "section"),
        *("article", "header", "footer", "aside", "main", "nav", "address", "details"),
    }
    | _HEADINGS
)
#: their contents are no reader's text
_NOT_TEXT = frozenset({"script", "style", "template", "noembed", "noframes", "iframe"})

#: raw text to the scan: html5ever runs with scripting on, so <noscript> holds text too
#: (which `markup_text` leaves out with the rest of what it does not read as text)
_SCANNED_RAW_TEXT = _RAW_TEXT | {"noscript"}

#: start tags whose effect is more than opening an element inside the current one
_NEEDS_CARE = (
    _VOID
    | _SCANNED_RAW_TEXT
    | _CLOSES_P
    | _HEADINGS
    | {"svg", "math", "a", "nobr", "li", "dd", "dt", "button", "td", "th", "tr", "tbody"}
    | {"thead", "tfoot", "option", "optgroup"}
)

_HTML, _FOREIGN, _INTEGRATION = 0, 1, 2


class _Stack:
    """The tree builder's stack of open elements, as far as the scan follows it."""

    def __init__(self, limit: int, budget: int) -> None:
        self.names: list[str] = []
        self.kinds: list[int] = []
        #: (name, attributes) of formatting elements, else None
        self.keys: list[tuple[str, str] | None] = []
        #: formatting elements closed early, which html5ever opens again before the next text
        self.lingering: Counter[tuple[str, str]] = Counter()
        self.limit = limit
        #: how many more elements may be opened, reopened ones included
        self.budget = budget

    def push(self, name: str, kind: int, key: tuple[str, str] | None = None) -> bool:
        """False when the stack is now deeper than the limit or the budget is spent."""
        self.names.append(name)
        self.kinds.append(kind)
        self.keys.append(key)
        self.budget -= 1
        return len(self.names) <= self.limit and self.budget >= 0

    def reopen(self) -> bool:
        for key, count in list(self.lingering.items()):
            for _ in range(count):
                if not self.push(key[0], _HTML, key):
                    return False
        self.lingering.clear()
        return True

    def find(self, names: frozenset[str] | str, boundaries: frozenset[str]) -> int:
        """Index of the topmost element named in `names`, not below a boundary and within
        reach of the top; -1 if none."""
        if isinstance(names, str):
            names = frozenset((names,))  # not a substring test
        stop = max(-1, len(self.names) - 1 - _REACH)
        for index in range(len(self.names) - 1, stop, -1):
            name = self.names[index]
            if name in names:
                return index
            if name in boundaries or self.kinds[index] != _HTML:
                return -1
        return -1

    def pop_to(self, index: int) -> None:
        """Closes the element at `index` and everything above it."""
        if index < 0:
            return
        for key in self.keys[index + 1 :]:
            if key is not None and self.lingering[key] < 3:
                self.lingering[key] += 1
        del self.names[index:], self.kinds[index:], self.keys[index:]

    @property
    def in_foreign(self) -> bool:
        return bool(self.kinds) and self.kinds[-1] == _FOREIGN


def exceeds_limits(html_text: str) -> bool:
    """Whether html5ever or libxml2 would take time growing faster than the length of
    `html_text` to parse it: elements nested more than MAX_NESTING deep, a tag with more
    than MAX_ATTRIBUTES attributes, or text costing more than MAX_TEXT_COST. Markup no
    article has; linear in the length of `html_text`."""
    if "<" not in html_text:  # no tag (a plain summary): only its text can cost
        return has_costly_text(html_text)
    deep = _may_be_too_deep(html_text, MAX_NESTING)
    crowded = _crowded_tag(html_text, MAX_ATTRIBUTES)
    if crowded:
        return True
    if deep or crowded is None:
        # one scan for both: crowded is None where html5ever's tree decides
        depth_limit = MAX_NESTING if deep else len(html_text)
        if _scan(html_text, depth_limit, MAX_ATTRIBUTES if crowded is None else None):
            return True
    return has_costly_text(html_text)


def is_too_deep(html_text: str, limit: int = MAX_NESTING) -> bool:
    """Whether parsing `html_text` as HTML would nest elements more than `limit` deep, or
    open more elements again than its size allows: markup no article has, which would
    cost html5ever time growing with its square. Linear in the length of `html_text`."""
    return _may_be_too_deep(html_text, limit) and _scan(html_text, limit, None)


def has_crowded_tag(html_text: str, limit: int = MAX_ATTRIBUTES) -> bool:
    """Whether html5ever or libxml2 would read a tag (start or end tag, or one cut off by
    the end of the text) with more than `limit` attributes. Linear in the length of
    `html_text`."""
    crowded = _crowded_tag(html_text, limit)
    if crowded is None:
        return _scan(html_text, len(html_text), limit)
    return crowded


def _may_be_too_deep(html_text: str, limit: int) -> bool:
    # each element opened takes a start tag, reopened ones at most as many
    return html_text.count("<") - html_text.count("</") > limit


def _too_many_attributes(attributes: str, limit: int) -> bool:
    """Whether a tag's attributes, as `_TOKEN` matched them, are more than `limit`."""
    # each takes a character at least
    return len(attributes) > limit and len(_ATTRIBUTE.findall(attributes)) > limit


def _scan(html_text: str, limit: int, attribute_limit: int | None) -> bool:
    """Follows html5ever's tokenizer and, as far as depth goes, its tree builder through
    `html_text`: True as soon as elements nest more than `limit` deep, or a tag has more
    than `attribute_limit` attributes (unless None)."""
    stack = _Stack(limit, budget=len(html_text) // 2 + limit)
    names, kinds, keys = stack.names, stack.kinds, stack.keys
    position = 0
    while match := _TOKEN.search(html_text, position):
        if stack.lingering and match.start() > position and not stack.reopen():
            return True
        end = match.end()
        comment, bogus, close, name, attributes, self_closing, tag_end = match.groups()
        if comment:
            position = end  # "--!>" ends one too (WHATWG HTML 13.2.5.50)
            continue
        if bogus:
            # <!DOCTYPE …>, <?…>, </3…>: comments to the next '>'; in SVG and MathML,
            # <![CDATA[…]]> is text
            if stack.in_foreign and bogus.startswith("![CDATA["):
                found = html_text.find("]]>", match.start())
                end = found + 3 if found >= 0 else len(html_text)
            position = end
            continue
        if attribute_limit is not None and _too_many_attributes(attributes, attribute_limit):
            return True
        if not tag_end:
            return False  # a tag cut off by the end of the text: dropped with the rest
        position = end
        name = name.lower()
        if close:
            if names and names[-1] == name:
                del names[-1], kinds[-1], keys[-1]  # the usual case: the current element
            else:
                _close(stack, name)
            continue
        in_html = not kinds or kinds[-1] == _HTML
        if name in _VOID and in_html and not stack.lingering:
            continue
        if name not in _NEEDS_CARE and in_html and not stack.lingering:
            # the usual case: an element that closes nothing opens inside the current one
            names.append(name)
            kinds.append(_HTML)
            keys.append((name, attributes.strip()) if name in _FORMATTING else None)
            stack.budget -= 1
            if len(names) > limit or stack.budget < 0:
                return True
            continue
        opened = _open(stack, name, attributes, bool(self_closing))
        if opened is None:
            return True
        if not opened:
            continue
        if name in _SCANNED_RAW_TEXT and kinds[-1] == _HTML:
            closer_at = _raw_text_end(html_text, name, position)
            if closer_at < 0:
                return False  # the rest is text
            position = closer_at
        elif name == "plaintext" and not stack.in_foreign:
            return False  # the rest is text
    return False


def _open(stack: _Stack, name: str, attributes: str, self_closing: bool) -> bool | None:
    """Applies a start tag: True when it opened an element, False when not, None when the
    stack is now too deep (or the budget spent)."""
    if stack.in_foreign:
        breaks_out = name in _BREAKOUT or (name == "font" and _FONT_BREAKOUT.search(attributes))
        if not breaks_out:
            if self_closing:
                return False
            kind = _INTEGRATION if name in _INTEGRATION_POINTS else _FOREIGN
            return stack.push(name, kind) or None
        while stack.in_foreign:
            stack.names.pop(), stack.kinds.pop(), stack.keys.pop()
    if name == "a" or name == "nobr":
        _close_formatting(stack, name, _MARKERS)  # an open one is closed first
    if stack.lingering and (name in _REOPENS or name not in _SPECIAL) and not stack.reopen():
        return None
    if name in _VOID:
        return False
    if name in ("svg", "math"):
        if self_closing:
            return False
        return stack.push(name, _FOREIGN) or None
    if name in _CLOSES_P:
        stack.pop_to(stack.find("p", _BUTTON_SCOPE))
    if name in _HEADINGS and stack.names and stack.names[-1] in _HEADINGS:
        stack.pop_to(len(stack.names) - 1)
    elif name == "li":
        stack.pop_to(_find_list_item(stack, frozenset({"li"})))
    elif name in ("dd", "dt"):
        stack.pop_to(_find_list_item(stack, frozenset({"dd", "dt"})))
    elif name == "button":
        stack.pop_to(stack.find("button", _SCOPE))
    elif name in ("td", "th"):
        stack.pop_to(stack.find(frozenset({"td", "th"}), _TABLE_SCOPE))
    elif name == "tr":
        stack.pop_to(stack.find("tr", _TABLE_SCOPE))
    elif name in ("tbody", "thead", "tfoot"):
        stack.pop_to(stack.find(frozenset({"tbody", "thead", "tfoot"}), _TABLE_SCOPE))
    elif name in ("option", "optgroup") and stack.names and stack.names[-1] == "option":
        stack.pop_to(len(stack.names) - 1)
    key = (name, attributes.strip()) if name in _FORMATTING else None
    return stack.push(name, _HTML, key) or None


def _find_list_item(stack: _Stack, names: frozenset[str]) -> int:
    """The open <li> (or <dd>, <dt>) a new one closes: not across special elements other
    than <address>, <div> and <p>."""
    stop = max(-1, len(stack.names) - 1 - _REACH)
    for index in range(len(stack.names) - 1, stop, -1):
        name = stack.names[index]
        if name in names:
            return index
        if (name in _SPECIAL and name not in ("address", "div", "p")) or stack.kinds[index]:
            return -1
    return -1


def _close(stack: _Stack, name: str) -> None:
    if stack.in_foreign:
        # an end tag in SVG or MathML closes the nearest foreign element of its name
        stop = max(-1, len(stack.names) - 1 - _REACH)
        for index in range(len(stack.names) - 1, stop, -1):
            if stack.kinds[index] == _HTML:
                break
            if stack.names[index] == name:
                stack.pop_to(index)
                return
    if name in _FORMATTING:
        _close_formatting(stack, name, _SCOPE)
    elif name == "p":
        stack.pop_to(stack.find("p", _BUTTON_SCOPE))
    elif name == "li":
        stack.pop_to(stack.find("li", _LIST_ITEM_SCOPE))
    elif name in _HEADINGS:
        stack.pop_to(stack.find(_HEADINGS, _SCOPE))
    elif name in ("tr", "tbody", "thead", "tfoot", "table"):
        stack.pop_to(stack.find(name, _TABLE_SCOPE))
    elif name in _SPECIAL:
        stack.pop_to(stack.find(name, _SCOPE))
    else:
        stack.pop_to(stack.find(name, _SPECIAL))


def _close_formatting(stack: _Stack, name: str, boundaries: frozenset[str]) -> None:
    """The adoption agency, as far as depth goes: when the element is the current one it
    is closed; when elements were opened inside it, they stay open (a copy of it goes on
    inside them) and only it leaves the stack; one closed early is not opened again."""
    index = stack.find(name, boundaries)
    if index >= 0 and index == len(stack.names) - 1:
        stack.pop_to(index)
    elif index >= 0:
        del stack.names[index], stack.kinds[index], stack.keys[index]
    else:
        key = next((key for key in stack.lingering if key[0] == name), None)
        if key is not None:
            stack.lingering[key] -= 1
            if not stack.lingering[key]:
                del stack.lingering[key]


def _raw_text_end(html_text: str, name: str, start: int) -> int:
    """Where the end tag of the raw text element `name` opened before `start` begins; -1
    when the text has none."""
    if name == "script":
        return _script_end(html_text, start)
    found = _RAW_TEXT_END[name].search(html_text, start)
    return found.start() if found else -1


def _script_end(html_text: str, start: int) -> int:
    """Where the end tag of the script whose text starts at `start` begins, -1 if none: the
    first "</script", unless "<!--" and then "<script" came before it (the tokenizer's
    double escaped state, which that "</script" only leaves, like "-->" does)."""
    escaped = double = False
    position = start
    while match := _SCRIPT_STATE.search(html_text, position):
        token = match.group()
        if token == "<!--":
            escaped = True
            position = match.start() + 2  # its dashes may end it at once: "<!-->"
            continue
        if token == "-->":
            escaped = double = False
        elif match.group(1):
            if not double:
                return match.start()
            double = False
        elif escaped:
            double = True
        position = match.end()
    return -1


def markup_text(html_text: str) -> str:
    """The text of an HTML fragment, as one linear pass finds it: tags, comments and the
    contents of scripts and styles left out, blocks apart, character references decoded
    once, whitespace collapsed."""
    pieces: list[str] = []
    position = 0
    while position < len(html_text):
        for match in _TOKEN.finditer(html_text, position):
            pieces.append(html_text[position : match.start()])
            position = match.end()
            name = match.group("name")
            if name is None:
                continue  # a comment
            name = name.lower()
            if name in _BLOCKS:
                pieces.append(" ")
            if name in _RAW_TEXT and not match.group("close") and match.group("end"):
                closer_at = _raw_text_end(html_text, name, position)
                closer_at = closer_at if closer_at >= 0 else len(html_text)
                if name not in _NOT_TEXT:
                    pieces.append(html_text[position:closer_at])
                position = closer_at
                break  # on from its end tag
        else:
            break
    pieces.append(html_text[position:])
    return " ".join(html.unescape("".join(pieces)).split())


# --- crowded tags ----------------------------------------------------------------------

#: raw text to both tokenizers (outside SVG and MathML, for html5ever)
_SHARED_RAW_TEXT = ("style", "xmp", "iframe", "noembed", "noframes", "textarea", "title")
_NOSCRIPT = re.compile(r"<noscript(?![^\t\n\f\r />])", re.IGNORECASE)


@functools.cache
def _tag_run(limit: int, raw_text: tuple[str, ...], stops: tuple[str, ...]) -> re.Pattern[str]:
    """Matches from where it starts as far as a tokenizer that reads the elements named in
    `raw_text` as raw text reads no tag with more than `limit` attributes, no script with
    "<!--" in it (`_script_end` follows those) and no start tag named in `stops`: those
    are where the match ends, unless at the end of the text."""
    separators = rf"(?:[{_S}]|/(?!>))*+"
    # at most `limit` attributes, then the end of the tag (or of the text)
    rest_of_tag = rf"(?:{separators}(?:{_ATTRIBUTE_PATTERN})){{0,{limit}}}+{separators}(?:/?>|\Z)"
    name_end = rf"(?=[{_S}/>]|\Z)"
    raw_text_elements = "".join(
        rf"| <{name}{name_end}{rest_of_tag}(?:[^<]++|<(?!/{name}[{_S}/>]))*+" for name in raw_text
    )
    special = "|".join(("script", "plaintext", *raw_text, *stops))
    return re.compile(
        rf"""(?:
            [^<]++
          | <!--(?:-?>|.*?(?:--!?>|\Z))
          | <(?:[!?]|/(?![A-Za-z]))[^>]*+>?
          | </[A-Za-z][^{_S}/>]*+{rest_of_tag}
          | <script{name_end}{rest_of_tag}
            (?:[^<]++|<(?!/script[{_S}/>]|!--))*+(?=</script[{_S}/>]|\Z)
          {raw_text_elements}
          | <plaintext{name_end}{rest_of_tag}.*+
          | <(?!(?:{special}){name_end})[A-Za-z][^{_S}/>]*+{rest_of_tag}
          | <(?![A-Za-z!?/])
        )*+""",
        re.VERBOSE | re.DOTALL | re.IGNORECASE,
    )


def _crowded_tag(html_text: str, limit: int) -> bool | None:
    """`has_crowded_tag`, or None where html5ever's reading depends on its tree (SVG or
    MathML): the libxml2 reading found none then, and `_scan` is to follow html5ever's."""
    if len(html_text) <= limit:
        return False  # each attribute takes a character at least
    crowded = _run_of_tags(
        html_text, _tag_run(limit, (*_SHARED_RAW_TEXT, "noscript"), ("svg", "math")), limit
    )
    if crowded is False and not _NOSCRIPT.search(html_text):
        return False  # libxml2 reads the same tags: they differ on noscript, SVG and MathML
    if crowded or _run_of_tags(html_text, _tag_run(limit, _SHARED_RAW_TEXT, ()), limit):
        return True
    return crowded


def _run_of_tags(html_text: str, run: re.Pattern[str], limit: int) -> bool | None:
    """True when `run` stops at a tag with more than `limit` attributes, False when it gets
    to the end of the text, None when it stops at SVG or MathML."""
    position = 0
    while True:
        position = run.match(html_text, position).end()  # type: ignore[union-attr]
        if position == len(html_text):
            return False
        token = _TOKEN.match(html_text, position)
        if token is None or token.group("name") is None:
            position += 1  # not expected: the run reads what `_TOKEN` reads
            continue
        if _too_many_attributes(token.group("attributes"), limit):
            return True
        if token.group("name").lower() != "script" or token.group("close"):
            return None  # <svg> or <math>
        position = _script_end(html_text, token.end())
        if position < 0:
            return False  # the rest is the script's


# --- costly text -----------------------------------------------------------------------

#: start tags before which html5ever's text node ends for sure: each opens an element in
#: the current one (in a table, text is moved out of it and may join earlier text; in a
#: select, most tags are left out; in SVG and MathML, much is different)
_ENDS_TEXT_NODE = frozenset(
    {
        *("a", "abbr", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote"),
        *("br", "center", "cite", "code", "dd", "del", "details", "dfn", "dir", "div", "dl"),
        *("dt", "em", "figcaption", "figure", "font", "footer", "header", "hgroup", "hr"),
        *("i", "img", "ins", "kbd", "li", "main", "mark", "menu", "nav", "ol", "p"),
        *("picture", "pre", "q", "s", "samp", "section", "small", "span", "strike"),
        *("strong", "sub", "summary", "sup", "time", "tt", "u", "ul", "var", "wbr"),
    }
    | _HEADINGS
)
#: after these, the scan no longer tells text nodes apart
_JOINS_TEXT = frozenset(
    {
        *("table", "caption", "colgroup", "col", "tbody", "thead", "tfoot", "tr", "td", "th"),
        *("select", "template", "frameset", "frame", "svg", "math"),
    }
)


def _costly_characters(text: str) -> int:
    """How many characters html5ever adds to a text node one by one: '&' (which starts a
    character reference, so a reference to one counts too) and U+0080 to U+00BF (whose
    UTF-8 starts with the byte C2)."""
    count = text.count("&")
    if not text.isascii():
        count += text.encode("utf-8", "surrogatepass").count(b"\xc2")
    return count


def _text_cost(text: str) -> int:
    return _costly_characters(text) * len(text) if text else 0


def has_costly_text(html_text: str, limit: int = MAX_TEXT_COST) -> bool:
    """Whether a text node or a tag's attributes of `html_text` would cost html5ever more
    than `limit`: the characters it adds one by one times the length they are added to.
    Linear in the length of `html_text`.

    html5ever copies a text node for each such character added to it (1,000,000 "&amp;"
    in one paragraph took 7 s, 400,000 took 1.2 s). Where the scan cannot tell the nodes
    apart, it takes them as one."""
    if _text_cost(html_text) <= limit:
        return False
    node_start = 0
    splitting = True
    position = 0
    while match := _TOKEN.search(html_text, position):
        position = match.end()
        name = match.group("name")
        if name is None or match.group("close"):
            continue  # comments, end tags: taken as part of the text around them
        name = name.lower()
        if _text_cost(match.group("attributes")) > limit:
            return True
        if name in _JOINS_TEXT:
            splitting = False
        elif splitting and name in _ENDS_TEXT_NODE and match.group("end"):
            if _text_cost(html_text[node_start : match.start()]) > limit:
                return True
            node_start = position
        if name in _SCANNED_RAW_TEXT and match.group("end"):
            closer_at = _raw_text_end(html_text, name, position)
            position = closer_at if closer_at >= 0 else len(html_text)
        elif name == "plaintext":
            break
    return _text_cost(html_text[node_start:]) > limit
