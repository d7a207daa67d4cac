"""Display text of single-line fields (titles, names, category terms). No I/O.

Unicode's bidirectional formatting characters change the order in which the text after
them is shown: U+202E (right-to-left override) before "gpj.exe" makes it read "exe.jpg",
and an unterminated one in a title can reorder whatever a reader shows next to it. No
title or name needs them, so single-line fields lose them all, when an entry is cleaned
and again when it is rendered (for what was stored before). Bodies (article HTML,
excerpts) keep the implicit marks, which right-to-left text uses legitimately, and lose
only the embeddings, overrides and isolates where we lay them out.
"""

from __future__ import annotations

import re

__all__ = ["BIDI_EMBEDDINGS", "BIDI_MARKS", "single_line", "without_bidi_embeddings"]

#: embeddings and overrides (U+202A–U+202E) and isolates (U+2066–U+2069)
BIDI_EMBEDDINGS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
#: the implicit marks: left-to-right, right-to-left, Arabic letter mark
BIDI_MARKS = "\u200e\u200f\u061c"

_EMBEDDINGS = re.compile(f"[{BIDI_EMBEDDINGS}]")
#: the bidi controls, and the C0 and C1 control characters (ESC, BEL, CSI…), which a
#: terminal reading `status` or a log would obey rather than show
_BIDI_CONTROLS = re.compile(f"[{BIDI_EMBEDDINGS}{BIDI_MARKS}\x00-\x08\x0b-\x1f\x7f-\x9f]")


def single_line(text: str | None) -> str:
    """`text` as one line of plain text: no bidirectional formatting or control characters,
    every run of whitespace (line breaks included) one space, none at either end."""
    if not text:
        return ""
    return " ".join(_BIDI_CONTROLS.sub("", text).split())


def without_bidi_embeddings(text: str) -> str:
    """`text` without the embeddings, overrides and isolates; marks and spacing kept."""
    return _EMBEDDINGS.sub("", text)
