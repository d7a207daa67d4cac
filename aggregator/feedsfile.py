"""feeds.yaml edited as text: feed entries appended to or removed from `feeds:`, every
other byte of the file kept as it was. No I/O.

Decision: a text edit guided by the positions the config loader's composer (libyaml, else
ruamel.yaml's own) gives each node, not a round trip through ruamel's loader and dumper. A
round trip keeps comments, but not the file byte for byte: it re-indents sequences,
re-wraps long lines, drops redundant quotes and moves comments that sit between keys.
Here the new entry's lines go right after the last line of the last entry (indented as
that entry is, separated by a blank line when the entries are), and a removed entry's
lines are cut out; nothing else changes. The caller validates the result with the config
loader before writing it.

Comments and removal: the comments on an entry's own lines (at the end of a line, or
between its keys) go with it. Comment lines above an entry stay: a note about this feed
cannot be told from a heading for the feeds below it, and losing a heading is worse than
keeping a stale note (the command names the lines it kept).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver

from aggregator.config import compose_fast

#: what a YAML reader of a plain scalar could take for something else than a string
_PLAIN_SAFE = re.compile(r"[\w./][^\s#,\[\]{}'\"]*(?: [^\s#,\[\]{}'\"]+)*")
_NULL_TAG = "tag:yaml.org,2002:null"
#: a `...` line: the end of the YAML document
_DOCUMENT_END = re.compile(r"\.\.\.(?:\s|$)")


class EditError(Exception):
    """feeds.yaml cannot be edited as asked; str() is one line for the user."""


@dataclass(frozen=True)
class NewFeed:
    """An entry to append: `url`, and `name` and `tags` when given."""

    url: str
    name: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Removed:
    """What `remove_feed` did: the new text and the 1-based lines of the comments kept
    directly above the removed entry (possibly a note about it)."""

    text: str
    kept_comment_lines: tuple[int, ...] = ()


# --- scalars -----------------------------------------------------------------------


# Outside YAML's printable set (its reader refuses them: U+FFFE, C1 controls, surrogates), or
# read as a line break or a byte-order mark, so a title from an OPML file or a feed could
# otherwise make a feeds.yaml that does not load.
_YAML_UNREADABLE = re.compile(
    "[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


def _escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


#: how the config loader (YAML 1.2) types a plain scalar
_RESOLVER = VersionedResolver()
_STR_TAG = "tag:yaml.org,2002:str"


def yaml_scalar(value: str) -> str:
    """`value` as a YAML scalar that reads back as exactly this string: plain when that is
    unambiguous (`https://example.org/feed`, `Daily NK`), else double-quoted."""
    if (
        _PLAIN_SAFE.fullmatch(value)
        and ": " not in value
        and not value.endswith(":")
        and not _YAML_UNREADABLE.search(value)
        # not a null, bool, number or date: a YAML load per value made an import of
        # 20,000 feeds take 17 s
        and _RESOLVER.resolve(ScalarNode, value, (True, False)) == _STR_TAG
    ):
        return value
    # a JSON string is a YAML double-quoted scalar, once what YAML will not read raw is escaped
    return _YAML_UNREADABLE.sub(_escaped, json.dumps(value, ensure_ascii=False))


def entry_lines(feed: NewFeed, dash_column: int = 2, key_column: int = 4) -> list[str]:
    """The lines of one `- url: …` entry (without line endings)."""
    first = " " * dash_column + "-" + " " * max(1, key_column - dash_column - 1)
    lines = [f"{first}url: {yaml_scalar(feed.url)}"]
    indent = " " * len(first)
    if feed.name is not None:
        lines.append(f"{indent}name: {yaml_scalar(feed.name)}")
    if feed.tags:
        lines.append(f"{indent}tags: [{', '.join(yaml_scalar(tag) for tag in feed.tags)}]")
    return lines


# --- the document ------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    #: a byte-order mark the file starts with ("" when none): kept, but not in `lines`, as
    #: the composer's columns on the first line do not count it
    bom: str
    lines: list[str]
    #: the line ending the file uses
    newline: str
    root: Node | None
    #: the `feeds` key and its value, when present
    key: ScalarNode | None
    value: Node | None


def _layout(text: str) -> _Layout:
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    text = text[len(bom) :]
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if "\r\n" in text else "\n"
    try:
        # composed as the config loader composes it (libyaml, else ruamel's own composer):
        # ruamel's own refuses what libyaml and so `check` accept, such as a tab before a
        # comment
        root = compose_fast(text)
        if root is None:
            root = YAML(typ="rt").compose(text)
    except YAMLError as error:
        raise EditError(f"cannot be read as YAML: {error}") from error
    key = value = None
    if root is not None:
        if not isinstance(root, MappingNode) or root.flow_style:
            raise EditError("the top level is not a block mapping (settings, topics, feeds)")
        for key_node, value_node in root.value:
            if isinstance(key_node, ScalarNode) and key_node.value == "feeds":
                key, value = key_node, value_node
    return _Layout(bom, lines, newline, root, key, value)


def _is_empty_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG and node.value in ("", None)


def _descendants(node: Node) -> Iterator[tuple[Node | None, Node]]:
    """(key or None, node) for every node under `node`, itself included."""
    pending: list[tuple[Node | None, Node]] = [(None, node)]
    seen: set[int] = set()
    while pending:
        key, current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield key, current
        if isinstance(current, MappingNode):
            for key_node, value_node in current.value:
                pending += [(None, key_node), (key_node, value_node)]
        elif isinstance(current, SequenceNode):
            pending += [(None, item) for item in current.value]


def _last_line(node: Node, lines: Sequence[str]) -> int:
    """The 0-based index of the last line holding any of `node`'s text."""
    last = int(node.start_mark.line)
    for key, current in _descendants(node):
        if isinstance(current, ScalarNode):
            if _is_empty_null(current):
                # an empty value's marks point at the next token: its key's line counts
                end = key.end_mark.line if key is not None else current.start_mark.line
            elif current.style in ("|", ">"):
                end = _block_scalar_end(current, lines)
            else:
                end = current.end_mark.line
        elif isinstance(current, MappingNode | SequenceNode) and current.flow_style:
            end = current.end_mark.line
        else:
            continue  # a block collection ends where its last scalar does
        last = max(last, int(end))
    return last


