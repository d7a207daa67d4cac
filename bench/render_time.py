"""In-process render time of one topic: `publish.render_outputs` on a populated database."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from aggregator import publish
from aggregator.config import load_config
from aggregator.store import Store


def main() -> int:
    config = load_config(Path(sys.argv[1]))
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    slug = config.topics[0].slug
    times = []
    with Store.open(config.settings.database) as store:
        for _ in range(repeat):
            started = time.perf_counter()
            outputs = publish.render_outputs(config, store, only={slug})
            times.append(time.perf_counter() - started)
        items = outputs[f"{slug}.atom"].count(b"<entry>")
    result = {
        "topic": slug,
        "items": items,
        "repeat": repeat,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
