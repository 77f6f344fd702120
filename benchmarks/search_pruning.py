"""Pruning on the toy landscape: proxy items spent until the grid's best score is found, pruner vs none.

Replays real trials as the coordinator runs them: each cell of benchmarks/search_landscape.py holds the
correctness of every proxy item, regrouped into the product's step plan for ``--chunk-size``
(search_landscape.step_plan: the scorer's own grouping; step r = chunk r of every dataset). After each
step a trial reports the coordinator's running objective (search.engine.coordinator.running_scores and
objective_values: weighted mean over datasets of running accuracy) as ``trial.report(value, steps done)``
and asks ``should_prune()``, except after the last step, which completes it. Both arms use the product's
TPE sampler (search.study.samplers.make_sampler) with the same seed; the pruner comes from
search.study.pruners.make_pruner with ``n_steps`` (studies/toy.toml's [pruner] unless --pruner/--options say
otherwise). Each arm runs until a COMPLETE trial reaches the grid's best score (at most --max-trials) and
counts the proxy items scored on the way. A cell already COMPLETE is not evaluated again (the
coordinator's cache: told its value, no items); a pruned cell is. The toy study's baselines are not
replayed (one of them is the grid's best cell). Target (issue #6 §8): >= 30% fewer proxy items for the same best score.

    .venv/bin/python benchmarks/search_pruning.py [--seed 0] [--seeds 0 1 2 3 4]   # studies/toy.toml's pruner
    .venv/bin/python benchmarks/search_pruning.py --pruner median --options '{"n_warmup_steps": 1}'
    .venv/bin/python benchmarks/search_pruning.py --sweep [--seeds 0 1 2 3 4 5 6 7 8 9]  # candidate table
    .venv/bin/python benchmarks/search_pruning.py --seed 1 --chunk-size 50 --budget 36   # another world, etc.

The toy study's own space (its methods, components and schedules as studies/toy.toml lists them; every
recipe scored item by item, once, benchmarks/space_replay.py), at the demo's budget, per pruner: items, best sampled, whether the
trial that would have ended best or any trial within 2 points of the grid's best was pruned (issue #19
§3, #17 §5), and real studies' items per second with Wilcoxon against successive halving:

    .venv/bin/python benchmarks/search_pruning.py --real ["wilcoxon p<0.1" ...] [--budget 48]
    .venv/bin/python benchmarks/search_pruning.py --throughput [--budget 48]

``--real`` always runs ``none`` first: each pruner's items are also given as a ratio to its (same seeds).
The budget defaults to studies/toy.toml's n_trials.

The landscape of toy world seed 1 needs that world (`mergesearch toy build --size full --seed 1`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_landscape import cell_key, load_or_build, replay_cell, replay_spec, step_plan  # noqa: E402

from search.study.pruners import make_pruner  # noqa: E402
from search.study.samplers import make_sampler  # noqa: E402

Replays = dict[str, list[tuple[int, float]]]


def replays_for(land: dict, chunk_size: int) -> Replays:
    """Per cell: [(items in step, running objective after step), ...] for the step plan of ``chunk_size``."""
    plan = step_plan(land["items"], chunk_size)
    spec = replay_spec(seed=0)
    return {key: replay_cell(cell, plan, land["datasets"], spec) for key, cell in land["cells"].items()}


def product_pruner(
    name: str, options: dict | None = None, n_steps: int | None = None
) -> Callable[[int], optuna.pruners.BasePruner]:
    """A factory (sampler seed → pruner) through search.study.pruners.make_pruner, as the coordinator builds it
    (``n_steps``: steps per trial, which the coordinator passes too)."""

    def make(seed: int) -> optuna.pruners.BasePruner:
        return make_pruner(replay_spec(seed=seed, pruner=name, pruner_options=options), n_steps=n_steps)

    return make


def run(
    replays: Replays,
    pruner: Callable[[int], optuna.pruners.BasePruner],
    seed: int,
    n_trials: int,
    *,
    stop_at_best: bool = True,
) -> tuple[int, float, int, int, int]:
    """(proxy items evaluated, best COMPLETE value, trials asked, trials pruned, trials of a grid-best cell
    pruned) of one study of at most ``n_trials`` trials, stopped once a COMPLETE trial reaches the grid's
    best unless ``stop_at_best`` is False."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(replay_spec(seed=seed)), pruner=pruner(seed)
    )
    target = max(r[-1][1] for r in replays.values())
    items, asked, n_pruned, best_pruned = 0, 0, 0, 0
    done: dict[str, float] = {}
    for _ in range(n_trials):
        t = study.ask()
        asked += 1
        key = cell_key(
            t.suggest_float("vlm_weight", 0.0, 1.5, step=0.25),
            t.suggest_float("llm_weight", 0.0, 1.5, step=0.25),
        )
        if key in done:  # the coordinator's cache: same recipe already COMPLETE
            study.tell(t, done[key])
            continue
        steps = replays[key]
        pruned = False
        for k, (n, value) in enumerate(steps, start=1):
            items += n
            if k < len(steps):
                t.report(value, k)
                if t.should_prune():
                    pruned = True
                    break
        if pruned:
            n_pruned += 1
            best_pruned += steps[-1][1] >= target - 1e-12
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            done[key] = steps[-1][1]
            study.tell(t, done[key])
            if stop_at_best and done[key] >= target - 1e-12:
                break
    return items, max(done.values(), default=float("nan")), asked, n_pruned, best_pruned


