"""Coordinator overhead and worker scaling, measured side by side on real toy-study trials.

Runs ``studies/toy.toml`` (its search space, proxies, step plan, sampler and pruner; its baselines too)
through the real coordinator and Ray workers, in a temporary store with a fixed budget: with 1 worker and
with 2 under the study's own pruner, and with 1 and 2 workers without pruning (every trial runs all
steps, the cleanest measure of scaling). Prints, per run:

* trials per hour and proxy items scored per second over the dispatch loop (Ray and model start-up
  excluded); the 2-vs-1 ratio is taken on items, since how many trials a pruner stops early differs
  from run to run;
* worker idle share: the gaps between a worker's consecutive calls, on the worker's own clock, over its
  busy time. This is what the coordinator costs the search: its ask, tell, reports, pruning decisions and
  bookkeeping, plus the Ray round trip, wherever a worker had to wait for them;
* coordinator CPU per trial: the CPU time of the coordinator process, all threads (Optuna ask and
  suggest, tell, reports, user attributes, records, heartbeats, progress on the store thread; decisions
  and dispatch on the loop's thread; Ray's client threads), most of it while the workers compute, and its
  share of the workers' compute per trial. On a GPU host it runs beside the workers; on this 2-core machine it competes with two CPU
  workers for the cores.

Then the floor under the idle time: a worker told to run a step right after its last one (the same worker
class, the same step, nothing else running, back-to-back ``run_step`` calls) still waits the Ray round
trip. Each call sent to a worker with nothing queued (a new trial when none was asked yet, a decision of a
pruner other than successive halving) costs at least that; the idle time above ``waits x floor`` is the
gaps between queued calls (Ray's per-call work on the worker, and the CPU the coordinator takes from the
workers on a small host). At successive halving's rungs the worker decides itself (``search.gate``) and
the calls queued behind the rung step run or return at once on its verdict: the run prints how many
returned unrun ("skipped").
The floor is Ray's and the operating system's: on this machine a call sent after a 200 ms call starts
2-3 ms after it ended, ~1 ms after a call of no length, whatever the call computes.

Then the 2-vs-1 ratios, in proxy items and in trials per hour, beside the ceiling the cores set: two CPU
workers and a coordinator that needs ``k`` s of CPU per trial of ``c`` s of worker compute share two cores,
so two workers score at most ``2 / (1 + k/c)`` times what one does (one worker leaves the coordinator the
other core). The second ceiling counts only the part of ``k`` that is Optuna's own work on the store thread
(``study.ask`` with the sampler's suggestions, ``trial.report``, ``study.tell``: its RDB storage commits each
parameter and reads the trial back), the floor for any coordinator that asks and tells through Optuna's API.
Both ceilings take the workers' CPU per item as equal in the two runs; the last line measures it (each call
returns its CPU time) and splits the ratio into the share of the cores the workers computed on and the
change in CPU per item. Targets (issue #6 §8): coordinator overhead < 2% of trial time; 2 workers >= 1.7x
the throughput of 1. The machine is shared: run it more than once and quote the range.

    .venv/bin/python benchmarks/search_throughput.py [--trials 32] [--study studies/toy.toml]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_once(study: str, workers: int, trials: int, tmp: Path, pruner: str | None):
    """One run of ``study`` in a fresh store under ``tmp``; ``pruner`` None keeps the study's."""
    from rich.console import Console

    from search.coordinator import Coordinator
    from search.resolve import resolve
    from search.spec import PrunerSpec, load_spec

    spec = load_spec(study)
    name = f"{spec.name}_w{workers}_{pruner or spec.pruner.name}"
    spec = spec.replace(
        name=name,
        storage=f"sqlite:///{tmp}/{name}.db",
        output_dir=tmp / name,
        n_trials=trials,
        timeout=None,
        workers=workers,
        pruner=PrunerSpec(pruner) if pruner else spec.pruner,
    )
    coord = Coordinator(spec, resolve(spec), live=False, console=Console(quiet=True))
    coord.open()
    summary = coord.run()
    assert coord.study is not None
    trials = coord.study.get_trials(deepcopy=False)
    cached = sum(1 for t in trials if "cached_from" in t.user_attrs)  # reused results: nothing scored
    items = sum(int(t.user_attrs.get("n_items", 0)) for t in trials if "cached_from" not in t.user_attrs)
    return summary, cached, items


