"""The daemon's HTTP server under hostile and careless clients (aggregator/httpserver.py).

Each test starts the real daemon (`python -m aggregator -c feeds.yaml run`, this checkout
on PYTHONPATH) on a free port with one unreachable feed, and attacks it over raw sockets:
an endless header line or request line, a huge or endless body, 1,000 half-sent requests
next to 1,000 idle connections, more connections than the cap, clients pipelining requests
without reading the answers. Meanwhile a normal client must be answered in under a second
and the daemon's memory must stay flat.
"""

from __future__ import annotations

import contextlib
import errno
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
from typing import IO, Any

import pytest
import uvicorn

from aggregator import pipeline
from aggregator.httpserver import Limits, make_config

pytestmark = pytest.mark.slow  # end to end: real processes and servers

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
        "settings:\n  per_host_spacing: 0\n"
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
    daemon: Daemon, attack: Callable[[], None], seconds: float = 120, slack: float = RSS_SLACK_MB
) -> tuple[float, float]:
    """Run `attack` in a thread; meanwhile a normal client must be answered promptly and
    resident memory must grow by less than `slack` MB. Returns (worst latency, peak RSS)."""
    before = daemon.rss_mb()
    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    worst, peak = 0.0, before
    deadline = time.monotonic() + seconds
    while thread.is_alive():
        assert time.monotonic() < deadline, "the attack did not end"
        worst = max(worst, daemon.answers_promptly())
        peak = max(peak, daemon.rss_mb())
        assert peak - before < slack, f"RSS grew from {before:.1f} to {peak:.1f} MB"
        time.sleep(0.05)
    thread.join()
    peak = max(peak, daemon.rss_mb())
    assert peak - before < slack, f"RSS grew from {before:.1f} to {peak:.1f} MB"
    print(f"RSS {before:.1f} MB before, {peak:.1f} MB at most; worst answer {worst * 1000:.0f} ms")
    return worst, peak


def responses_in(answer: bytes) -> list[tuple[int, bytes]]:
    """The (status, body) of each response in `answer`, which all have a content-length."""
    responses = []
    while answer:
        head, _, rest = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(fields[b"content-length"])
        responses.append((int(lines[0][9:12]), rest[:length]))
        answer = rest[length:]
    return responses


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


@pytest.mark.parametrize("count", [51, 3000])
def test_many_pipelined_requests_read_by_their_client_are_all_answered_in_order(
    daemon: Daemon, count: int
) -> None:
    """More than max_pipeline at once: the rest wait unparsed, and are answered as the
    queue drains (3,000 requests are 100 KB: the daemon reads them in one or two reads)."""
    requests = [
        b"GET /all.atom HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /missing-%d HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /all.atom HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nbody!",
    ]
    expected = [200, 404, 405]
    sent = b"".join(
        requests[i % 3] % i if i % 3 == 1 else requests[i % 3] for i in range(count - 1)
    )
    sent += b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with daemon.connect() as sock:
        sender = threading.Thread(target=sock.sendall, args=(sent,), daemon=True)
        sender.start()
        answer = answer_of(sock, timeout=30)
        sender.join()
    answers = responses_in(answer)
    assert [status for status, _ in answers] == [expected[i % 3] for i in range(count - 1)] + [200]
    assert all(body.startswith(b"<?xml") for _, body in answers[:-1:3])


def aborted_by_peer(sockets: list[socket.socket], timeout: float) -> int:
    """Wait up to `timeout` s for the daemon to close them, answers left unread or not;
    how many it closed."""
    poller = select.poll()
    fds = {sock.fileno() for sock in sockets}
    for fd in fds:
        poller.register(fd, select.POLLRDHUP)  # POLLHUP and POLLERR come anyway
    deadline = time.monotonic() + timeout
    while fds and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            fds.discard(fd)
            poller.unregister(fd)
    return len(sockets) - len(fds)


#: how long the pipelining clients keep sending, seconds
PIPELINING = 15