def candidates(n_steps: int) -> dict[str, Callable[[int], optuna.pruners.BasePruner]]:
    """The pruners compared by --sweep, all through search.study.pruners.make_pruner (names and options as a
    study file gives them), plus Optuna's PatientPruner around the median pruner (marked ``optuna:``)."""
    out: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {}

    def add(name: str, opts: dict) -> None:
        out[f"{name} {json.dumps(opts)}"] = product_pruner(name, opts, n_steps)

    for warmup in (0, 1, 2):  # steps are 1-based: warm-up 0 and 1 both decide from step 1
        for startup in range(2, 7):
            add("median", {"n_startup_trials": startup, "n_warmup_steps": warmup})
    for pct in (25.0, 33.0, 40.0, 60.0, 75.0):
        for startup in (3, 5):
            for warmup in (1, 2):
                add("percentile", {"percentile": pct, "n_startup_trials": startup, "n_warmup_steps": warmup})
    for patience in (1, 2):
        out[f"optuna:Patient(patience={patience}, Median(5, 1))"] = lambda s, p=patience: (
            optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(5, 1), patience=p)
        )
    for rf in (2, 3, 4):
        for min_r in (1, 2, 3):
            add("successive_halving", {"min_resource": min_r, "reduction_factor": rf})
    out["hyperband (product defaults)"] = product_pruner("hyperband", None, n_steps)
    return out


def compare(
    replays: Replays,
    pruner: Callable[[int], optuna.pruners.BasePruner],
    seeds: list[int],
    n_trials: int,
    base: dict[int, tuple[int, float, int, int, int]],
) -> dict[str, Any]:
    """Per seed: items without / with pruning, saving, same best, best cell pruned; the median saving."""
    rows = []
    for s in seeds:
        i_none, b_none = base[s][:2]
        i_p, b_p, asked, n_pruned, best_pruned = run(replays, pruner, s, n_trials)
        rows.append(
            {
                "seed": s,
                "none": i_none,
                "pruned": i_p,
                "saved": 1 - i_p / i_none,
                "same": b_p >= b_none - 1e-12,
                "asked": asked,
                "n_pruned": n_pruned,
                "best_pruned": best_pruned,
            }
        )
    return {
        "rows": rows,
        "median_saved": statistics.median(r["saved"] for r in rows),
        "min_saved": min(r["saved"] for r in rows),
        "same": sum(r["same"] for r in rows),
        "best_pruned": sum(r["best_pruned"] > 0 for r in rows),
    }


