"""The warm-round floor: what 2,000 conditional GETs cost with httpx alone.

A warm round asks every feed "changed since?" and every server answers 304. However the
rest is built, each of those requests goes through httpx (fixed by the product design), so
the fastest warm round any design on httpx can run is this script's: the same requests, with
the ETag and Last-Modified aggregator stored, on one event loop (uvloop when installed, as
aggregator runs), at most `--concurrency` at once, nothing parsed or stored. It prints one
JSON line per variant: wall seconds and CPU seconds of the requests, how many came back 304.

The start-up it does not count is measured apart (`--startup`: a fresh interpreter that
imports httpx and exits), so "warm ≥ 2,000 feeds/s, start-up included" (1.0 s for the
bench's N = 2,000) can be set against requests + start-up.

    .venv/bin/python bench/warm_floor.py bench/out/run-aggregator/aggregator.db

Run it with the bench's nginx serving (see README "To profile again") and a database from a
warm round's snapshot, so that every feed has its validators.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx


def validators(db: Path) -> list[tuple[str, dict[str, str]]]:
    """Each feed's URL and the conditional headers aggregator would send."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT fetch_url, etag, last_modified FROM feeds").fetchall()
    finally:
        connection.close()
    requests = []
    for url, etag, modified in rows:
        headers = {"accept-encoding": "gzip"}
        if etag:
            headers["if-none-match"] = etag
        if modified:
            headers["if-modified-since"] = modified
        requests.append((url, headers))
    return requests


async def with_client(requests: list[tuple[str, dict[str, str]]], concurrency: int) -> list[int]:
    """httpx's own Client: what a poller written the plain way would use."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(url: str, headers: dict[str, str]) -> int:
            response = await client.get(url, headers=headers)
            return response.status_code

        return await _bounded(requests, concurrency, one)


async def with_transports(
    requests: list[tuple[str, dict[str, str]]], concurrency: int, per_server: int = 4
) -> list[int]:
    """httpx's transport, one pool per server, no Client layers: the leanest httpx route
    (aggregator's Fetcher takes it too)."""
    pools: dict[str, httpx.AsyncHTTPTransport] = {}

    async def one(url: str, headers: dict[str, str]) -> int:
        parsed = httpx.URL(url)
        key = f"{parsed.host}:{parsed.port}"
        pool = pools.get(key)
        if pool is None:
            limits = httpx.Limits(max_connections=per_server, max_keepalive_connections=per_server)
            pool = pools[key] = httpx.AsyncHTTPTransport(limits=limits)
        response = await pool.handle_async_request(httpx.Request("GET", parsed, headers=headers))
        await response.aread()
        await response.aclose()
        return response.status_code

    try:
        return await _bounded(requests, concurrency, one)
    finally:
        for pool in pools.values():
            await pool.aclose()


async def _bounded(
    requests: list[tuple[str, dict[str, str]]],
    concurrency: int,
    one: Callable[[str, dict[str, str]], Awaitable[int]],
) -> list[int]:
    gate = asyncio.Semaphore(concurrency)

    async def gated(url: str, headers: dict[str, str]) -> int:
        async with gate:
            return await one(url, headers)

    return list(await asyncio.gather(*(gated(url, headers) for url, headers in requests)))


def run(variant: Callable[..., Awaitable[list[int]]], *args: object) -> dict[str, object]:
    try:
        import uvloop

        runner: Callable[..., list[int]] = uvloop.run
        loop = "uvloop"
    except ImportError:
        runner, loop = asyncio.run, "asyncio"
    wall, cpu = time.perf_counter(), time.process_time()
    statuses = runner(variant(*args))
    return {
        "variant": variant.__name__,
        "loop": loop,
        "requests": len(statuses),
        "not_modified": statuses.count(304),
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(time.process_time() - cpu, 3),
    }


def startup_seconds() -> float:
    """A fresh interpreter that imports httpx and exits: the least start-up of a poller."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import httpx"], check=True)
    return time.perf_counter() - started


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("database", type=Path, help="aggregator.db after a warm round")
    options.add_argument("--concurrency", type=int, default=20)
    options.add_argument("--repeat", type=int, default=3)
    options.add_argument("--startup", action="store_true", help="also time the start-up")
    args = options.parse_args()
    requests = validators(args.database)
    for _ in range(args.repeat):
        for variant in (with_transports, with_client):
            print(json.dumps(run(variant, requests, args.concurrency)), flush=True)
    if args.startup:
        best = min(startup_seconds() for _ in range(5))
        print(json.dumps({"startup_s": round(best, 3)}), flush=True)


if __name__ == "__main__":
    main()
