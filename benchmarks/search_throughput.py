"""Coordinator overhead and worker scaling, measured side by side on real toy-study trials.

Runs ``studies/toy.toml`` (its search space, proxies, step plan, sampler and pruner; its baselines too)
through the real coordinator and Ray workers, in a temporary store with a fixed budget: with 1 worker and
with 2 under the study's own pruner, and with 1 and 2 workers without pruning (every trial runs all
steps, the cleanest measure of scaling). The machine's speed drifts by tens of percent within minutes, so
the four runs are repeated in rounds, every other round in reverse order (1, 2, 2, 1 for each pair: a
steady drift cancels), and each configuration's rounds are added up before any ratio is taken; the ratio
of each round is printed beside. Prints, per run and then pooled:

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
workers on a small host). At successive halving's rungs the worker decides itself (``search.engine.gate``) and
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
change in CPU per item.

Last, what the machine gives the workload with no coordinator at all: the trials of the 2-worker pruned
runs (their recipes, each with the number of steps it ran) replayed on 1 and then 2 bare workers in one
Ray session, each worker handed whole trials and kept one trial ahead, in the same alternating rounds.
Its 2-vs-1 ratio ``R`` bounds any coordinator: one that takes ``k`` s of CPU per trial leaves at most
``R / (1 + k/c)``, so the line prints the ``k`` a 1.7x ratio allows beside what the coordinator and
Optuna's part of it took; and the bare workers' idle between calls, the part of the idle above that is
not the coordinator's. Targets (issue #6 §8): coordinator overhead < 2% of trial time; 2 workers >= 1.7x
the throughput of 1. The machine is shared: run it more than once and quote the range.

    .venv/bin/python benchmarks/search_throughput.py [--trials 32] [--rounds 2] [--study studies/toy.toml]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_once(study: str, workers: int, trials: int, tmp: Path, pruner: str | None):
    """One run of ``study`` in a fresh store under ``tmp``; ``pruner`` None keeps the study's."""
    from rich.console import Console

    from search.engine.coordinator import Coordinator
    from search.study.resolve import resolve
    from search.study.spec import PrunerSpec, load_spec

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
    return summary, cached, items, replay_work(trials, coord.steps)


@contextlib.contextmanager
def bare_workers(study: str, tmp: Path, workers: int) -> Iterator[list[Any]]:
    """``workers`` worker actors of ``study`` (models loaded) in a local Ray, without a coordinator loop."""
    from rich.console import Console

    from search.engine.coordinator import Coordinator
    from search.study.resolve import resolve
    from search.study.spec import load_spec

    spec = load_spec(study)
    spec = spec.replace(
        name="bare", storage=f"sqlite:///{tmp}/bare.db", output_dir=tmp / "bare", workers=workers
    )
    coord = Coordinator(spec, resolve(spec), live=False, console=Console(quiet=True))
    coord.open()
    with coord:  # Ray and the workers, stopped again on the way out
        yield [s.actor for s in coord.slots]


def round_trip_floor(actor: Any, recipe: dict[str, Any], calls: int = 15) -> float:
    """Median gap (s, worker clock) between back-to-back ``run_step`` calls on one worker: each call sent
    once the previous result is back, nothing else running (no store, no sampler, no second worker)."""
    import statistics

    import ray

    from merge_core import Recipe

    rid = Recipe.from_dict(recipe).id
    gaps, last_end = [], None
    for _ in range(calls):
        res = ray.get(actor.run_step.remote(recipe, rid, 0))
        if last_end is not None:
            gaps.append(res["t_start"] - last_end)
        last_end = res["t_end"]
    return statistics.median(gaps)


def bare_replay(actors: list[Any], work: list[tuple[dict, str, int]]) -> dict[str, float]:
    """``work`` (each trial's recipe, recipe id and the number of steps it ran) replayed on ``actors``: no
    Optuna, no store, no pruner; whole trials handed out in order, each worker kept a trial ahead so it
    never waits. Returns ``items``, ``wall`` s, worker ``cpu`` s, worker ``busy`` s and worker ``idle`` s between
    calls (on the workers' clocks): what the machine and Ray give this workload."""
    import ray

    todo = list(work)
    owner: dict[Any, int] = {}  # the ref of a trial's last step -> its worker
    pending: list[Any] = []
    spans: dict[str, list[tuple[float, float]]] = {}
    items = cpu = 0.0

    def send(i: int) -> None:
        recipe, rid, n_steps = todo.pop(0)
        refs = [actors[i].run_step.remote(recipe, rid, k) for k in range(n_steps)]
        owner[refs[-1]] = i
        pending.extend(refs)

    t0 = time.perf_counter()
    for i in range(len(actors)):
        for _ in range(2):
            if todo:
                send(i)
    while pending:
        done, _ = ray.wait(pending, num_returns=1)
        pending.remove(done[0])
        res = ray.get(done[0])
        items += len(res["records"])
        cpu += res["cpu_s"]
        spans.setdefault(res["worker"], []).append((res["t_start"], res["t_end"]))
        i = owner.pop(done[0], None)
        if i is not None and todo:
            send(i)
    wall = time.perf_counter() - t0
    busy = idle = 0.0
    for calls in spans.values():
        calls.sort()
        busy += sum(e - b for b, e in calls)
        idle += sum(b - e for (_, e), (b, _) in itertools.pairwise(calls))
    return {"items": items, "wall": wall, "cpu": cpu, "busy": busy, "idle": idle}