# every pruner search.study.pruners.make_pruner offers (median, percentile and Hyperband with the product's
# defaults), successive halving and Wilcoxon at the settings worth comparing
REAL_CANDIDATES: dict[str, tuple[str, dict]] = {
    "none": ("none", {}),
    "median (product defaults)": ("median", {}),
    "percentile (product defaults)": ("percentile", {}),
    "hyperband (product defaults)": ("hyperband", {}),
    "successive_halving (1, 3)": ("successive_halving", {"min_resource": 1, "reduction_factor": 3}),
    "successive_halving (1, 2)": ("successive_halving", {"min_resource": 1, "reduction_factor": 2}),
    "successive_halving (2, 2)": ("successive_halving", {"min_resource": 2, "reduction_factor": 2}),
    "successive_halving (3, 3)": ("successive_halving", {"min_resource": 3, "reduction_factor": 3}),
    "wilcoxon p<0.1": ("wilcoxon", {"p_threshold": 0.1}),
    "wilcoxon p<0.05": ("wilcoxon", {"p_threshold": 0.05}),
    "wilcoxon p<0.01": ("wilcoxon", {"p_threshold": 0.01}),
}


def real_space(
    size: str, seeds: list[int], n_trials: int, labels: list[str], near: float = 0.02
) -> dict[str, list[dict[str, Any]]]:
    """The toy study's own space (benchmarks/space_replay.py: every recipe scored item by item, once), per
    pruner and sampler seed: items spent, the best sampled COMPLETE value, whether the trial that would have
    ended best (by its full score) was pruned, whether any trial within ``near`` of the grid's best was
    pruned, and the items spent until the first COMPLETE sampled trial within ``near`` of the grid's best."""
    import dataclasses

    from space_replay import CellBank, grid_best, replay, toy_spec

    spec = toy_spec(size)
    bank = CellBank(spec)
    target = grid_best(spec, bank)[0]
    print(f"toy study's space, world fingerprint {bank.fingerprint[:12]}: grid best {target:.4f}; "
          f"{n_trials} trials per study; sampler seeds {seeds}")  # fmt: skip
    out: dict[str, list[dict[str, Any]]] = {}
    labels = ["none", *(x for x in labels if x != "none")]  # the reference of the items ratio
    for label in labels:
        name, opts = REAL_CANDIDATES[label]
        rows = []
        for s in seeds:
            sp = spec.replace(
                sampler=dataclasses.replace(spec.sampler, seed=s),
                pruner=dataclasses.replace(spec.pruner, name=name, options=opts),
            )
            r = replay(sp, bank, n_trials=n_trials, per_item=name == "wilcoxon")
            winner = max(r.trials, key=lambda t: t.full_value)
            spent, reach = 0, None
            for t in r.trials:
                spent += t.items
                if (
                    reach is None
                    and t.baseline is None
                    and t.state != "PRUNED"
                    and t.full_value >= target - near
                ):
                    reach = spent
            bs = r.best_sampled()
            rows.append(
                {
                    "seed": s,
                    "items": r.items,
                    "best_sampled": bs.full_value if bs else float("nan"),
                    "winner_pruned": winner.state == "PRUNED",
                    "near_pruned": sum(
                        t.state == "PRUNED" and t.full_value >= target - near for t in r.trials
                    ),
                    "n_pruned": sum(t.state == "PRUNED" for t in r.trials),
                    "items_to_near": reach,
                }
            )
        bank.save()
        out[label] = rows
        print(
            f"{label:28s} items median {statistics.median(x['items'] for x in rows):6.0f} | best sampled "
            + " ".join(f"{x['best_sampled']:.4f}" for x in rows)
            + f" | within {100 * near:.0f} pts of the grid best {sum(x['best_sampled'] >= target - near for x in rows)}/{len(rows)}"
            + f" | winner pruned {sum(x['winner_pruned'] for x in rows)}/{len(rows)}"
            + f" | a near-best trial pruned {sum(x['near_pruned'] > 0 for x in rows)}/{len(rows)}"
            + f" | items / none's {sum(x['items'] for x in rows) / sum(x['items'] for x in out['none']):.2f}x"
            + f" | pruned trials {[x['n_pruned'] for x in rows]} | items to a near-best {[x['items_to_near'] for x in rows]}",
            flush=True,
        )
    return out


