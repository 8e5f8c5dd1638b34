"""Run every benchmark script in this folder (``bench_*.py``) and collect their JSON results.

Each script writes ``benchmarks/results/<name>.json`` and prints it; this runner runs them one by one
(benchmarks compete for the same 2 cores, so never in parallel), then writes
``benchmarks/results/all.json`` with every result and the machine it ran on.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv: list[str]) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    scripts = sorted(HERE.glob("bench_*.py"))
    wanted = set(argv)
    if wanted:
        scripts = [s for s in scripts if s.stem in wanted or s.stem.removeprefix("bench_") in wanted]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"== {script.name}: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        if rc:
            failed.append(script.name)
    merged = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "results": {
            p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json")) if p.stem != "all"
        },
        "failed": failed,
    }
    (RESULTS / "all.json").write_text(json.dumps(merged, indent=2))
    print(f"wrote {RESULTS / 'all.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