def replay_work(trials: list[Any], steps: list[list[list[Any]]]) -> list[tuple[dict, str, int]]:
    """Scored trials as (recipe, recipe id, steps run), in trial order; ``steps`` the workers' step plan
    (per step, [dataset, items] of each chunk)."""
    ends = list(itertools.accumulate(sum(n for _, n in step) for step in steps))
    out = []
    for t in trials:
        a = t.user_attrs
        if "cached_from" in a or "recipe_id" not in a or not a.get("n_items"):
            continue
        out.append(
            (a["recipe"], a["recipe_id"], next(k + 1 for k, e in enumerate(ends) if e >= a["n_items"]))
        )
    return out


@dataclass
class Pooled:
    """One configuration's runs added up (a ratio of sums: each round weighs by its length)."""

    trials: int = 0
    pruned: int = 0
    cached: int = 0
    skipped: int = 0
    items: int = 0
    loop_s: float = 0.0
    busy_s: float = 0.0
    idle_s: float = 0.0
    waits: int = 0
    loop_cpu_s: float = 0.0
    store_cpu_s: float = 0.0
    dispatch_cpu_s: float = 0.0
    optuna_cpu_s: float = 0.0
    worker_cpu_s: float = 0.0
    ratios: list[float] = field(default_factory=list)

    def add(self, s: Any, cached: int, items: int) -> None:
        # a recipe scored before is reused at no cost: not a trial run
        self.trials += s.finished_here - cached
        self.pruned += s.counts.get("PRUNED", 0)
        self.cached += cached
        self.skipped += s.skipped_calls
        self.items += items
        self.loop_s += s.loop_s
        self.busy_s += s.worker_busy_s
        self.idle_s += s.worker_idle_s
        self.waits += s.worker_waits
        self.loop_cpu_s += s.loop_cpu_s
        self.store_cpu_s += s.store_cpu_s
        self.dispatch_cpu_s += s.dispatch_cpu_s
        self.optuna_cpu_s += s.optuna_cpu_s
        self.worker_cpu_s += s.worker_cpu_s


