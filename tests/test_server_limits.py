"""The daemon's HTTP server under hostile and careless clients (aggregator/httpserver.py).

Each test starts the real daemon (`python -m aggregator -c feeds.yaml run`, this checkout
on PYTHONPATH) on a free port with one unreachable feed, and attacks it over raw sockets:
an endless header line or request line, a huge or endless body, 1,000 half-sent requests
next to 1,000 idle connections, more connections than the cap. Meanwhile a normal client
must be answered in under a second and the daemon's memory must stay flat.
"""

from __future__ import annotations

import http.client
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from aggregator.httpserver import Limits

ROOT = Path(__file__).parent.parent
LIMITS = Limits()
#: the normal client's answer must come within this many seconds, attack or not
PROMPT = 1.0
#: growth of the daemon's resident memory allowed during an attack, in MB
RSS_SLACK_MB = 30
#: "read no further": bytes a refused client may get into the daemon's socket before it is
#: cut off: the limit, one read of the event loop and both kernels' socket buffers
BOUNDED_BYTES = 16 * 2**20


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors() -> None:
    """This process opens 2,000 sockets; the daemon inherits the raised limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 4096")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the daemon ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log_file: IO[bytes]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def get(self, path: str = "/healthz", timeout: float = 10) -> tuple[int, float]:
        """A normal client: one GET on a new connection; (status, seconds taken)."""
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status, time.monotonic() - started
        finally:
            conn.close()

    def answers_promptly(self, path: str = "/healthz") -> float:
        status, took = self.get(path, timeout=5)
        assert status in (200, 503), status
        assert took < PROMPT, f"a normal GET {path} took {took:.2f} s"
        return took

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


def start_daemon(root: Path, nofile: int | None = None) -> Daemon:
    port = free_port()
    config = root / "feeds.yaml"
    config.write_text(
        "settings:\n"
        "  database: agg.db\n"
        "  output_dir: public\n"
        f"  listen: 127.0.0.1:{port}\n"
        f"  base_url: http://127.0.0.1:{port}/\n"
        "  interval: 1h\n"
        "feeds:\n"
        "  - url: http://127.0.0.1:9/unreachable.xml\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "AGGREGATOR_CONFIG")
    }
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, wherever pytest runs from

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log_path = root / f"daemon-{time.monotonic_ns()}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "-c", str(config), "run"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        preexec_fn=limit_files,
    )
    daemon = Daemon(process, port, log_path, log_file)
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, f"daemon exited early:\n{daemon.log}"
        try:
            daemon.get()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    for _ in range(20):  # warm up: the first answers allocate what later ones reuse
        daemon.get("/all.atom")
        daemon.get()
    return daemon


def stop_daemon(daemon: Daemon) -> None:
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(15)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait(10)
    daemon.log_file.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_daemon(tmp_path_factory.mktemp("limits"))
    try:
        yield running
    finally:
        stop_daemon(running)
    assert "Traceback" not in running.log, running.log


# --- helpers ------------------------------------------------------------------------------


@dataclass
class Flood:
    """What a client sending without end got: bytes sent, the error that stopped it."""

    sent: int = 0
    error: OSError | None = None


def flood(sock: socket.socket, first: bytes, filler: bytes, total: int, flooding: Flood) -> None:
    """Send `first`, then `filler` over and over up to `total` bytes, as fast as the
    daemon takes them; stop at the first error (the daemon closed the connection)."""
    try:
        sock.sendall(first)
        flooding.sent = len(first)
        while flooding.sent < total:
            sock.sendall(filler)
            flooding.sent += len(filler)
    except OSError as e:
        flooding.error = e


def answer_of(sock: socket.socket, timeout: float = 5) -> bytes:
    """Whatever the daemon sent before closing (b"" when it just closed)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass  # closed with our unread bytes still in its buffer: data sent before may be lost
    return received