def round_trip_floor(study: str, tmp: Path, calls: int = 15) -> float:
    """Median gap (s, worker clock) between back-to-back ``run_step`` calls on one worker: each call sent
    once the previous result is back, nothing else running (no store, no sampler, no second worker)."""
    import statistics

    import ray
    from rich.console import Console

    from merge_core import Recipe
    from search.coordinator import Coordinator
    from search.resolve import resolve
    from search.spec import load_spec

    spec = load_spec(study)
    spec = spec.replace(
        name="floor", storage=f"sqlite:///{tmp}/floor.db", output_dir=tmp / "floor", workers=1
    )
    coord = Coordinator(spec, resolve(spec), live=False, console=Console(quiet=True))
    coord.open()
    coord._start_ray()
    try:
        coord._start_workers()
        actor = coord.slots[0].actor
        recipe = coord.space.baseline(spec.baselines[0].fields) if spec.baselines else {}
        rid = Recipe.from_dict(recipe).id
        gaps, last_end = [], None
        for _ in range(calls):
            res = ray.get(actor.run_step.remote(recipe, rid, 0))
            if last_end is not None:
                gaps.append(res["t_start"] - last_end)
            last_end = res["t_end"]
        return statistics.median(gaps)
    finally:
        coord._shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="studies/toy.toml")
    p.add_argument("--trials", type=int, default=32)
    a = p.parse_args()
    rows, per_h, waits, share, floor_share, runs = {}, {}, {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as d:
        for w, pruner in ((1, None), (2, None), (1, "none"), (2, "none")):
            s, cached, items = run_once(a.study, w, a.trials, Path(d), pruner)
            n = s.finished_here - cached  # a recipe scored before is reused at no cost: not a trial run
            busy = s.worker_busy_s / n  # the workers' compute per trial
            cpu = s.loop_cpu_s / n
            rows[(w, pruner)] = items / s.loop_s
            per_h[(w, pruner)] = n * 3600 / s.loop_s
            share[(w, pruner)] = cpu / busy
            floor_share[(w, pruner)] = s.optuna_cpu_s / n / busy
            waits[(w, pruner)] = (s.worker_waits, s.worker_idle_s, s.worker_busy_s)
            runs[(w, pruner)] = (s, items)
            print(
                f"{w} worker(s), pruner {pruner or 'of the study'}: {n} trials ({s.counts.get('PRUNED', 0)} pruned, "
                f"{cached} reused, {s.skipped_calls} calls skipped), {items} proxy items in {s.loop_s:.1f} s of "
                f"dispatch = {n * 3600 / s.loop_s:.0f} "
                f"trials/h, {items / s.loop_s:.0f} items/s | worker compute {busy:.2f} s/trial, idle between calls "
                f"{1000 * s.worker_idle_s / n:.1f} ms/trial = {100 * s.worker_idle_s / s.worker_busy_s:.2f}% "
                f"(target < 2%), worker CPU {1000 * s.worker_cpu_s / items:.2f} ms/item "
                f"| coordinator CPU {1000 * cpu:.0f} ms/trial = {100 * cpu / busy:.1f}% of compute "
                f"(store thread {1000 * s.store_cpu_s / n:.0f}, of which Optuna's ask, sampler, report and tell "
                f"{1000 * s.optuna_cpu_s / n:.0f}; dispatch thread {1000 * s.dispatch_cpu_s / n:.0f}, "
                f"Ray's and other threads {1000 * (s.loop_cpu_s - s.store_cpu_s - s.dispatch_cpu_s) / n:.0f})"
            )
        floor = round_trip_floor(a.study, Path(d))
    print(
        f"Ray round trip to a worker, back-to-back run_step calls with nothing else running: {1000 * floor:.2f} ms"
    )
    for (w, pruner), (n_waits, idle, busy) in waits.items():
        own = max(0.0, idle - n_waits * floor)
        each = f", {1000 * idle / n_waits:.1f} ms idle each" if n_waits else ""
        print(
            f"{w} worker(s), pruner {pruner or 'of the study'}: {n_waits} calls sent to a waiting worker{each}; "
            f"idle {100 * idle / busy:.2f}% of compute = the round trips' floor {100 * n_waits * floor / busy:.2f}% "
            f"+ the rest (gaps between queued calls, the coordinator's part) {100 * own / busy:.2f}%"
        )
    for pruner in (None, "none"):
        print(
            f"2 workers vs 1, pruner {pruner or 'of the study'}: {rows[(2, pruner)] / rows[(1, pruner)]:.2f}x "
            f"proxy items scored per hour, {per_h[(2, pruner)] / per_h[(1, pruner)]:.2f}x trials per hour "
            f"(target >= 1.7x); the cores' ceiling with the coordinator's CPU of the 2-worker run: "
            f"{2 / (1 + share[(2, pruner)]):.2f}x, with only Optuna's ask, sampler, report and tell of it: "
            f"{2 / (1 + floor_share[(2, pruner)]):.2f}x"
        )
        (s1, items1), (s2, items2) = runs[(1, pruner)], runs[(2, pruner)]
        u1, u2 = s1.worker_cpu_s / s1.loop_s, s2.worker_cpu_s / (2 * s2.loop_s)
        c1, c2 = s1.worker_cpu_s / items1, s2.worker_cpu_s / items2
        print(
            f"  = 2 x {u2 / u1:.3f} (the workers computed on {100 * u2:.1f}% of the 2 cores with 2 workers, on "
            f"{100 * u1:.1f}% of one with 1; with 2, the coordinator took {100 * s2.loop_cpu_s / (2 * s2.loop_s):.1f}%"
            f", the rest is Ray, the system, start-up and the idle end) x {c1 / c2:.3f} (worker CPU per item, "
            f"{1000 * c1:.2f} ms with 1 worker, {1000 * c2:.2f} ms with 2: the workers share caches and memory)"
        )
    print(f"cores on this machine: {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