def _spread(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}x" for x in xs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="studies/toy.toml")
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the four runs, every other one reversed")
    a = p.parse_args()
    configs = [(1, None), (2, None), (1, "none"), (2, "none")]
    pooled = {c: Pooled() for c in configs}
    work: list[tuple[dict, str, int]] = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            (Path(d) / str(r)).mkdir()
            last = {}
            for w, pruner in configs if r % 2 == 0 else configs[::-1]:
                s, cached, items, replay = run_once(a.study, w, a.trials, Path(d) / str(r), pruner)
                pooled[(w, pruner)].add(s, cached, items)
                last[(w, pruner)] = items / s.loop_s
                if (w, pruner) == (2, None):
                    work += replay
                n = s.finished_here - cached
                print(
                    f"round {r + 1}, {w} worker(s), pruner {pruner or 'of the study'}: {n} trials "
                    f"({s.counts.get('PRUNED', 0)} pruned), {items} items in {s.loop_s:.1f} s = {items / s.loop_s:.0f} "
                    f"items/s, coordinator CPU {1000 * s.loop_cpu_s / n:.0f} ms/trial, worker CPU "
                    f"{1000 * s.worker_cpu_s / items:.2f} ms/item, load avg {os.getloadavg()[0]:.1f}"
                )
            for pruner in (None, "none"):
                pooled[(2, pruner)].ratios.append(last[(2, pruner)] / last[(1, pruner)])
        with bare_workers(a.study, Path(d), 2) as actors:
            floor = round_trip_floor(actors[0], work[0][0])
            bare: dict[int, defaultdict[str, float]] = {1: defaultdict(float), 2: defaultdict(float)}
            bare_ratios: list[float] = []
            for r in range(a.rounds):
                got = {}
                for w in (1, 2) if r % 2 == 0 else (2, 1):
                    one = bare_replay(actors[:w], work)
                    for key, value in one.items():
                        bare[w][key] += value
                    got[w] = one["items"] / one["wall"]
                bare_ratios.append(got[2] / got[1])

    print(
        f"\nPooled over {a.rounds} round(s) ({len(configs)} runs each, every other round in reverse order):"
    )
    for (w, pruner), q in pooled.items():
        n = q.trials
        busy = q.busy_s / n
        cpu = q.loop_cpu_s / n
        print(
            f"{w} worker(s), pruner {pruner or 'of the study'}: {n} trials ({q.pruned} pruned, {q.cached} reused, "
            f"{q.skipped} calls skipped), {q.items} proxy items in {q.loop_s:.1f} s of dispatch = "
            f"{n * 3600 / q.loop_s:.0f} trials/h, {q.items / q.loop_s:.0f} items/s | worker compute {busy:.2f} "
            f"s/trial, idle between calls {1000 * q.idle_s / n:.1f} ms/trial = {100 * q.idle_s / q.busy_s:.2f}% "
            f"(target < 2%), worker CPU {1000 * q.worker_cpu_s / q.items:.2f} ms/item | coordinator CPU "
            f"{1000 * cpu:.0f} ms/trial = {100 * cpu / busy:.1f}% of compute (store thread "
            f"{1000 * q.store_cpu_s / n:.0f}, of which Optuna's ask, sampler, report and tell "
            f"{1000 * q.optuna_cpu_s / n:.0f}; dispatch thread {1000 * q.dispatch_cpu_s / n:.0f}, Ray's and other "
            f"threads {1000 * (q.loop_cpu_s - q.store_cpu_s - q.dispatch_cpu_s) / n:.0f})"
        )
    print(
        f"Ray round trip to a worker, back-to-back run_step calls with nothing else running: {1000 * floor:.2f} ms"
    )
    for (w, pruner), q in pooled.items():
        own = max(0.0, q.idle_s - q.waits * floor)
        each = f", {1000 * q.idle_s / q.waits:.1f} ms idle each" if q.waits else ""
        print(
            f"{w} worker(s), pruner {pruner or 'of the study'}: {q.waits} calls sent to a waiting worker{each}; "
            f"idle {100 * q.idle_s / q.busy_s:.2f}% of compute = the round trips' floor "
            f"{100 * q.waits * floor / q.busy_s:.2f}% + the rest (gaps between queued calls, the coordinator's "
            f"part) {100 * own / q.busy_s:.2f}%"
        )
    for pruner in (None, "none"):
        q1, q2 = pooled[(1, pruner)], pooled[(2, pruner)]
        share = q2.loop_cpu_s / q2.busy_s
        floor_share = q2.optuna_cpu_s / q2.busy_s
        print(
            f"2 workers vs 1, pruner {pruner or 'of the study'}: {(q2.items / q2.loop_s) / (q1.items / q1.loop_s):.2f}x "
            f"proxy items scored per hour (rounds: {_spread(q2.ratios)}), "
            f"{(q2.trials / q2.loop_s) / (q1.trials / q1.loop_s):.2f}x trials per hour (target >= 1.7x); the cores' "
            f"ceiling with the coordinator's CPU of the 2-worker runs: {2 / (1 + share):.2f}x, with only Optuna's "
            f"ask, sampler, report and tell of it: {2 / (1 + floor_share):.2f}x"
        )
        u1, u2 = q1.worker_cpu_s / q1.loop_s, q2.worker_cpu_s / (2 * q2.loop_s)
        c1, c2 = q1.worker_cpu_s / q1.items, q2.worker_cpu_s / q2.items
        print(
            f"  = 2 x {u2 / u1:.3f} (the workers computed on {100 * u2:.1f}% of the 2 cores with 2 workers, on "
            f"{100 * u1:.1f}% of one with 1; with 2, the coordinator took {100 * q2.loop_cpu_s / (2 * q2.loop_s):.1f}%"
            f", the rest is Ray, the system, start-up and the idle end) x {c1 / c2:.3f} (worker CPU per item, "
            f"{1000 * c1:.2f} ms with 1 worker, {1000 * c2:.2f} ms with 2: the workers share caches and memory, "
            f"and the machine's speed drifts)"
        )
    q2 = pooled[(2, None)]
    for w in (1, 2):  # every pass replays all of the pruned runs' scored items
        assert bare[w]["items"] == a.rounds * q2.items, (w, bare[w]["items"], a.rounds * q2.items)
    rate = {w: bare[w]["items"] / bare[w]["wall"] for w in (1, 2)}
    idle = {w: 100 * bare[w]["idle"] / bare[w]["busy"] for w in (1, 2)}
    r_bare = rate[2] / rate[1]
    c = bare[2]["cpu"] / (len(work) * a.rounds)  # worker CPU per trial
    room = c * (r_bare / 1.7 - 1)
    print(
        f"the 2-worker pruned runs' {len(work)} trials replayed on bare workers (the same recipes and steps; no "
        f"Optuna, no store, no pruner; each worker kept a trial ahead): 1 worker {rate[1]:.0f} "
        f"items/s, 2 workers {rate[2]:.0f} items/s = {r_bare:.2f}x (rounds: {_spread(bare_ratios)}), "
        f"what the machine and Ray give this workload; worker idle between calls {idle[1]:.2f}% "
        f"with 1 worker, {idle[2]:.2f}% with 2 (the coordinator's part of the idle above is "
        f"what exceeds these)\n"
        f"  a coordinator taking k s of CPU per trial of c = {1000 * c:.0f} ms of worker CPU leaves at most "
        f"{r_bare:.2f}x / (1 + k/c); 1.7x needs k <= {1000 * room:.0f} ms per trial. The coordinator took "
        f"{1000 * q2.loop_cpu_s / q2.trials:.0f} ms, of which Optuna's ask, sampler, report and tell "
        f"{1000 * q2.optuna_cpu_s / q2.trials:.0f} ms"
    )
    print(f"cores on this machine: {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