def throughput(size: str, pruners: list[str], n_trials: int) -> None:
    """Real toy studies (the coordinator, studies/toy.toml's 2 workers) with each pruner of
    :data:`REAL_CANDIDATES`: proxy items scored per second of the dispatch loop, side by side in one run
    (WilcoxonPruner decides on the coordinator after one store write per item; successive halving on the
    workers, search.engine.gate)."""
    import dataclasses
    import tempfile

    from rich.console import Console
    from space_replay import toy_spec

    from search.run import run_study
    from search.study.storage import open_study

    spec = toy_spec(size, n_trials=n_trials)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in pruners:
            name, opts = REAL_CANDIDATES[label]
            d = Path(tmp) / label.replace(" ", "_")
            sp = spec.replace(
                output_dir=d, storage=f"sqlite:///{d / 'study.db'}",
                pruner=dataclasses.replace(spec.pruner, name=name, options=opts),
            )  # fmt: skip
            summary = run_study(sp, console=Console(quiet=True), live=False, promote=False)
            study = open_study(sp, create=False, with_sampler=False)
            items = sum(int(t.user_attrs.get("n_items", 0)) for t in study.get_trials(deepcopy=False))
            rates[label] = items / summary.loop_s
            print(
                f"{label:28s} {items} items in {summary.loop_s:.1f} s of loop ({summary.wall_s:.1f} s in all): "
                f"{rates[label]:.0f} items/s; workers idle between calls "
                f"{100 * summary.worker_idle_s / max(summary.worker_busy_s, 1e-9):.1f}% of busy",
                flush=True,
            )
    first = pruners[0]
    for label in pruners[1:]:
        print(f"items/s {label} / {first}: {rates[label] / rates[first]:.2f}x")


