"""The offline demo: six sample outlets served locally, merged by the aggregator, ready to browse.

    make demo                       # or: .venv/bin/python demo/run.py
    .venv/bin/python demo/run.py --once   # one poll round, print where the files are, exit

The sample feeds in demo/feeds/ are served on 127.0.0.1 at a free port (with ETag,
Last-Modified and 304s, like a real site). demo/feeds.yaml.in becomes demo-out/feeds.yaml,
and `aggregator run` polls the samples and serves the merged topics on 127.0.0.1:$DEMO_PORT
(default 8080). When the daemon is not available, one `aggregator poll --once` round is run
and demo-out/public/ is served instead.

Environment: DEMO_OUT (output folder, default demo-out/ in the project), DEMO_PORT.
Standard library only; run it with the project's venv python, which has `aggregator` installed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import unquote, urlsplit

DEMO_DIR = Path(__file__).resolve().parent
PROJECT_DIR = DEMO_DIR.parent
FEEDS_DIR = DEMO_DIR / "feeds"
CONFIG_TEMPLATE = DEMO_DIR / "feeds.yaml.in"
DEFAULT_PORT = 8080

#: the topics feeds.yaml.in defines, for the instructions
TOPICS = {"north-korea": "North Korea", "all": "Everything"}

#: a daemon that dies this soon after starting is taken as not (yet) working
STARTUP_GRACE_SECONDS = 5.0
#: how long the daemon gets to shut down after a forwarded signal
SHUTDOWN_SECONDS = 20.0

SAMPLE_TYPES = {
    ".rss": "application/rss+xml; charset=utf-8",
    ".atom": "application/atom+xml; charset=utf-8",
    ".rdf": "application/rdf+xml; charset=utf-8",
    ".json": "application/feed+json; charset=utf-8",
    # news wires often still serve their RSS as plain XML
    ".xml": "text/xml; charset=utf-8",
}
PUBLISHED_TYPES = {
    ".atom": "application/atom+xml; charset=utf-8",
    ".rss": "application/rss+xml; charset=utf-8",
    ".json": "application/feed+json; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".opml": "text/x-opml; charset=utf-8",
}


# --- a small static file server --------------------------------------------------------


def not_modified(
    etag: str, modified: datetime, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    """Whether a GET may be answered 304 (RFC 9110 §13.1): If-None-Match (strong or weak
    tags, or *) decides when sent, else If-Modified-Since against `modified` (whole
    seconds, UTC). Written here, not taken from aggregator.publish: the server the
    aggregator polls must not share the code it exercises."""
    if if_none_match is not None:
        tags = [tag.strip() for tag in if_none_match.split(",")]
        return "*" in tags or any(tag in (etag, "W/" + etag) for tag in tags)
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, IndexError):
            return False
        if since.tzinfo is None:  # HTTP-dates are GMT
            since = since.replace(tzinfo=UTC)
        return modified <= since
    return False


class StaticHandler(BaseHTTPRequestHandler):
    """Serves the files of one flat folder with validators and conditional GET."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection does not hold a thread forever
    folder: Path = FEEDS_DIR
    content_types: Mapping[str, str] = SAMPLE_TYPES

    def log_message(self, format: str, *args: object) -> None:
        pass  # the aggregator reports every fetch itself

    def do_GET(self) -> None:
        self.serve(with_body=True)

    def do_HEAD(self) -> None:
        self.serve(with_body=False)

    def serve(self, *, with_body: bool) -> None:
        name = unquote(urlsplit(self.path).path).lstrip("/") or "index.html"
        path = self.folder / name
        content_type = self.content_types.get(path.suffix)
        # flat folders only: no subfolders, no dot files, nothing outside `folder`
        if "/" in name or name.startswith(".") or content_type is None or not path.is_file():
            self.answer(404, b"not found\n", {"Content-Type": "text/plain; charset=utf-8"})
            return
        body = path.read_bytes()
        modified = datetime.fromtimestamp(int(path.stat().st_mtime), UTC)
        validators = {
            "ETag": '"' + hashlib.sha256(body).hexdigest()[:20] + '"',
            "Last-Modified": format_datetime(modified, usegmt=True),
        }
        if not_modified(
            validators["ETag"],
            modified,
            self.headers.get("If-None-Match"),
            self.headers.get("If-Modified-Since"),
        ):
            self.answer(304, b"", validators)
            return
        headers = {"Content-Type": content_type, "Cache-Control": "no-cache", **validators}
        self.answer(200, body if with_body else b"", headers, length=len(body))

    def answer(
        self, status: int, body: bytes, headers: Mapping[str, str], length: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)


def make_server(folder: Path, content_types: Mapping[str, str], port: int) -> ThreadingHTTPServer:
    """A server for `folder` on 127.0.0.1:`port` (0: any free port), not yet serving."""

    class Handler(StaticHandler):
        pass

    Handler.folder = folder
    Handler.content_types = content_types
    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


