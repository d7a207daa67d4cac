"""OPML subscription lists (http://opml.org/spec2.opml) → the feeds they hold. No I/O.

Read with lxml, safely: no entity is expanded and no DTD or network resource loaded, and a
document whose DOCTYPE declares entities or elements (where "billion laughs" bombs and
external entities are declared) is refused outright: no subscription list needs one.

Each `<outline>` with an `xmlUrl` is a feed (one of type "rss" without it, an invalid
feed); an outline without one that holds others is a folder, and its label (`title`, else
`text`) becomes a tag of every feed inside it, as do the entries of a feed's own
`category` attribute ("/news,/world"; what render_opml writes). Miniflux and FreshRSS
export their categories as such folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lxml import etree

from aggregator.config import tag_from_label
from aggregator.text import single_line

#: the largest OPML file read: an export of thousands of feeds is well under a megabyte
MAX_OPML_BYTES = 20 * 1024 * 1024


class OPMLError(ValueError):
    """Not an OPML subscription list we can read; str() is one line for the user."""


@dataclass(frozen=True)
class Outline:
    """One feed outline."""

    #: the `xmlUrl` attribute, stripped
    url: str
    #: `title`, else `text`, as one line; "" when neither
    label: str
    #: from the folders around it and its `category` attribute, each once, outermost first
    tags: tuple[str, ...]
    #: folder labels and categories that gave no usable tag (nothing but punctuation or
    #: non-Latin letters)
    dropped: tuple[str, ...] = ()


def read_opml(data: bytes) -> list[Outline]:
    """The feed outlines of an OPML document, in document order; OPMLError when it is
    not one."""
    if len(data) > MAX_OPML_BYTES:
        raise OPMLError(f"larger than {MAX_OPML_BYTES // (1024 * 1024)} MB")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as error:
        raise OPMLError(f"not well-formed XML: {error}") from error
    except ValueError as error:
        raise OPMLError(f"not XML: {error}") from error
    if root is None:
        raise OPMLError("empty document")
    # a bare <!DOCTYPE opml> (some exporters write one) declares nothing, and is read
    dtd: Any = root.getroottree().docinfo.internalDTD  # lxml-stubs lack its iterators
    if dtd is not None and (any(dtd.iterentities()) or any(dtd.iterelements())):
        raise OPMLError("has a DOCTYPE with declarations (entities); OPML needs none")
    if etree.QName(root).localname != "opml":
        raise OPMLError(f"the root element is <{etree.QName(root).localname}>, not <opml>")
    body = next((child for child in root if _name(child) == "body"), None)
    if body is None:
        raise OPMLError("no <body> in <opml>")
    outlines: list[Outline] = []
    _collect(body, (), (), outlines)
    return outlines


def _name(element: etree._Element) -> str:
    return etree.QName(element).localname if isinstance(element.tag, str) else ""


def _label(element: etree._Element) -> str:
    return single_line(element.get("title") or element.get("text") or "")


def _collect(
    parent: etree._Element,
    tags: tuple[str, ...],
    dropped: tuple[str, ...],
    into: list[Outline],
) -> None:
    # iterative over siblings, recursive over folders: OPML nests a few levels at most,
    # and lxml refuses documents nested deeper than 256 levels (huge_tree=False)
    for element in parent:
        if _name(element) != "outline":
            continue
        url = (element.get("xmlUrl") or element.get("xmlurl") or "").strip()
        if url:
            own_tags, own_dropped = list(tags), list(dropped)
            for category in (element.get("category") or "").split(","):
                for part in category.split("/"):
                    _add_tag(part, own_tags, own_dropped)
            into.append(Outline(url, _label(element), tuple(own_tags), tuple(own_dropped)))
            continue
        if len(element):
            folder_tags, folder_dropped = list(tags), list(dropped)
            _add_tag(_label(element), folder_tags, folder_dropped)
            _collect(element, tuple(folder_tags), tuple(folder_dropped), into)
        elif (element.get("type") or "").strip().lower() in _FEED_TYPES:
            # a feed whose address the export lost: counted as invalid, not passed over
            into.append(Outline("", _label(element), tags, dropped))


#: the outline types that say "this is a feed" (OPML 2.0 names "rss"; some write "atom")
_FEED_TYPES = frozenset({"rss", "atom"})


def _add_tag(label: str, tags: list[str], dropped: list[str]) -> None:
    label = single_line(label)
    if not label:
        return
    tag = tag_from_label(label)
    if not tag:
        dropped.append(label)
    elif tag not in tags:
        tags.append(tag)