def test_clients_pipelining_without_reading_cost_bounded_memory_and_are_dropped(
    tmp_path: Path,
) -> None:
    """20 connections send GET /all.atom over and over and never read: uvicorn parsed and
    queued every request and buffered every answer (57 MB to 2.7 GB, /healthz unanswered
    for 15 s). Now each stops being read once its queue or unsent answers are full, and is
    aborted when its client has taken none of them for send_timeout."""
    attacked = start_daemon(tmp_path)  # its own: its memory is what is measured
    requests = b"GET /all.atom HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    sockets: list[socket.socket] = []
    sent = [0]
    stopping = threading.Event()  # the test failed: leave the sockets to be closed

    def pipeline_without_reading() -> None:
        until = time.monotonic() + PIPELINING
        while time.monotonic() < until and not stopping.is_set():
            _, writable, _ = select.select([], sockets, [], 0.1)
            for sock in writable:
                try:
                    sent[0] += sock.send(requests)
                except (BlockingIOError, ConnectionError):
                    pass

    try:
        for _ in range(20):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", attacked.port))
            sock.setblocking(False)
            sockets.append(sock)
        before = attacked.rss_mb()
        worst, peak = attack_while_serving(
            attacked, pipeline_without_reading, seconds=PIPELINING + 30, slack=50
        )
        assert sent[0] > 2**20, sent  # the daemon took requests, at first
        # each stopped being read within a second or so of the start; give it the send
        # timeout from the end of the attack, and the sweep
        closed_after = time.monotonic()
        closed = aborted_by_peer(sockets, LIMITS.send_timeout + 5)
        took = time.monotonic() - closed_after
        print(
            f"pipelining without reading, 20 connections, {sent[0] / 2**20:.0f} MB of "
            f"requests sent: RSS {before:.1f} MB before, {peak:.1f} MB at most; worst "
            f"/healthz {worst * 1000:.0f} ms; all closed {took:.1f} s after the attack"
        )
        assert closed == len(sockets)
        attacked.answers_promptly()
        assert attacked.rss_mb() - before < 50
    finally:
        stopping.set()
        time.sleep(0.3)
        for sock in sockets:
            sock.close()
        stop_daemon(attacked)
    assert "Traceback" not in attacked.log, attacked.log


#: the answer of the in-process server below: more than both kernels' socket buffers hold
BIG = 8 * 2**20


@pytest.fixture
def big_answers() -> Iterator[int]:
    """Our server in this process, with a send timeout of 1 s, answering every request
    with BIG bytes; its port."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"%d" % BIG)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * BIG})

    with serving(app, Limits(send_timeout=1.0)) as port:
        yield port


@contextlib.contextmanager
def serving(app: Any, limits: Limits) -> Iterator[int]:
    """Our server (uvicorn with our protocol and `limits`) running `app` on a thread of
    this process; its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(make_config(app, limits))
    thread = threading.Thread(
        target=pipeline.run_loop, args=(server.serve(sockets=[listener]),), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def test_the_send_timeout_resets_a_client_that_stops_reading_not_one_that_reads_slowly(
    big_answers: int,
) -> None:
    def ask(close: bool) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", big_answers))
        connection = b"Connection: close\r\n" if close else b""
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + connection + b"\r\n")
        return sock

    slow, stopped, stopped_closing = ask(False), ask(False), ask(True)
    try:
        started = time.monotonic()
        slow.settimeout(5)
        received = 0
        while time.monotonic() - started < 5:  # 16 KB/s: 5 send timeouts' worth
            received += len(slow.recv(4096))
            time.sleep(0.25)
        # the stalled answers were reset within the timeout and a sweep or so
        assert aborted_by_peer([stopped, stopped_closing], 0.5) == 2
        assert aborted_by_peer([slow], 0.5) == 0, f"reset after {received} bytes"
        assert slow.recv(1) == b"x"  # open, and more to come
        # reset, not closed: the daemon's kernel let go of the unsent answer too
        for sock in (stopped, stopped_closing):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
    finally:
        for sock in (slow, stopped, stopped_closing):
            sock.close()


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