@contextmanager
def sample_feed_server() -> Iterator[str]:
    """Serves demo/feeds/ in a background thread; yields its base URL (no trailing slash)."""
    server = make_server(FEEDS_DIR, SAMPLE_TYPES, 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- settings and files ------------------------------------------------------------------


def output_root() -> Path:
    """$DEMO_OUT (relative to the current folder), else demo-out/ in the project."""
    configured = os.environ.get("DEMO_OUT")
    return Path(configured).absolute() if configured else PROJECT_DIR / "demo-out"


def demo_port() -> int:
    text = os.environ.get("DEMO_PORT", str(DEFAULT_PORT)).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise SystemExit(f"demo: DEMO_PORT must be a port number from 1 to 65535, got {text!r}")
    return int(text)


def reset_output(out: Path) -> None:
    """Forget earlier demo runs: the sample server's port, so every feed URL, changes per run."""
    for name in ("demo.db", "demo.db-wal", "demo.db-shm", "feeds.yaml"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "public", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def write_config(out: Path, feed_server: str, port: int) -> Path:
    template = string.Template(CONFIG_TEMPLATE.read_text(encoding="utf-8"))
    config = out / "feeds.yaml"
    config.write_text(template.substitute(feed_server=feed_server, port=port), encoding="utf-8")
    return config


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the servers do, so connections lingering in TIME_WAIT do not count as "in use"
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def is_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def shown(path: Path) -> str:
    """`path` relative to the current folder when it is inside it, for shorter messages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- the aggregator ---------------------------------------------------------------------


def aggregator_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "aggregator", "-c", str(config), *args]


def poll_once(config: Path) -> int:
    return subprocess.run(aggregator_command(config, "poll", "--once"), check=False).returncode


def daemon_is_installed() -> bool:
    return importlib.util.find_spec("aggregator.daemon") is not None


class Forwarder:
    """Passes SIGINT/SIGTERM on to the daemon, which runs in its own session so that
    Ctrl-C reaches it once, through us."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.stop_requested_at: float | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()


def run_daemon(config: Path, port: int, out: Path) -> int | None:
    """Runs `aggregator run` until it exits; None when it failed right away."""
    process = subprocess.Popen(aggregator_command(config, "run"), start_new_session=True)
    forwarder = Forwarder(process)
    previous = {sig: signal.signal(sig, forwarder) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        started = time.monotonic()
        announced = False
        while True:
            try:
                code = process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                if forwarder.stop_requested_at is None and not announced:
                    if time.monotonic() - started < STARTUP_GRACE_SECONDS and code != 0:
                        print(f"demo: `aggregator run` exited with {code} at once.", flush=True)
                        return None
                return code
            if forwarder.stop_requested_at is not None:
                if time.monotonic() - forwarder.stop_requested_at > SHUTDOWN_SECONDS:
                    print("demo: the daemon did not stop in time; killing it", flush=True)
                    process.kill()
            elif not announced and is_listening(port):
                print_instructions(port, out, daemon=True)
                announced = True
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_published(port: int, out: Path) -> int:
    """The fallback: serve the files of one poll round until Ctrl-C or SIGTERM."""
    server = make_server(out / "public", PUBLISHED_TYPES, port)
    # both end serve_forever() with KeyboardInterrupt, even where SIGINT started out ignored
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in stop_signals}
    print_instructions(port, out, daemon=False)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def print_instructions(port: int, out: Path, *, daemon: bool) -> None:
    base = f"http://127.0.0.1:{port}"
    lines = [
        "",
        "The aggregator demo is running.",
        (
            "Six sample outlets (demo/feeds/) are polled every minute."
            if daemon
            else "Six sample outlets (demo/feeds/) were polled once; their merged feeds are served."
        ),
        "",
        "Open in a browser:",
        f"  {base}/north-korea.html    the North Korea topic",
        f"  {base}/index.html          every topic",
        "",
        "Subscribe in a feed reader (pick one format):",
    ]
    for slug, title in TOPICS.items():
        for extension in ("atom", "rss", "json"):
            lines.append(f"  {base}/{slug}.{extension}".ljust(44) + f"  {title}")
    lines += [
        f"  {base}/feeds.opml".ljust(44) + "  the sample outlets, as OPML",
        "",
        f"Files: {shown(out / 'public')}/   database: {shown(out / 'demo.db')}",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


# --- entry point ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--once", action="store_true", help="poll the samples once, print where the files are"
    )
    args = parser.parse_args(argv)
    if importlib.util.find_spec("aggregator") is None:
        print(
            "demo: the aggregator package is not installed for this python; "
            "run `make demo` or `.venv/bin/python demo/run.py`",
            file=sys.stderr,
        )
        return 1
    out = output_root()
    port = demo_port()
    if not args.once and not port_is_free(port):
        print(
            f"demo: port {port} on 127.0.0.1 is in use; "
            "choose another, e.g. DEMO_PORT=8081 make demo",
            file=sys.stderr,
        )
        return 1
    reset_output(out)
    with sample_feed_server() as feed_server:
        config = write_config(out, feed_server, port)
        if args.once:
            code = poll_once(config)
            public = out / "public"
            print(f"Config: {shown(config)}")
            print(f"Published files in {shown(public)}/:")
            for path in sorted(public.glob("*")) if public.is_dir() else []:
                print(f"  {shown(path)}")
            return code
        if daemon_is_installed():
            daemon_code = run_daemon(config, port, out)
            if daemon_code is not None:
                return daemon_code
        else:
            print("demo: `aggregator run` (aggregator.daemon) is not available yet.", flush=True)
        print("demo: falling back to one `aggregator poll --once` round and a static server.")
        code = poll_once(config)
        if code != 0:
            return code
        return serve_published(port, out)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # Ctrl-C before serving (during --once or the fallback poll)
        raise SystemExit(130) from None