def attack_while_serving(
    daemon: Daemon, attack: Callable[[], None], seconds: float = 120
) -> tuple[float, float]:
    """Run `attack` in a thread; meanwhile a normal client must be answered promptly and
    resident memory must stay within RSS_SLACK_MB. Returns (worst latency, peak RSS)."""
    before = daemon.rss_mb()
    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    worst, peak = 0.0, before
    deadline = time.monotonic() + seconds
    while thread.is_alive():
        assert time.monotonic() < deadline, "the attack did not end"
        worst = max(worst, daemon.answers_promptly())
        peak = max(peak, daemon.rss_mb())
        assert peak - before < RSS_SLACK_MB, f"RSS grew from {before:.1f} to {peak:.1f} MB"
        time.sleep(0.05)
    thread.join()
    peak = max(peak, daemon.rss_mb())
    assert peak - before < RSS_SLACK_MB, f"RSS grew from {before:.1f} to {peak:.1f} MB"
    print(f"RSS {before:.1f} MB before, {peak:.1f} MB at most; worst answer {worst * 1000:.0f} ms")
    return worst, peak


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


# --- an endless head ----------------------------------------------------------------------

ENDLESS = 200 * 2**20


@pytest.mark.parametrize(
    ("first", "filler", "statuses"),
    [
        # one header line that never ends
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ", b"a" * 65536, {431, 400}),
        # endless headers, each line complete
        (b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-A: " + b"a" * 1000 + b"\r\n", {431, 400}),
        # a request line that never ends
        (b"GET /", b"a" * 65536, {414, 431, 400}),
    ],
    ids=["header-line", "many-headers", "request-line"],
)
def test_an_endless_head_is_refused_after_a_bounded_read_and_memory_stays_flat(
    daemon: Daemon, first: bytes, filler: bytes, statuses: set[int]
) -> None:
    flooding = Flood()
    with daemon.connect() as sock:
        attack_while_serving(daemon, lambda: flood(sock, first, filler, ENDLESS, flooding))
        answer = answer_of(sock)
    assert flooding.sent < BOUNDED_BYTES, f"the daemon read {flooding.sent / 2**20:.0f} MB"
    assert isinstance(flooding.error, (BrokenPipeError, ConnectionResetError)), flooding.error
    # the answer, when it survives the reset of a connection closed unread
    assert answer == b"" or status_of(answer) in statuses, answer[:100]
    print(f"cut off after {flooding.sent / 2**20:.2f} MB sent; answer {answer[:40]!r}")


@pytest.mark.parametrize("length", [60_000, 100_000])
def test_an_over_long_request_line_is_refused_at_once(daemon: Daemon, length: int) -> None:
    with daemon.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"GET /" + b"a" * length + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = answer_of(sock)
        took = time.monotonic() - started
    assert status_of(answer) in (414, 431, 400), answer[:100]
    assert b"connection: close" in answer.lower()
    assert took < PROMPT, took


def test_a_large_but_allowed_head_is_served(daemon: Daemon) -> None:
    with daemon.connect() as sock:
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(60))  # ~6.6 KB
        path = b"/all.atom?" + b"q" * (LIMITS.max_target - 100)
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        answer = sock.recv(65536)
    assert status_of(answer) == 200, answer[:100]


# --- bodies ---------------------------------------------------------------------------------


def test_a_huge_declared_body_is_refused_unread(daemon: Daemon) -> None:
    head = b"POST /all.atom HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % ENDLESS
    flooding = Flood()
    with daemon.connect() as sock:
        attack_while_serving(daemon, lambda: flood(sock, head, b"b" * 65536, ENDLESS, flooding))
        answer = answer_of(sock)
    assert flooding.sent < BOUNDED_BYTES, f"the daemon read {flooding.sent / 2**20:.0f} MB"
    assert answer == b"" or status_of(answer) == 413, answer[:100]


def test_an_endless_chunked_body_is_cut_off(daemon: Daemon) -> None:
    head = b"POST /all.atom HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"b" * 0x10000 + b"\r\n"
    flooding = Flood()
    with daemon.connect() as sock:
        attack_while_serving(daemon, lambda: flood(sock, head, chunk, ENDLESS, flooding))
    assert flooding.sent < BOUNDED_BYTES, f"the daemon read {flooding.sent / 2**20:.0f} MB"