def _toy_trials() -> int:
    """studies/toy.toml's n_trials (the demo's budget)."""
    from search.study.spec import load_spec

    return load_spec(Path(__file__).resolve().parents[1] / "studies" / "toy.toml").n_trials


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="full", choices=("full", "ci"))
    p.add_argument("--seed", type=int, default=0, help="toy world seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="sampler seeds")
    p.add_argument("--max-trials", type=int, default=150)
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="items per dataset per step (default: studies/toy.toml's)",
    )
    p.add_argument(
        "--pruner",
        default=None,
        help="a pruner name of search.study.pruners.make_pruner (default: studies/toy.toml's)",
    )
    p.add_argument(
        "--options", default=None, help="JSON object: [pruner] options (default: toy.toml's with its pruner)"
    )
    p.add_argument("--sweep", action="store_true", help="compare the candidate pruners instead")
    p.add_argument(
        "--budget",
        type=int,
        default=0,
        help="also run both arms for exactly this many trials (e.g. toy.toml's n_trials): items and best found",
    )
    p.add_argument("--json", default=None, help="with --sweep: also write the results to this JSON file")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument(
        "--real",
        nargs="*",
        default=None,
        metavar="PRUNER",
        help="replay the toy study's own space (methods, components, schedules) instead of the grid, "
        f"at --budget trials (default: toy.toml's n_trials), for these pruners (default all; none always): "
        f"{', '.join(REAL_CANDIDATES)}",
    )
    p.add_argument(
        "--throughput",
        nargs="*",
        default=None,
        metavar="PRUNER",
        help="real toy studies at --budget trials (default: toy.toml's n_trials) with these pruners (default: successive halving "
        "(1, 3) and wilcoxon p<0.1): items per second of the coordinator's loop",
    )
    a = p.parse_args()
    if a.throughput is not None:
        throughput(
            a.size, a.throughput or ["successive_halving (1, 3)", "wilcoxon p<0.1"], a.budget or _toy_trials()
        )
        return 0
    if a.real is not None:
        unknown = [x for x in a.real if x not in REAL_CANDIDATES]
        if unknown:
            p.error(f"--real: unknown pruner {unknown[0]!r}; one of {', '.join(REAL_CANDIDATES)}")
        real_space(a.size, a.seeds, a.budget or _toy_trials(), a.real or list(REAL_CANDIDATES))
        return 0
    land = load_or_build(a.out, a.size, a.seed)
    if a.chunk_size is None:
        from search.study.spec import load_spec

        a.chunk_size = load_spec(
            Path(__file__).resolve().parents[1] / "studies" / "toy.toml"
        ).objectives.chunk_size
    chunk_size = a.chunk_size
    replays = replays_for(land, chunk_size)
    n_steps = len(next(iter(replays.values())))
    per_trial = sum(n for n, _ in next(iter(replays.values())))
    grid_best = max(r[-1][1] for r in replays.values())
    print(
        f"landscape {a.size}/seed {a.seed}: {len(replays)} cells, chunk_size {chunk_size} -> {n_steps} steps, "
        f"{per_trial} items per trial; grid best {grid_best:.4f}; sampler seeds {a.seeds}"
    )
    base = {s: run(replays, product_pruner("none", None, n_steps), s, a.max_trials) for s in a.seeds}
    if a.sweep:
        print(
            f"{'pruner':80s} {'median saved':>12s} {'min saved':>9s} {'same best':>9s} {'best pruned':>11s}"
            "  saved % per seed"
        )
        results = {}
        for label, make in candidates(n_steps).items():
            res = results[label] = compare(replays, make, a.seeds, a.max_trials, base)
            per_seed = " ".join(
                f"{100 * r['saved']:3.0f}{'' if r['same'] else '!'}{'*' if r['best_pruned'] else ''}"
                for r in res["rows"]
            )
            print(
                f"{label:80s} {100 * res['median_saved']:11.0f}% {100 * res['min_saved']:8.0f}% "
                f"{res['same']:>6d}/{len(a.seeds):<2d} {res['best_pruned']:>8d}/{len(a.seeds):<2d}  {per_seed}",
                flush=True,
            )
        print(
            "same best: seeds whose pruned run reached the unpruned run's best within --max-trials (! = not); "
            "best pruned: seeds where a trial of a grid-best cell was pruned at least once (*)"
        )
        if a.json:
            Path(a.json).write_text(
                json.dumps({"chunk_size": chunk_size, "world_seed": a.seed, "results": results})
            )
        return 0
    if a.pruner is None:  # the toy study's own [pruner]
        from search.study.spec import load_spec

        toy = load_spec(Path(__file__).resolve().parents[1] / "studies" / "toy.toml").pruner
        a.pruner = toy.name
        a.options = a.options or json.dumps(toy.options)
    opts = json.loads(a.options) if a.options else None
    res = compare(replays, product_pruner(a.pruner, opts, n_steps), a.seeds, a.max_trials, base)
    shown = f"{a.pruner} {json.dumps(opts) if opts else '(product defaults)'}"
    for r, s in zip(res["rows"], a.seeds, strict=True):
        print(
            f"seed {s}: no pruning {r['none']} items, best {base[s][1]:.4f} | {shown}: {r['pruned']} items "
            f"({r['n_pruned']} of {r['asked']} trials pruned), best {'same' if r['same'] else 'LOWER'} | "
            f"saved {100 * r['saved']:.0f}%{'; a grid-best cell was pruned' if r['best_pruned'] else ''}"
        )
    med = res["median_saved"]
    ok = med >= 0.3 and res["same"] == len(a.seeds)
    print(
        f"median items saved {100 * med:.0f}% (target >= 30%; min {100 * res['min_saved']:.0f}%); "
        f"same best in {res['same']}/{len(a.seeds)} seeds (a grid-best cell pruned in {res['best_pruned']}); ratio items none/pruned {1 / (1 - med):.2f}x: "
        f"{'PASS' if ok else 'CHECK'}"
    )
    if a.budget:
        arms = {"none": product_pruner("none", None, n_steps), shown: product_pruner(a.pruner, opts, n_steps)}
        for label, make in arms.items():
            res_b = [run(replays, make, s, a.budget, stop_at_best=False) for s in a.seeds]
            print(
                f"budget {a.budget} trials, {label}: items median {statistics.median(r[0] for r in res_b):.0f}; "
                f"grid best found in {sum(r[1] >= grid_best - 1e-12 for r in res_b)}/{len(a.seeds)} seeds; "
                f"mean best {statistics.mean(r[1] for r in res_b):.4f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
