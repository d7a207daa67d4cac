"""The command line: arguments → calls → messages and exit codes (see CONTRACT.md)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator import __version__
from aggregator.errors import (
    ConfigError,
    NotChanged,
    PublishError,
    QueryError,
    StoreError,
    error_kind,
)
from aggregator.memory import one_malloc_arena
from aggregator.model import Config, FeedSource, FeedState, PollResult
from aggregator.text import single_line
from aggregator.timeutil import format_duration, to_iso, utcnow
from aggregator.urls import redact_text, redact_url

if TYPE_CHECKING:
    from aggregator.store import FetchRecord, Store

# The pipeline, store and config modules are imported by main(), not here: parse
# workers are spawned processes that re-import the console script (and with it this
# module), and need none of them (14 MB each).

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    # -c is accepted before and after the command: a parent parser shared by both levels,
    # with SUPPRESS so the subcommand's absent option does not erase the main one's.
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        help="config file (default: $AGGREGATOR_CONFIG, else ./feeds.yaml)",
    )
    parser = argparse.ArgumentParser(
        prog="aggregator",
        description="Merge many feeds into clean, deduplicated topic feeds.",
        parents=[config_option],
    )
    parser.add_argument("--version", action="version", version=f"aggregator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("check", parents=[config_option], help="validate the config")
    poll = commands.add_parser("poll", parents=[config_option], help="poll every feed once")
    poll.add_argument("--once", action="store_true", required=True, help="one round, then exit")
    poll.add_argument(
        "--force", action="store_true", help="also poll gone feeds and ignore Retry-After"
    )
    commands.add_parser("run", parents=[config_option], help="run the daemon")
    status = commands.add_parser("status", parents=[config_option], help="show each feed's state")
    status.add_argument(
        "--json", action="store_true", help="print a JSON array (with --feed: one object)"
    )
    status.add_argument(
        "--feed",
        metavar="NAME",
        help="one feed (its name or URL): details and its last fetches",
    )
    commands.add_parser("build", parents=[config_option], help="re-render every output")
    prune = commands.add_parser(
        "prune", parents=[config_option], help="apply the retention now; pruned stays pruned"
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would go")
    add = commands.add_parser(
        "add", parents=[config_option], help="add a feed, or the feed a web page advertises"
    )
    add.add_argument("url", metavar="URL", help="a feed, or a page that links to one")
    add.add_argument("--name", help="the feed's name (default: its own title)")
    add.add_argument(
        "--tag", action="append", default=[], type=_tag_argument, help="a tag (repeatable)"
    )
    add.add_argument(
        "--pick",
        type=_pick_argument,
        metavar="K",
        help="of several feeds the page advertises, take the K-th (default: the first)",
    )
    remove = commands.add_parser("remove", parents=[config_option], help="remove a feed")
    remove.add_argument("target", metavar="URL|NAME", help="the feed's URL or name")
    import_ = commands.add_parser(
        "import", parents=[config_option], help="add the feeds of an OPML file"
    )
    import_.add_argument("opml", metavar="FILE.opml", type=Path, help="an OPML export")
    import_.add_argument(
        "--tag", action="append", default=[], type=_tag_argument, help="a tag for every feed"
    )
    search = commands.add_parser(
        "search",
        parents=[config_option],
        help="find stored stories by words in their title and text",
        description=(
            'Words must all match; "a phrase" in quotes; word* for a prefix; -word to'
            " exclude (put the query in quotes, or after --); OR between two terms for"
            " either. Best match first, the title counting more than the text."
        ),
    )
    search.add_argument("query", nargs="+", metavar="QUERY", help="the words to look for")
    search.add_argument("--topic", metavar="T", help="only the stories topic T publishes")
    search.add_argument(
        "--since", metavar="SPAN", help="only stories published within SPAN (e.g. 12h, 7d)"
    )
    search.add_argument("--json", action="store_true", help="print a JSON array")
    search.add_argument(
        "--limit", type=int, metavar="N", help="at most N results (default 20, at most 100)"
    )
    return parser


def _tag_argument(value: str) -> str:
    from aggregator.config import is_tag

    if not is_tag(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a tag may hold only letters, digits, '_' and '-'"
        )
    return value


def _pick_argument(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a number from 1")
    return int(value)


def config_path(args: argparse.Namespace) -> Path:
    explicit = getattr(args, "config", None) or os.environ.get("AGGREGATOR_CONFIG")
    return Path(explicit or "feeds.yaml")


def main(argv: Sequence[str] | None = None) -> int:
    one_malloc_arena()
    args = build_parser().parse_args(argv)
    if args.command == "run":
        # The daemon reads the config itself: an invalid file must not stop a service
        # that can wait for the next valid save (and says so in /healthz).
        from aggregator.daemon import run_daemon

        return run_daemon(config_path(args))
    from aggregator.config import load_config
    from aggregator.logs import configure_logging
    from aggregator.store import Store

    # warnings and internal errors a command meets on its way (poll lines are printed)
    configure_logging(logging.WARNING, "%(message)s")

    try:
        if args.command in ("add", "remove", "import"):
            return cmd_manage(args, config_path(args))
        config = load_config(config_path(args))
        if args.command == "check":
            return cmd_check(config)
        if args.command == "poll":
            return cmd_poll(config, force=args.force)
        if args.command == "status":
            # read-only: works on a read-only file system and beside a running daemon
            readonly = Store.open_readonly(config.settings.database)
            try:
                return cmd_status(config, readonly, as_json=args.json, feed=args.feed)
            finally:
                if readonly is not None:
                    readonly.close()
        if args.command == "search":
            return cmd_search(config, args)
        with Store.open(config.settings.database) as store:
            if args.command == "build":
                return cmd_build(config, store)
            if args.command == "prune":
                return cmd_prune(config, store, dry_run=args.dry_run)
    except ConfigError as e:
        print(redact_text(str(e)), file=sys.stderr)
        return EXIT_CONFIG
    except QueryError as e:
        print(f"aggregator: search: {single_line(redact_text(str(e)))}", file=sys.stderr)
        return EXIT_CONFIG
    except (StoreError, PublishError, NotChanged) as e:
        # one line: a server's reason phrase or a parser's message can be part of it
        print(f"aggregator: {single_line(redact_text(str(e)))}", file=sys.stderr)
        return EXIT_FAILURE
    raise AssertionError(f"unhandled command {args.command}")


def cmd_check(config: Config) -> int:
    print(
        f"{config.path}: ok: {len(config.feeds)} feeds, {len(config.topics)} topics "
        f"({', '.join(t.slug for t in config.topics)})"
    )
    return EXIT_OK


def cmd_poll(config: Config, *, force: bool) -> int:
    from aggregator import pipeline
    from aggregator.progress import Progress

    progress = Progress(len(config.feeds), "polling", "feeds")

    def report(source: FeedSource, result: PollResult) -> None:
        # on a terminal the status line counts the feeds that went well; the others are
        # printed above it. Elsewhere every feed's line is printed, as it comes.
        if not progress.live or _needs_attention(result):
            progress.print(pipeline.describe(source, result))
        progress.advance(failed=result.error is not None)

    with progress, progress.above_logging():
        results, pruned, changed = pipeline.run_loop(
            pipeline.poll_and_publish(config, force=force, on_result=report)
        )
    if pruned:
        print(f"pruned {pruned} items older than {config.settings.retention}", file=sys.stderr)
    failed = sum(r.error is not None for r in results)
    skipped = sum(r.skipped is not None for r in results)
    new = sum(r.new for r in results)
    updated = sum(r.updated for r in results)
    print(
        f"polled {len(results) - skipped} of {len(results)} feeds: {failed} failed, "
        f"{skipped} skipped; {new} new items, {updated} updated; "
        f"{len(changed)} output files changed in {config.settings.output_dir}",
        file=sys.stderr,
    )
    return EXIT_OK


def _needs_attention(result: PollResult) -> bool:
    return bool(result.error is not None or result.skipped or result.moved_to or result.warning)


def cmd_manage(args: argparse.Namespace, path: Path) -> int:
    """`add`, `remove`, `import`: feeds.yaml edited in place (manage.py)."""
    from aggregator import manage
    from aggregator.progress import Progress

    def say(line: str) -> None:
        # one line each, its indentation kept (a numbered list of candidates)
        text = line.lstrip(" ")
        print(line[: len(line) - len(text)] + single_line(redact_text(text)), flush=True)

    if args.command == "add":
        say(manage.add(path, args.url, name=args.name, tags=args.tag, pick=args.pick, say=say))
    elif args.command == "remove":
        for line in manage.remove(path, args.target):
            say(line)
    else:

        def progress(total: int) -> Progress:
            return Progress(total, "importing", "feeds")

        report = manage.import_opml(
            path, args.opml, tags=args.tag, say=say, start_progress=progress
        )
        say(report.summary())
    return EXIT_OK


def cmd_build(config: Config, store: Store) -> int:
    from aggregator import publish

    _, changed = publish.publish(store, config, keep=False)
    print(f"{len(changed)} output files changed in {config.settings.output_dir}")
    return EXIT_OK


def cmd_search(config: Config, args: argparse.Namespace) -> int:
    """`search`: the query checked first (exit 2 before the database is opened), then the
    stories not yet in the full-text index added (the daemon adds them after each burst
    of polls), then the best matches printed."""
    from aggregator import publish, render, search
    from aggregator.store import Store

    request = search.make_request(
        config.topics, " ".join(args.query), args.topic, args.since, args.limit
    )
    try:
        store = Store.open(config.settings.database)
    except StoreError:
        # a read-only file or folder (a backup, another user's daemon): what is indexed
        readonly = Store.open_readonly(config.settings.database)
        if readonly is None:
            raise
        store = readonly
    with store:
        with contextlib.suppress(StoreError):  # another process's lock: search what is indexed
            store.index_pending()
        hits = publish.search_items(store, config, request, utcnow())
    results = [render.search_result(item, score) for item, score in hits]
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not results:
        print(f"no stories match {request.query.text!r}", file=sys.stderr)
    for index, result in enumerate(results):
        if index:
            print()
        when = to_iso(datetime.fromisoformat(result["published"]))[:16].replace("T", " ")
        print(single_line(result["title"]))
        print(f"  {single_line(result['source'] or 'unknown outlet')} · {when} UTC")
        print(f"  {result['url'] or '(no link)'}")
    return EXIT_OK


#: `prune` lists at most this many of the stories it removes
PRUNE_LISTED = 20


def cmd_prune(config: Config, store: Store, *, dry_run: bool) -> int:
    from aggregator import publish

    retention = config.settings.retention
    cutoff = utcnow() - retention
    listed, count = store.prunable(cutoff, limit=PRUNE_LISTED)
    names = {source.url: source.shown_name for source in config.feeds}
    for story in listed:
        outlets = ", ".join(names.get(url) or redact_url(url) for url in story.feed_urls)
        print(f"  {to_iso(story.published)[:10]}  {single_line(f'{story.title}  ({outlets})')}")
    if count > len(listed):
        print(f"  … and {count - len(listed)} more")
    limit = f"published before {to_iso(cutoff)} (retention {format_duration(retention)})"
    if dry_run:
        print(f"would prune {count} items {limit}; nothing changed (--dry-run)")
        return EXIT_OK
    removed = store.prune(cutoff)
    _, changed = publish.publish(store, config, keep=False)
    print(
        f"pruned {removed} items {limit}; they stay pruned while their feeds still list"
        f" them; {len(changed)} output files changed in {config.settings.output_dir}"
    )
    return EXIT_OK


def feed_status(
    source: FeedSource, state: FeedState | None, items: int, pushed: bool = False
) -> dict[str, Any]:
    """One feed's row of `status --json`: the contract's fields, then what the table shows
    beside them. `pushed`: a WebSub hub pushes the feed (an active subscription)."""
    from aggregator.status import result_text
    from aggregator.update import explain_interval

    if state is None or state.last_fetched is None:
        condition = "never"
    elif state.gone:
        condition = "gone"
    elif state.last_error:
        condition = "error"
    else:
        condition = "ok"
    last_status = state.last_status if state else None
    kind = error_kind(last_status, state.last_error) if state and state.last_error else None
    interval, reason = explain_interval(source, state, pushed)
    # credentials in a URL or a message are shown as "***": status output gets pasted
    # into bug reports and chat
    return {
        "url": redact_url(source.url),
        "name": source.name or (state.title if state else None),
        "state": condition,
        "last_fetched": to_iso(state.last_fetched) if state and state.last_fetched else None,
        "next_due": (
            to_iso(state.next_due)
            if state and state.next_due and not state.gone and source.enabled
            else None
        ),
        "last_status": last_status,
        "last_error": redact_text(state.last_error) if state and state.last_error else None,
        "items": items,
        "moved_to": redact_url(state.moved_to) if state and state.moved_to else None,
        # beyond the contract's fields
        "last_error_kind": kind,
        "last_result": result_text(last_status, kind, condition),
        "enabled": source.enabled,
        "failures": state.failures if state else 0,
        "interval_seconds": int(interval.total_seconds()),
        "interval_reason": reason,
    }


def cmd_status(
    config: Config,
    store: Store | None,
    *,
    as_json: bool,
    feed: str | None = None,
    now: datetime | None = None,
    width: int | None = None,
) -> int:
    from aggregator import status

    now = now or utcnow()
    width = width or shutil.get_terminal_size((100, 24)).columns
    states = store.feed_states() if store is not None else {}
    counts = store.item_counts() if store is not None else {}
    # the feeds a WebSub hub pushes: polled rarely (update.PUSHED_INTERVAL); no secret read
    pushed = {
        s.feed_url
        for s in (store.subscriptions() if store is not None else [])
        if s.state == "active" and s.lease_expires is not None and s.lease_expires > now
    }
    if feed is not None:
        from aggregator.config import feeds_named

        matches = feeds_named(config, feed)
        if len(matches) != 1:
            what = "no feed" if not matches else f"{len(matches)} feeds"
            print(
                f"aggregator: {what} named {single_line(redact_text(feed))!r} in {config.path}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        source = config.feeds[matches[0]]
        row = feed_status(
            source, states.get(source.url), counts.get(source.url, 0), source.url in pushed
        )
        history = [
            fetch_status(f) for f in (store.fetch_history(source.url) if store is not None else [])
        ]
        if as_json:
            print(json.dumps({**row, "history": history}, indent=2))
        else:
            print("\n".join(status.render_feed(row, history, now, width)))
        return EXIT_OK
    rows = [
        feed_status(s, states.get(s.url), counts.get(s.url, 0), s.url in pushed)
        for s in config.feeds
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print("\n".join(status.render_table(rows, now, width)))
    return EXIT_OK


def fetch_status(fetch: FetchRecord) -> dict[str, Any]:
    """One fetch of `status --feed --json`'s `history`."""
    return {
        "fetched_at": to_iso(fetch.fetched_at),
        "duration_seconds": fetch.duration,
        "status": fetch.status,
        "outcome": fetch.outcome,
        "error_kind": fetch.error_kind,
        "error": redact_text(fetch.error) if fetch.error else None,
        "new": fetch.new,
        "updated": fetch.updated,
    }
