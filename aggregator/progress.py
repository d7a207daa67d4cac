"""Progress of a long command (`poll --once`, `import`) on stderr.

On a terminal: one status line ("polling: 12/40 feeds, 1 failed, 3s") rewritten in place
with a carriage return, and the lines that need attention (a failure, a skipped feed)
printed above it; log records too, since the line is cleared before anything else is
written to the stream and drawn again after. Elsewhere (a pipe, a file, journald,
TERM=dumb): no status line, only the plain lines, each as it comes.

Hand-written: one line rewritten with "\\r" and "erase to end of line" (ESC [ K) is all
this needs, not a terminal UI library.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO

#: back to the start of the line and erase it
_CLEAR = "\r\x1b[K"
#: the status line is drawn at most this often (seconds); always at the end
_REDRAW_EVERY = 0.1


def is_live_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that understands "\\r" and ESC [ K."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def format_elapsed(seconds: float) -> str:
    """`4.2s`, `35s`, `2m05s`, `1h02m`."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Progress:
    """Counts `total` steps of a task and shows them; a context manager.

    with Progress(40, "polling", "feeds") as progress:
        progress.print("Daily NK: error: …")   # above the status line, or plain
        progress.advance(failed=True)
    """

    def __init__(
        self,
        total: int,
        verb: str,
        noun: str,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.verb = verb
        self.noun = noun
        self.stream = stream if stream is not None else sys.stderr
        self.live = is_live_terminal(self.stream) if live is None else live
        self.done = 0
        self.failed = 0
        self._clock = clock
        self._started = clock()
        self._drawn = False
        self._last_draw = float("-inf")

    # -- what callers use

    def print(self, text: str) -> None:
        """A line of its own: above the status line on a terminal."""
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        self._draw(force=True)

    def advance(self, *, failed: bool = False) -> None:
        """One more step done (`failed`: and it failed)."""
        self.done += 1
        self.failed += failed
        self._draw(force=self.done >= self.total)

    def status(self) -> str:
        """The status line's text."""
        elapsed = format_elapsed(self._clock() - self._started)
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.verb}: {self.done}/{self.total} {self.noun}{failed}, {elapsed}"

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Erase the status line: what is printed next starts on a clean line."""
        self._clear()
        self.stream.flush()

    @contextmanager
    def above_logging(self) -> Iterator[None]:
        """While inside, log records written to this stream are printed above the status
        line instead of over it."""
        handlers = [
            handler
            for handler in logging.getLogger().handlers
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream
        ]
        if not self.live or not handlers:
            yield
            return
        proxy = _AboveStream(self)
        for handler in handlers:
            handler.setStream(proxy)
        try:
            yield
        finally:
            proxy.detached = True  # setStream flushes the stream it replaces
            for handler in handlers:
                handler.setStream(self.stream)

    # -- drawing

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write(_CLEAR)
            self._drawn = False

    def _draw(self, *, force: bool = False) -> None:
        if not self.live:
            return
        now = self._clock()
        if not force and now - self._last_draw < _REDRAW_EVERY:
            return
        self._last_draw = now
        # never wider than the terminal: a wrapped line cannot be rewritten with "\r"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write(_CLEAR + self.status()[: max(width, 10)])
        self.stream.flush()
        self._drawn = True


class _AboveStream:
    """A stream for logging handlers: clears the status line before a record, draws it
    again once the record's line is complete."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self.detached = False

    def write(self, text: str) -> int:
        self._progress._clear()
        return self._progress.stream.write(text)

    def flush(self) -> None:
        self._progress.stream.flush()
        if not self.detached:
            self._progress._draw(force=True)
