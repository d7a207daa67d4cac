"""Summarise a `py-spy record --subprocesses --format raw` profile of `poll --once`.

Each sample is put under its process role (main process or parse worker) and the pipeline
stage it was in: the first aggregator function below `process_body` in a worker; in the
main process, below `Poller._poll` on the event loop, or the Store method the store's
thread runs (`Store.save` with its callees). Prints the shares of all samples, largest first.

    .venv/bin/python bench/profile_summary.py bench/out/profile-cold.txt [ROWS]
"""

from __future__ import annotations

import collections
import sys


def _name(frame: str) -> str:
    return frame.split(" (")[0]


#: ingest's steps whose callees are shown as stages of their own
_WORKER_STEPS = ("parse_changed_entries", "_new_or_changed", "clean_entry", "with_dedupe_keys")


def stage_of(frames: list[str], role: str) -> str:
    names = [_name(f) for f in frames]
    if role == "worker":
        if "process_body" in names:
            i = names.index("process_body")
            below = names[i + 1 : i + 4] or ["process_body"]
            key = below[0]
            if key in _WORKER_STEPS and len(below) > 1:
                key += ">" + below[1]
                if below[1] == "clean_html" and len(below) > 2:
                    key += ">" + below[2]
            return key
    else:
        for i, name in enumerate(names):
            if name.startswith("Store."):  # on the store's thread
                below = names[i : i + 3]
                return "store>" + (">".join(below) if name == "Store.save" else name)
            if name == "Poller._poll":
                return "poll>" + (names[i + 1] if i + 1 < len(names) else name)
    return names[min(len(names) - 1, 3)] if names else "?"


def main() -> int:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    with open(sys.argv[1]) as profile:
        for line in profile:
            stack, _, count_text = line.rstrip().rpartition(" ")
            count = int(count_text)
            total += count
            frames = stack.split(";")
            processes = [f for f in frames if f.startswith("process ")]
            role = "worker" if len(processes) > 1 else "main"
            counts[(role, stage_of([f for f in frames if not f.startswith("process ")], role))] += (
                count
            )
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    print(f"{total} samples")
    for (role, stage), count in counts.most_common(rows):
        print(f"{100 * count / total:5.1f}% {role:<7} {stage}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