def _block_scalar_end(node: ScalarNode, lines: Sequence[str]) -> int:
    end = int(node.end_mark.line if node.end_mark.column else node.end_mark.line - 1)
    header = lines[node.start_mark.line][node.start_mark.column :].split("#")[0]
    if "+" in header:
        return end  # kept trailing blank lines are part of the value
    while end > node.start_mark.line and not lines[end].strip():
        end -= 1
    return end


def _dash_line(item: Node, lines: Sequence[str]) -> int:
    """The line of the `-` that starts a sequence item."""
    line = int(item.start_mark.line)
    if "-" in lines[line][: item.start_mark.column]:
        return line
    while line > 0:
        line -= 1
        if lines[line].lstrip().startswith("-"):
            return line
    return int(item.start_mark.line)


def _ensure_newline(lines: list[str], index: int, newline: str) -> None:
    if index >= 0 and not lines[index].endswith(("\n", "\r")):
        lines[index] += newline


# --- edits -------------------------------------------------------------------------


def append_feeds(text: str, feeds: Sequence[NewFeed]) -> str:
    """`text` with `feeds` appended to its `feeds:` list (created when missing or empty)."""
    if not feeds:
        return text
    layout = _layout(text)
    lines, newline = layout.lines, layout.newline
    value = layout.value

    if layout.key is None or value is None:
        # no `feeds:` yet: a new list at the end of the document (before a `...` that ends
        # it), indented as the other top-level keys
        end, column = len(lines), 0
        if layout.root is not None:
            column = layout.root.start_mark.column
            after_root = range(_last_line(layout.root, lines) + 1, len(lines))
            end = next((i for i in after_root if _DOCUMENT_END.match(lines[i])), end)
        new = [" " * column + "feeds:"]
        new += [line for feed in feeds for line in entry_lines(feed, column + 2, column + 4)]
        _ensure_newline(lines, end - 1, newline)
        lines[end:end] = [line + newline for line in new]
        return layout.bom + "".join(lines)

    if isinstance(value, SequenceNode) and not value.flow_style and value.value:
        items = value.value
        model = items[-1]
        dash_column = value.start_mark.column
        model_dash = _dash_line(model, lines)
        if model_dash == model.start_mark.line:
            key_column = model.start_mark.column
            dash_column = lines[model_dash].index("-", 0, key_column)
        else:
            key_column = dash_column + 2
        # entries separated by blank lines get one too
        spaced = len(items) > 1 and any(
            not line.strip() for line in lines[_last_line(items[-2], lines) + 1 : model_dash]
        )
        after = _last_line(model, lines)
        new = []
        for feed in feeds:
            if spaced:
                new.append("")
            new += entry_lines(feed, dash_column, key_column)
        _ensure_newline(lines, after, newline)
        lines[after + 1 : after + 1] = [line + newline for line in new]
        return layout.bom + "".join(lines)

    empty_flow = isinstance(value, SequenceNode) and value.flow_style and not value.value
    if (
        _is_empty_null(value)
        or empty_flow
        or (isinstance(value, ScalarNode) and value.tag == _NULL_TAG)
    ):
        # `feeds:`, `feeds: []`, `feeds: null`: the list starts under the key
        key_line = layout.key.start_mark.line
        if not _is_empty_null(value):
            start, end = value.start_mark, value.end_mark
            if start.line != key_line or end.line != key_line:
                raise EditError("feeds: spans several lines; add the feed by hand")
            row = lines[key_line]
            lines[key_line] = row[: start.column].rstrip(" ") + row[end.column :]
        dash_column = layout.key.start_mark.column + 2
        new = [line for feed in feeds for line in entry_lines(feed, dash_column, dash_column + 2)]
        _ensure_newline(lines, key_line, newline)
        lines[key_line + 1 : key_line + 1] = [line + newline for line in new]
        return layout.bom + "".join(lines)

    if isinstance(value, SequenceNode) and value.flow_style:
        raise EditError(
            "feeds: is written as a [flow, list]; write one entry per line "
            "(`- url: …`) to have feeds added to it"
        )
    raise EditError("feeds: is not a list")


def remove_feed(text: str, index: int) -> Removed:
    """`text` without the `index`th entry of its `feeds:` list."""
    layout = _layout(text)
    lines, value = layout.lines, layout.value
    if not isinstance(value, SequenceNode) or index >= len(value.value):
        raise EditError(f"feeds[{index}] not found")
    if value.flow_style:
        raise EditError("feeds: is written as a [flow, list]; remove the feed by hand")
    item = value.value[index]
    first = _dash_line(item, lines)
    last = _last_line(item, lines)
    kept = []
    above = first - 1
    while above >= 0 and lines[above].lstrip().startswith("#"):
        kept.append(above + 1)
        above -= 1
    del lines[first : last + 1]
    if 0 < first < len(lines) and not lines[first - 1].strip() and not lines[first].strip():
        del lines[first]  # entries apart by a blank line: one blank line stays between
    return Removed(layout.bom + "".join(lines), tuple(sorted(kept)))
