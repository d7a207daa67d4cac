"""Logging set up once for every command: what reaches stderr (and the journal) shows no
credential and obeys no control character."""

from __future__ import annotations

import logging
import sys

from aggregator.urls import redact_text


class RedactingFormatter(logging.Formatter):
    """Every record, traceback included, with credentials in URLs shown as "***": one
    place, whatever a message or an exception quotes."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure_logging(level: int, fmt: str = "%(levelname)s %(message)s") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
