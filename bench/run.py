"""The benchmark driver (`make bench`): corpus, nginx, measured rounds, peers, table.

Each round is a fresh process, started as a user would start it, measured from outside:
wall time, CPU (user+sys of the whole process tree, from wait4/RUSAGE_CHILDREN deltas),
peak RSS of the main process (its VmHWM) and of the whole tree (the sum over the tree's
processes, sampled from /proc every 50 ms). nginx, the server, is not counted.

Results: bench/out/results-*.json (raw), bench/results.md and the block between the markers
in bench/README.md (the table).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
CORPUS = OUT / "corpus"
VENV_BIN = ROOT / ".venv" / "bin"
READER_VENV = OUT / "venv-reader"
#: a round slower than this runs once, not --repeat times
LONG_ROUND = 60.0
SAMPLE_SECONDS = 0.05
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
COLUMNS = (
    "round",
    "wall s",
    "CPU s",
    "feeds/s",
    "peak MB main",
    "peak MB all (RSS / PSS, procs)",
    "items",
    "dup. (link)",
    "dup. (all)",
    "wrong merges",
    "failed feeds",
    "other load",
)


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- tools ----------------------------------------------------------------------------------


def ensure_debian_tools() -> dict[str, bool]:
    """nginx and wrk from Debian's packages, installed when missing."""
    missing = [pkg for pkg, exe in (("nginx-light", "nginx"), ("wrk", "wrk")) if not _which(exe)]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        log(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], env=env, check=False)
    return {"nginx": bool(_which("nginx")), "wrk": bool(_which("wrk"))}


def _which(exe: str) -> str | None:
    return shutil.which(exe) or next(
        (str(p) for p in (Path("/usr/sbin") / exe, Path("/sbin") / exe) if p.exists()), None
    )


def ensure_reader_venv() -> str:
    python = READER_VENV / "bin" / "python"
    if not python.exists():
        log("creating bench/out/venv-reader with reader from PyPI")
        subprocess.run([sys.executable, "-m", "venv", str(READER_VENV)], check=True)
    # reader's vendored feedparser imports `sgmllib` (sgmllib3k); a feedparser build that
    # depends on another sgmllib port leaves it missing, so install it explicitly.
    imports = "import reader, reader._vendor.feedparser"
    if subprocess.run([str(python), "-c", imports], capture_output=True).returncode:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "reader", "sgmllib3k"], check=True
        )
    version = subprocess.run(
        [str(python), "-c", "import reader; print(reader.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return version.stdout.strip()


# --- corpus and nginx -----------------------------------------------------------------------


def free_port(hosts: int) -> int:
    """A port free on every loopback address the corpus uses."""
    port: int
    for port in [8731, *range(18731, 18831)]:
        try:
            for i in range(hosts):
                with socket.socket() as s:
                    # as nginx does: connections in TIME_WAIT from a previous run don't count
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((f"127.0.0.{10 + i}", port))
        except OSError:
            continue
        return port
    raise SystemExit("bench: no free port for nginx")


def make_corpus(feeds: int, round_number: int, port: int, hosts: int) -> dict[str, Any]:
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "corpus.py"),
            f"--feeds={feeds}",
            f"--mutate={round_number}",
            f"--port={port}",
            f"--hosts={hosts}",
            f"--out={OUT}",
        ],
        check=True,
    )
    precompress(CORPUS / "feeds")
    manifest: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_text())
    return manifest


