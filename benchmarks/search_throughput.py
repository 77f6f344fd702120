"""Coordinator overhead and worker scaling, measured side by side on real toy-world trials.

Runs the same study (task arithmetic on the toy world's proxies, TPE, no pruning, fixed seed) twice
through the real coordinator and Ray workers: with 1 worker and with 2. Prints, per run, trials per hour
over the dispatch loop (Ray and model start-up excluded), the coordinator's own time per trial (ask, tell,
user attributes, records, progress, heartbeats) and its share of the mean trial time; then the 2-vs-1 ratio.
Targets (issue #6 §8): overhead < 2% of trial time; 2 workers >= 1.7x the trials per hour of 1.

    .venv/bin/python benchmarks/search_throughput.py [--size full|ci] [--trials 12]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_once(size: str, workers: int, trials: int, tmp: Path, limit: int):
    from rich.console import Console

    from search.coordinator import Coordinator
    from search.resolve import resolve
    from search.spec import spec_from_dict

    spec = spec_from_dict(
        {
            "name": f"bench_w{workers}",
            "storage": f"sqlite:///{tmp}/w{workers}.db",
            "output_dir": str(tmp / f"w{workers}"),
            "n_trials": trials,
            "workers": workers,
            "seed": 0,
            "models": {"toy": {"seed": 0, "size": size}},
            "objectives": {"chunk_size": 25, "max_new_tokens": 24, "batch_size": 25, "limit": limit},
            "space": {"methods": ["task_arithmetic"]},
            "pruner": {"name": "none"},
        }
    )
    res = resolve(spec)
    coord = Coordinator(spec, res, live=False, console=Console(quiet=True))
    coord.open()
    return coord.run()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="full", choices=("full", "ci"))
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--limit", type=int, default=100, help="items per proxy dataset (0: all)")
    a = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for w in (1, 2):
            s = run_once(a.size, w, a.trials, Path(d), a.limit)
            rate = s.finished_here * 3600 / s.loop_s
            per_trial = s.trial_s / s.finished_here
            over = s.overhead_s / s.finished_here
            rows[w] = rate
            print(
                f"{w} worker(s): {s.finished_here} trials in {s.loop_s:.1f} s of dispatch ({s.wall_s:.1f} s wall) "
                f"= {rate:.0f} trials/h; mean trial {per_trial:.2f} s; coordinator {1000 * over:.1f} ms/trial "
                f"= {100 * over / per_trial:.2f}% of trial time (target < 2%)"
            )
    print(
        f"2 workers vs 1: {rows[2] / rows[1]:.2f}x trials per hour (target >= 1.7x; cores on this machine: "
        f"{os.cpu_count()}, load avg {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