def test_a_small_post_is_answered_405_and_the_connection_stays_usable(daemon: Daemon) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("POST", "/all.atom", body=b"x" * 1000)
        response = conn.getresponse()
        response.read()
        assert response.status == 405
        conn.request("GET", "/all.atom")  # the same connection
        response = conn.getresponse()
        assert response.status == 200 and response.read().startswith(b"<?xml")
    finally:
        conn.close()


def test_pipelined_requests_are_all_answered(daemon: Daemon) -> None:
    with daemon.connect() as sock:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request * 3 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = answer_of(sock)
    assert answer.count(b"HTTP/1.1 200 ") == 4, answer


# --- idle and half-sent connections -------------------------------------------------------


def closed_by_peer(sockets: list[socket.socket], timeout: float) -> int:
    """Wait up to `timeout` s for the daemon to close them; how many it closed."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in sockets}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    closed = 0
    deadline = time.monotonic() + timeout
    while by_fd and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            sock = by_fd.pop(fd)
            poller.unregister(fd)
            try:
                data = sock.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b"", data  # closed without an answer
            closed += 1
    return closed


def test_1000_half_sent_requests_and_1000_idle_connections_do_not_slow_a_normal_client(
    daemon: Daemon,
) -> None:
    half_sent: list[socket.socket] = []
    idle: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(1000):
            sock = daemon.connect()
            sock.sendall(b"GET /all.atom HTTP/1.1\r\nHost: x\r\n")
            half_sent.append(sock)
            idle.append(daemon.connect())
        opened = time.monotonic() - started
        latencies = [daemon.answers_promptly(path) for path in ["/healthz", "/all.atom"] * 10]
        print(
            f"2,000 connections opened in {opened:.1f} s; a normal client's worst answer "
            f"{max(latencies) * 1000:.0f} ms; RSS {daemon.rss_mb():.1f} MB"
        )
        # each is closed request_timeout after it was accepted, give or take the opening
        timeout = LIMITS.request_timeout + opened + 3
        assert closed_by_peer(half_sent, timeout) == len(half_sent)
        assert closed_by_peer(idle, 3) == len(idle)
        assert time.monotonic() - started >= LIMITS.request_timeout - 0.5  # not before
        daemon.answers_promptly()
    finally:
        for sock in half_sent + idle:
            sock.close()


def test_a_head_sent_slowly_is_cut_off_at_the_request_timeout(daemon: Daemon) -> None:
    """A client trickling one header line a second (slowloris) gets request_timeout."""
    with daemon.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.9)
        while time.monotonic() - started < LIMITS.request_timeout + 5:
            try:
                sock.sendall(b"X-A: b\r\n")
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        took = time.monotonic() - started
    assert LIMITS.request_timeout - 0.5 <= took <= LIMITS.request_timeout + 2, took


# --- the connection cap ---------------------------------------------------------------------


def test_at_the_connection_cap_the_longest_idle_connection_makes_room(tmp_path: Path) -> None:
    # 256 file descriptors: the daemon keeps half of them, 128, for connections
    limited = start_daemon(tmp_path, nofile=256)
    sockets: list[socket.socket] = []
    try:
        for _ in range(400):
            sock = limited.connect()
            sockets.append(sock)
        latencies = [limited.answers_promptly() for _ in range(10)]
        print(f"400 idle connections, cap 128: worst answer {max(latencies) * 1000:.0f} ms")
        # the oldest were closed to make room, the newest are still open
        assert closed_by_peer(sockets[:200], 3) == 200
        assert closed_by_peer(sockets[-100:], 0.5) == 0
    finally:
        for sock in sockets:
            sock.close()
        stop_daemon(limited)
    assert "Too many open files" not in limited.log, limited.log
    assert "Traceback" not in limited.log, limited.log