def precompress(folder: Path) -> None:
    """.gz beside each feed for gzip_static; rewritten only when the feed changed (stable ETag)."""
    for path in folder.iterdir():
        if path.suffix == ".gz" or path.suffix == ".tmp":
            continue
        target = path.with_name(path.name + ".gz")
        if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
            continue
        target.write_bytes(gzip.compress(path.read_bytes(), compresslevel=6, mtime=0))


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{
        application/rss+xml xml;
        application/atom+xml atom;
        application/rdf+xml rdf;
        application/feed+json json;
        text/html html;
    }}
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {dir}/tmp;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000;
    etag on;
    if_modified_since exact;
    gzip_static on;
    gzip on;
    gzip_types application/rss+xml application/atom+xml application/rdf+xml application/feed+json;
    server {{
{listens}
        root {root};
        location /public/ {{ alias {public}/; }}
    }}
}}
"""


class Nginx:
    def __init__(self, port: int, hosts: int) -> None:
        self.port = port
        self.dir = OUT / "nginx"
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        listens = "\n".join(f"        listen 127.0.0.{10 + i}:{port};" for i in range(hosts))
        conf = NGINX_CONF.format(
            user="user root root;" if os.geteuid() == 0 else "",
            dir=self.dir,
            listens=listens,
            root=CORPUS,
            public=OUT / "run-aggregator" / "public",
        )
        (self.dir / "nginx.conf").write_text(conf)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        nginx = _which("nginx")
        assert nginx
        self._stop_stale()
        self.process = subprocess.Popen(
            [nginx, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", "nginx.conf"],
            stdout=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.10:{self.port}/manifest.json"
        if not wait_http(url, 10):
            raise SystemExit(f"bench: nginx did not answer {url}; see {self.dir}/error.log")
        SERVER_PIDS[:] = _tree(self.process.pid)
        return self

    def _stop_stale(self) -> None:
        """An nginx left by an interrupted run of ours holds the port: stop it."""
        try:
            pid = int((self.dir / "nginx.pid").read_text())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = str(self.dir).encode() in f.read()
        except (OSError, ValueError):
            return
        if ours:
            os.kill(pid, signal.SIGQUIT)
            time.sleep(1)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def wait_http(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.1)
    return False


# --- measuring one process --------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += _children(current)
    return pids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _hwm(pid: int) -> int:
    """The process's own peak RSS so far (VmHWM), children excluded."""
    return _proc_kb(pid, "status", "VmHWM:")


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (a forked worker's) divided among their users."""
    return _proc_kb(pid, "smaps_rollup", "Pss:")


def _proc_kb(pid: int, name: str, field: str) -> int:
    """Bytes of a "Field:  N kB" line in /proc/PID/NAME; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _become_subreaper() -> None:
    """Orphaned descendants (a forkserver outliving its parent) are reparented to us, so we
    can reap them and their CPU time lands in RUSAGE_CHILDREN."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        log("warning: cannot become a child subreaper; orphaned processes' CPU is not counted")


def _reap_orphans(seen: set[int], seconds: float = 10.0) -> None:
    me = os.getpid()
    deadline = time.monotonic() + seconds
    pending = set(seen)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pending.discard(pid)  # gone (reaped by its own parent)
                continue
            if ppid != me:
                continue  # still has its own parent, which will reap it
            if os.waitpid(pid, os.WNOHANG)[0]:
                pending.discard(pid)
        time.sleep(0.02)


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


def _process_cpu(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / TICKS


#: processes whose CPU is the benchmark's but not the measured program's (nginx)
SERVER_PIDS: list[int] = []


@dataclass
class Measured:
    wall: float
    cpu: float
    user: float
    sys: float
    main_peak_mb: float
    tree_peak_mb: float
    tree_peak_pss_mb: float
    #: nginx's CPU seconds during the run
    server_cpu: float
    #: average cores busy with anything else on the machine (other users' jobs): noise
    other_load: float
    #: this driver's own CPU seconds during the run (the /proc sampler)
    harness_cpu: float
    #: ru_maxrss from wait4: inflated by the driver's RSS (inherited across exec); reference only
    ru_maxrss_mb: float
    #: the aggregator source measured (commit, and whether aggregator/ had local changes)
    source: str
    processes: int
    exit_code: int
    log: str


def measure(cmd: list[str], log_path: Path) -> Measured:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before, server_before = _busy_seconds(), _process_cpu(SERVER_PIDS)
    peak = {"tree": 0, "pss": 0, "hwm": 0}
    source = source_version()
    seen: set[int] = set()
    done = threading.Event()
    with log_path.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

        def sample() -> None:
            samples = 0
            while not done.wait(SAMPLE_SECONDS):
                pids = _tree(proc.pid)
                seen.update(pids)
                peak["tree"] = max(peak["tree"], sum(_rss(p) for p in pids))
                peak["hwm"] = max(peak["hwm"], _hwm(proc.pid))
                samples += 1
                if len(pids) > 1 and samples % 5 == 1:  # PSS costs the kernel more: 250 ms
                    peak["pss"] = max(peak["pss"], sum(_pss(p) for p in pids))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()  # interrupted: leave no round running behind us
            raise
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    seen.discard(proc.pid)
    _reap_orphans(seen)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    busy = _busy_seconds() - busy_before
    server = _process_cpu(SERVER_PIDS) - server_before
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    harness = (self_after.ru_utime + self_after.ru_stime) - (
        self_before.ru_utime + self_before.ru_stime
    )
    other = max(0.0, busy - user - system - server - harness) / wall
    # Not ru_maxrss: Linux carries the high-water mark across exec, so a child of this driver
    # starts with the driver's own RSS as its "peak". VmHWM belongs to the new image; the last
    # sample is at most SAMPLE_SECONDS before exit.
    main_peak = peak["hwm"] / 2**20
    tree_peak = max(peak["tree"] / 2**20, main_peak)
    return Measured(
        wall=wall,
        cpu=user + system,
        user=user,
        sys=system,
        main_peak_mb=main_peak,
        tree_peak_mb=tree_peak,
        tree_peak_pss_mb=peak["pss"] / 2**20 if peak["pss"] else tree_peak,
        server_cpu=server,
        other_load=other,
        harness_cpu=harness,
        ru_maxrss_mb=usage.ru_maxrss / 1024,
        source=source,
        processes=len(seen) + 1,
        exit_code=proc.returncode,
        log=str(log_path.relative_to(ROOT)),
    )


def median_of(runs: list[Measured]) -> dict[str, Any]:
    fields = (
        "wall",
        "cpu",
        "user",
        "sys",
        "main_peak_mb",
        "tree_peak_mb",
        "tree_peak_pss_mb",
        "server_cpu",
        "other_load",
        "ru_maxrss_mb",
    )
    summary: dict[str, Any] = {f: statistics.median(getattr(r, f) for r in runs) for f in fields}
    summary["runs"] = [vars(r) for r in runs]
    summary["processes"] = max(r.processes for r in runs)
    summary["exit_codes"] = sorted({r.exit_code for r in runs})
    summary["sources"] = sorted({r.source for r in runs})
    return summary


# --- ground truth and what each system stored ------------------------------------------------


class Truth:
    """(feed URL, key) → (story, kind) for every copy of a syndicated story."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        from aggregator.urls import canonical_url  # read-only use: how entry keys are made

        url_of = {f["path"]: f["url"] for f in manifest["files"]}
        self.copies = 0
        self.index: dict[tuple[str, str], tuple[str, str]] = {}
        with (CORPUS / "truth.jsonl").open() as lines:
            for line in lines:
                story = json.loads(line)
                for copy in story["copies"]:
                    self.copies += 1
                    url = url_of[copy["feed"]]
                    hit = (story["story"], copy["kind"])
                    for key in (copy["id"], copy["link"], "id:" + copy["id"]):
                        self.index[(url, key)] = hit
                    self.index[(url, "link:" + canonical_url(copy["link"]))] = hit

    def score(self, rows: Iterable[tuple[str, str, str]]) -> dict[str, int]:
        """Rows are (feed URL, entry key, stored item): duplicates and wrong merges."""
        stories: dict[str, set[str]] = defaultdict(set)
        by_link: dict[str, set[str]] = defaultdict(set)
        item_stories: dict[str, set[object]] = defaultdict(set)
        matched = 0
        for feed_url, key, item in rows:
            hit = self.index.get((feed_url, key))
            if hit is None:
                item_stories[item].add((feed_url, key))
                continue
            matched += 1
            story, kind = hit
            item_stories[item].add(story)
            stories[story].add(item)
            if kind not in ("rewrite", "repost"):  # copies under their own URL
                by_link[story].add(item)
        merged_wrongly = [s for s in item_stories.values() if len(s) > 1]
        return {
            "truth_copies": self.copies,
            "truth_copies_stored": matched,
            "duplicates": sum(len(items) - 1 for items in stories.values()),
            "duplicates_same_link": sum(len(items) - 1 for items in by_link.values()),
            "wrong_merges": sum(len(s) - 1 for s in merged_wrongly),
        }


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def evaluate_aggregator(db: Path, truth: Truth, log_path: Path) -> dict[str, Any]:
    rows = _query(db, "SELECT feed_url, entry_key, item_id FROM entries")
    text = log_path.read_text(errors="replace")
    summary = re.search(r"polled (\d+) of (\d+) feeds: (\d+) failed", text)
    return {
        "items": _query(db, "SELECT count(*) FROM items")[0][0],
        "failed_feeds": int(summary.group(3)) if summary else None,
        "http_304": len(re.findall(r": HTTP 304", text)),
        "http_200": len(re.findall(r": HTTP 200", text)),
        **truth.score(rows),
    }


def evaluate_reader(db: Path, truth: Truth, log_path: Path) -> dict[str, Any]:
    rows = [(f, i, f + "\n" + i) for f, i in _query(db, "SELECT feed, id FROM entries")]
    failed = _query(db, "SELECT count(*) FROM feeds WHERE last_exception IS NOT NULL")[0][0]
    return {"items": len(rows), "failed_feeds": failed, **truth.score(rows)}


def evaluate_afternoon(db: Path, truth: Truth, log_path: Path) -> dict[str, Any]:
    rows = [(f, i, i) for f, i in _query(db, "SELECT feed_url, id FROM entries")]
    summary = re.search(r'"failed": (\d+)', log_path.read_text(errors="replace"))
    return {
        "items": len(rows),
        "failed_feeds": int(summary.group(1)) if summary else None,
        **truth.score(rows),
    }


# --- systems and rounds ---------------------------------------------------------------------


@dataclass
class System:
    name: str
    label: str
    command: list[str]
    state: Path
    db: Path
    evaluate: Callable[[Path, Truth, Path], dict[str, Any]]

    def reset(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)

    def snapshot(self) -> None:
        shutil.rmtree(self._saved, ignore_errors=True)
        shutil.copytree(self.state, self._saved)

    def restore(self) -> None:
        self.reset()
        shutil.copytree(self._saved, self.state)

    @property
    def _saved(self) -> Path:
        return self.state.with_name(self.state.name + ".warm")


def systems(reader_python: str | None, chosen: set[str] | None) -> list[System]:
    manifest = str(CORPUS / "manifest.json")
    agg_state = OUT / "run-aggregator"
    found = [
        System(
            "aggregator",
            "aggregator poll --once",
            [str(VENV_BIN / "aggregator"), "-c", str(OUT / "feeds.yaml"), "poll", "--once"],
            agg_state,
            agg_state / "aggregator.db",
            evaluate_aggregator,
        )
    ]
    if reader_python:
        for workers in (1, 16):
            state = OUT / f"run-reader-{workers}"
            found.append(
                System(
                    f"reader-{workers}",
                    f"reader update_feeds(workers={workers})",
                    [
                        reader_python,
                        str(BENCH / "reader_poll.py"),
                        f"--db={state / 'reader.sqlite'}",
                        f"--manifest={manifest}",
                        f"--workers={workers}",
                    ],
                    state,
                    state / "reader.sqlite",
                    evaluate_reader,
                )
            )
        state = OUT / "run-afternoon"
        found.append(
            System(
                "afternoon",
                "afternoon script",
                [
                    str(VENV_BIN / "python"),
                    str(BENCH / "afternoon.py"),
                    f"--db={state / 'afternoon.db'}",
                    f"--manifest={manifest}",
                ],
                state,
                state / "afternoon.db",
                evaluate_afternoon,
            )
        )
    return [s for s in found if chosen is None or s.name in chosen]


def run_round(
    system: System,
    round_name: str,
    repeat: int,
    truth: Truth,
    prepare: Callable[[], None] | None,
) -> dict[str, Any]:
    runs: list[Measured] = []
    for i in range(repeat):
        if prepare is not None:
            prepare()
        # The restored copy (900 MB at N = 2,000) or the previous round's database would
        # otherwise still be going to disk during the round, and its writes throttled:
        # a mutated aggregator round took 4.34 and 4.46 s right after the copy, 3.74 and
        # 3.89 s after a sync (same code, same snapshot).
        os.sync()
        log_path = OUT / "logs" / f"{system.name}-{round_name}-{i + 1}.log"
        result = measure(system.command, log_path)
        runs.append(result)
        log(
            f"{system.name} {round_name} #{i + 1}: {result.wall:.2f}s wall, {result.cpu:.2f}s CPU,"
            f" {result.main_peak_mb:.0f}/{result.tree_peak_mb:.0f} MB, exit {result.exit_code}"
        )
        if result.wall >= LONG_ROUND:
            break
    summary = median_of(runs)
    summary.update(system.evaluate(system.db, truth, ROOT / runs[-1].log))
    return summary


def measure_floor(repeat: int) -> dict[str, Any]:
    runs: list[Measured] = []
    cmd = [str(VENV_BIN / "python"), str(BENCH / "parse_floor.py"), str(CORPUS / "feeds")]
    for i in range(repeat):
        result = measure(cmd, OUT / "logs" / f"floor-{i + 1}.log")
        runs.append(result)
        log(f"parse-only floor #{i + 1}: {result.wall:.2f}s wall, {result.cpu:.2f}s CPU")
        if result.wall >= LONG_ROUND:
            break
    return median_of(runs)


def measure_work_floor() -> dict[str, Any]:
    """The required-work floor (bench/work_floor.py): CPU seconds per stage, one run."""
    log_path = OUT / "logs" / "work-floor.log"
    cmd = [str(VENV_BIN / "python"), str(BENCH / "work_floor.py"), str(CORPUS / "manifest.json")]
    result = measure(cmd, log_path)
    if result.exit_code != 0:
        raise SystemExit(f"bench: work_floor.py failed, see {log_path}")
    stages = json.loads(log_path.read_text().strip().splitlines()[-1])
    log(f"required-work floor: {stages['cpu']} CPU-s, {result.wall:.2f}s wall")
    return {**stages, "wall": result.wall, "main_peak_mb": result.main_peak_mb}


# --- render and serve ---------------------------------------------------------------------


def measure_render(repeat: int) -> dict[str, Any]:
    config = str(OUT / "feeds.yaml")
    builds = [
        measure([str(VENV_BIN / "aggregator"), "-c", config, "build"], OUT / "logs" / "build.log")
        for _ in range(max(repeat, 3))
    ]
    in_process = subprocess.run(
        [str(VENV_BIN / "python"), str(BENCH / "render_time.py"), config, "20"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return {"build": median_of(builds), "render_outputs": json.loads(in_process.stdout)}


def run_wrk(url: str, headers: dict[str, str], seconds: int = 10) -> dict[str, Any]:
    cmd = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=False).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_ok = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = re.search(r"99%\s+(\S+)", out)
    errors = (sum(int(g) for g in sock.groups()) if sock else 0) + (
        int(non_ok.group(1)) if non_ok else 0
    )
    return {
        "requests_per_s": float(rps.group(1)) if rps else None,
        "errors": errors,
        "p99": latency.group(1) if latency else None,
        "output": out,
    }


def probe(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], int]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), len(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), 0


def measure_serving(nginx_port: int) -> dict[str, Any]:
    """`aggregator run` on the populated database: wrk on /all.atom, plain and with a 304."""
    port = _free_local_port()
    text = (OUT / "feeds.yaml").read_text()
    text = text.replace('listen: ""', f"listen: 127.0.0.1:{port}")
    config = OUT / "feeds-serve.yaml"
    config.write_text(text)
    daemon_log = (OUT / "logs" / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(VENV_BIN / "aggregator"), "-c", str(config), "run"],
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    result: dict[str, Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        if not wait_http(base + "/healthz", 60):
            return {"error": "daemon did not answer /healthz within 60 s"}
        url = base + "/all.atom"
        status, headers, size = probe(url, {})
        etag = headers.get("ETag") or headers.get("etag") or ""
        result["atom_status"], result["atom_bytes"], result["etag"] = status, size, etag
        result["conditional_status"] = probe(url, {"If-None-Match": etag})[0]
        result["plain"] = run_wrk(url, {})
        result["not_modified"] = run_wrk(url, {"If-None-Match": etag})
        # Reference: nginx serving the same published file from disk.
        ref = f"http://127.0.0.10:{nginx_port}/public/all.atom"
        ref_etag = probe(ref, {})[1].get("ETag", "")
        result["nginx_plain"] = run_wrk(ref, {})
        result["nginx_not_modified"] = run_wrk(ref, {"If-None-Match": ref_etag})
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        daemon_log.close()
    return result


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the table ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def speed_probe() -> float:
    """CPU seconds of a fixed pure-Python loop: how fast this (shared, virtual) machine is
    right now. It has varied by 1.5x within an hour here, which moves every figure."""
    started = time.process_time()
    total = 0
    for i in range(5_000_000):
        total += i
    return round(time.process_time() - started, 3)


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _memory_ok(r: dict[str, Any]) -> bool:
    """Runs before the VmHWM fix took ru_maxrss, which includes the driver's own RSS."""
    return "ru_maxrss_mb" in r


def _main_mb(r: dict[str, Any]) -> str:
    return _f(r["main_peak_mb"], 0) if _memory_ok(r) else "n/a¹"


def _tree_mb(r: dict[str, Any]) -> str:
    if not _memory_ok(r):
        return f"n/a¹ ({r['processes']})"
    return f"{r['tree_peak_mb']:.0f} / {r['tree_peak_pss_mb']:.0f} ({r['processes']})"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows from the issue's targets."""
    rows: list[tuple[str, str, str]] = []
    agg = results["systems"].get("aggregator", {})
    if not agg:
        return rows
    cold, warm, mutated = agg["cold"], agg["warm"], agg["mutated"]
    n = results["corpus"]["feeds"]

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**pass**" if ok else "**FAIL**")

    readers = [
        results["systems"][k]["cold"]["wall"]
        for k in ("reader-1", "reader-16")
        if k in results["systems"]
    ]
    if readers:
        best = min(readers)
        ratio = best / cold["wall"]
        work = results.get("work_floor")
        bound = (
            f"; 5× needs ≤ {best / 5:.1f} s, the required-work floor alone is"
            f" ≥ {work['total_cpu'] / results['machine']['nproc']:.1f} s"
            if work
            else ""
        )
        rows.append(
            (
                "cold ≥ 5× faster than reader (best of 1/16 workers)",
                f"{ratio:.2f}× ({cold['wall']:.1f} s vs {best:.1f} s{bound})",
                verdict(ratio >= 5),
            )
        )
    floor = results.get("floor")
    if floor:
        rows.append(
            (
                "cold faster than the parse-only floor",
                f"{cold['wall']:.1f} s vs {floor['wall']:.1f} s",
                verdict(cold["wall"] < floor["wall"]),
            )
        )
    rate = n / warm["wall"]
    rows.append(
        (
            "warm (all 304) ≥ 500 feeds/s, start-up included",
            f"{rate:.0f} feeds/s",
            verdict(rate >= 500),
        )
    )
    ratio = mutated["wall"] / warm["wall"]
    rows.append(
        (
            "mutated ≤ 2× warm",
            f"{ratio:.2f}× ({mutated['wall']:.2f} s vs {warm['wall']:.2f} s)",
            verdict(ratio <= 2),
        )
    )
    main_peak = max(agg[r]["main_peak_mb"] for r in ("cold", "warm", "mutated"))
    tree_peak = max(agg[r]["tree_peak_mb"] for r in ("cold", "warm", "mutated"))
    rows.append(
        ("peak memory, main process < 80 MB", f"{main_peak:.0f} MB", verdict(main_peak < 80))
    )
    rows.append(
        ("peak memory, all processes < 200 MB", f"{tree_peak:.0f} MB", verdict(tree_peak < 200))
    )
    rows.append(("memory at N = 10,000 < 1.5× N = 2,000", "not measured by this run", "n/a"))
    dup = max(cold["duplicates_same_link"], mutated["duplicates_same_link"])
    rows.append(
        (
            "no duplicates from copies differing by tracking params/scheme/slash",
            f"{dup} duplicates",
            verdict(dup == 0),
        )
    )
    serve = results.get("serve") or {}
    plain, nm = serve.get("plain"), serve.get("not_modified")
    if plain and nm and plain["requests_per_s"] and nm["requests_per_s"]:
        rows.append(
            (
                "serving .atom ≥ 3,000 req/s, 0 errors",
                f"{plain['requests_per_s']:,.0f} req/s, {plain['errors']} errors",
                verdict(plain["requests_per_s"] >= 3000 and plain["errors"] == 0),
            )
        )
        rows.append(
            (
                "serving 304 ≥ 5,000 req/s, 0 errors",
                f"{nm['requests_per_s']:,.0f} req/s, {nm['errors']} errors"
                f" (status {serve.get('conditional_status')})",
                verdict(
                    nm["requests_per_s"] >= 5000
                    and nm["errors"] == 0
                    and serve.get("conditional_status") == 304
                ),
            )
        )
    else:
        rows.append(("serving", f"not measured: {serve.get('error', 'wrk missing')}", "n/a"))
    return rows


def table(results: dict[str, Any]) -> str:
    m, c = results["machine"], results["corpus"]
    n = c["feeds"]
    lines = [
        f"Run {results['started']} · {m['nproc']} cores ({m['cpu']}), {m['ram_gb']} GB RAM,"
        f" Python {m['python']} · aggregator at {results['aggregator_version']}"
        f" · reader {results.get('reader_version') or '–'}",
        *(
            [
                "",
                f"Peers and floor reused from the run of {results['reused_peers_from']}"
                " (same corpus); only aggregator was measured in this run.",
            ]
            if results.get("reused_peers_from")
            else []
        ),
        "",
        f"Corpus: N = {n:,} feeds, {c['entries']:,} entries, {c['bytes'] / 1e6:,.0f} MB,"
        f" {c['stories']:,} distinct stories ({c['syndicated_stories']:,} syndicated into 2–4"
        f" other feeds); mutated round: +{results.get('mutated_entries', 0)} entries."
        f" Medians of {results['repeat']} runs where a round takes under {LONG_ROUND:.0f} s.",
        "",
        " | ".join(("| system", *COLUMNS)) + " |",
        "| --- | --- |" + " ---: |" * (len(COLUMNS) - 1),
    ]
    for rounds in results["systems"].values():
        for round_name in ("cold", "warm", "mutated"):
            r = rounds.get(round_name)
            if not r:
                continue
            runs = len(r["runs"])
            lines.append(
                f"| {rounds['label']} | {round_name} (×{runs}) | {_f(r['wall'], 2)}"
                f" | {_f(r['cpu'], 2)}"
                f" | {_f(n / r['wall'], 0)} | {_main_mb(r)} | {_tree_mb(r)}"
                f" | {r['items']:,} | {r['duplicates_same_link']} | {r['duplicates']}"
                f" | {r['wrong_merges']} | {r['failed_feeds']} | {r['other_load']:.2f} |"
            )
    floor = results.get("floor")
    if floor:
        lines.append(
            f"| feedparser.parse floor (disk, 1 process) | parse only (×{len(floor['runs'])})"
            f" | {_f(floor['wall'], 2)} | {_f(floor['cpu'], 2)} | {_f(n / floor['wall'], 0)}"
            f" | {_main_mb(floor)} | {_tree_mb(floor)} | – | – | – | – | –"
            f" | {floor['other_load']:.2f} |"
        )
    work = results.get("work_floor")
    if work:
        cores = m["nproc"]
        stages = ", ".join(f"{stage} {cpu:.1f}" for stage, cpu in work["cpu"].items())
        lines += [
            "",
            f"Required-work floor (`bench/work_floor.py`, each stage alone in one process over"
            f" the {work['entries']:,} entries): {stages} CPU-s, {work['total_cpu']:.1f} in all:"
            f" no design that fetches with httpx, parses with feedparser, sanitizes and stores in"
            f" SQLite finishes a cold round in under {work['total_cpu'] / cores:.1f} s on"
            f" {cores} cores.",
        ]
    agg = results["systems"].get("aggregator", {})
    sources = {r: agg[r].get("sources", []) for r in ("cold", "warm", "mutated") if r in agg}
    if len({s for found in sources.values() for s in found}) > 1:
        lines += [
            "",
            "**The aggregator source changed during this run**: "
            + "; ".join(f"{r}: {', '.join(found)}" for r, found in sources.items()),
        ]
    every = [r for rounds in results["systems"].values() for k, r in rounds.items() if k != "label"]
    if any(not _memory_ok(r) for r in [*every, *([floor] if floor else [])]):
        lines += [
            "",
            "¹ measured by a driver that took `ru_maxrss`, which on Linux includes the driver's"
            " own RSS (carried across exec): not a valid peak. Rerun these systems to get it.",
        ]
    probes = results.get("speed_probes")
    if probes:
        lines += [
            "",
            "Machine speed during the run (CPU seconds of a fixed Python loop before each"
            " system's rounds; lower is faster): "
            + ", ".join(f"{at} {before} {cpu:.2f}" for at, before, cpu in probes)
            + ".",
        ]
    lines += ["", "Ratios (wall time, cold round): " + ratios(results), ""]
    render = results.get("render")
    if render:
        ro = render["render_outputs"]
        lines.append(
            f"Render: `aggregator build` {render['build']['wall']:.2f} s wall (median of"
            f" {len(render['build']['runs'])}, fresh process); `publish.render_outputs` of topic"
            f" `{ro['topic']}` ({ro['items']} items, all four formats + index + OPML) in process:"
            f" median {ro['median_s'] * 1000:.1f} ms of {ro['repeat']}."
        )
        lines.append("")
    serve = results.get("serve") or {}
    if "plain" in serve:
        lines.append(
            f"Serving `/all.atom` ({serve['atom_bytes']:,} bytes) from `aggregator run`, wrk 64"
            f" connections, 10 s: {serve['plain']['requests_per_s']:,.0f} req/s,"
            f" {serve['plain']['errors']} errors (p99 {serve['plain']['p99']}); with If-None-Match"
            f" (status {serve['conditional_status']}):"
            f" {serve['not_modified']['requests_per_s']:,.0f} req/s,"
            f" {serve['not_modified']['errors']} errors (p99 {serve['not_modified']['p99']})."
            f" Reference, nginx on the same file: {serve['nginx_plain']['requests_per_s']:,.0f} and"
            f" {serve['nginx_not_modified']['requests_per_s']:,.0f} req/s."
        )
        lines.append("")
    elif serve:
        lines += [f"Serving: not measured ({serve.get('error')}).", ""]
    rows = targets(results)
    if rows:
        lines += [
            f"Targets (issue 4; stated for 2 cores and N = 2,000, this run N = {n:,}):",
            "",
            "| target | measured | verdict |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {t} | {v} | {ok} |" for t, v, ok in rows]
    return "\n".join(lines) + "\n"


def ratios(results: dict[str, Any]) -> str:
    s = results["systems"]
    if "aggregator" not in s:
        return "–"
    cold = s["aggregator"]["cold"]["wall"]
    parts = []
    for name in ("reader-1", "reader-16", "afternoon"):
        if name in s:
            parts.append(f"{s[name]['label']} / aggregator = {s[name]['cold']['wall'] / cold:.2f}×")
    if results.get("floor"):
        parts.append(f"parse-only floor / aggregator = {results['floor']['wall'] / cold:.2f}×")
    return "; ".join(parts) or "–"


def write_outputs(results: dict[str, Any], raw: bool = True) -> Path:
    stamp = results["started"].replace(":", "").replace("-", "")
    path = OUT / f"results-{stamp}.json"
    if raw:
        path.write_text(json.dumps(results, indent=1, default=str))
    text = table(results)
    (BENCH / "results.md").write_text(
        "# Latest benchmark results\n\nWritten by `bench/run.py` (see README.md).\n\n" + text
    )
    readme = BENCH / "README.md"
    if readme.exists():
        current = readme.read_text()
        if README_START in current and README_END in current:
            head, rest = current.split(README_START, 1)
            _, tail = rest.split(README_END, 1)
            readme.write_text(f"{head}{README_START}\n{text}{README_END}{tail}")
    return path


def load_peers(which: str, corpus: dict[str, Any]) -> dict[str, Any]:
    """An earlier results file with peer figures for the same corpus (seed, N, entries, bytes)."""
    if which == "latest":
        candidates = sorted(OUT.glob("results-*.json"), reverse=True)
    else:
        candidates = [Path(which)]
    same = ("seed", "feeds", "entries", "bytes", "hosts")
    for path in candidates:
        earlier: dict[str, Any] = json.loads(path.read_text())
        has_peers = any(name != "aggregator" for name in earlier.get("systems", {}))
        if has_peers and all(earlier["corpus"].get(k) == corpus.get(k) for k in same):
            log(f"reusing peer figures from {path.name}")
            return earlier
    raise SystemExit(f"bench: no earlier results with peers for this corpus in {which}")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def source_version() -> str:
    """The last commit that touched aggregator/, and whether it has uncommitted changes."""
    head = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", "aggregator"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "aggregator"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return head + (" + uncommitted changes in aggregator/" if dirty else "")


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=2000, help="corpus size N (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per round under a minute")
    parser.add_argument("--quick", action="store_true", help="skip the peers (reader, afternoon)")
    parser.add_argument(
        "--systems", help="comma-separated subset: aggregator,reader-1,reader-16,afternoon"
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the parse-only floor")
    parser.add_argument(
        "--reuse-peers",
        metavar="RESULTS_JSON",
        help="take reader, afternoon and floor figures from an earlier run on the same corpus"
        " ('latest' = newest bench/out/results-*.json that has them) instead of measuring them",
    )
    parser.add_argument("--no-serve", action="store_true", help="skip render and wrk measurements")
    parser.add_argument(
        "--hosts", type=int, default=50, help="loopback addresses serving the feeds"
    )
    parser.add_argument(
        "--table-only",
        metavar="RESULTS_JSON",
        help="rewrite bench/results.md and the README block from a results file; measure nothing",
    )
    args = parser.parse_args(argv)
    if args.table_only:
        write_outputs(json.loads(Path(args.table_only).read_text()), raw=False)
        return 0

    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _become_subreaper()
    signal.signal(signal.SIGTERM, _interrupted)  # so nginx and the daemon are stopped
    tools = ensure_debian_tools()
    if not tools["nginx"]:
        raise SystemExit(
            "bench: nginx is missing and could not be installed (apt-get install nginx-light);"
            " the benchmark needs a real HTTP server with ETag/304/gzip and does not fall back."
        )
    reader_version = None if args.quick else ensure_reader_venv()
    reader_python = None if args.quick else str(READER_VENV / "bin" / "python")
    chosen = set(args.systems.split(",")) if args.systems else None
    port = free_port(args.hosts)
    log(f"corpus: {args.feeds} feeds, round 0")
    manifest = make_corpus(args.feeds, 0, port, args.hosts)
    truth = Truth(manifest)
    corpus_stats = {k: v for k, v in manifest.items() if k != "files"}
    results: dict[str, Any] = {
        "started": started,
        "machine": machine(),
        "corpus": corpus_stats,
        "repeat": args.repeat,
        "reader_version": reader_version,
        "aggregator_version": source_version(),
        "systems": {},
    }
    reused = load_peers(args.reuse_peers, corpus_stats) if args.reuse_peers else None
    if reused is not None:
        chosen = {"aggregator"}
        args.no_floor = True
        results["reused_peers_from"] = reused.get("reused_peers_from") or reused["started"]
        results["reader_version"] = reused.get("reader_version")
    chosen_systems = systems(reader_python, chosen)
    probes: list[tuple[str, str, float]] = results.setdefault("speed_probes", [])

    def probe_speed(before: str) -> None:
        probes.append((datetime.now(UTC).strftime("%H:%M:%SZ"), before, speed_probe()))

    with Nginx(port, args.hosts) as nginx:
        for system in chosen_systems:
            probe_speed(f"{system.name} cold")
            rounds: dict[str, Any] = {"label": system.label}
            rounds["cold"] = run_round(system, "cold", args.repeat, truth, system.reset)
            rounds["warm"] = run_round(system, "warm", args.repeat, truth, None)
            system.snapshot()
            results["systems"][system.name] = rounds
        if not args.no_floor:
            results["floor"] = measure_floor(args.repeat)
            results["work_floor"] = measure_work_floor()
        log("corpus: mutation round 1")
        mutated = make_corpus(args.feeds, 1, port, args.hosts)
        results["mutated_entries"] = mutated["entries"] - manifest["entries"]
        truth = Truth(mutated)
        for system in chosen_systems:
            probe_speed(f"{system.name} mutated")
            rounds = results["systems"][system.name]
            rounds["mutated"] = run_round(system, "mutated", args.repeat, truth, system.restore)
        probe_speed("end")
        if reused is not None:
            for name, rounds in reused["systems"].items():
                if name != "aggregator":
                    results["systems"][name] = rounds
            for floor_name in ("floor", "work_floor"):
                if reused.get(floor_name):
                    results[floor_name] = reused[floor_name]
        if not args.no_serve and "aggregator" in results["systems"]:
            log("render and serve")
            results["render"] = measure_render(args.repeat)
            results["serve"] = (
                measure_serving(nginx.port) if tools["wrk"] else {"error": "wrk not installed"}
            )
    raw = write_outputs(results)
    print(table(results))
    log(f"raw results: {raw.relative_to(ROOT)}; table: bench/results.md and bench/README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
