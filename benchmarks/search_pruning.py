"""Pruning on the toy landscape: proxy items spent until the grid's best score is found, median pruner vs none.

Replays real trials: each cell of benchmarks/search_landscape.py holds its per-chunk results, so a trial
reports the same running accuracy after each chunk as the coordinator does (weighted mean over the
datasets seen so far) and stops when the pruner says so. Both arms use the product's TPE sampler
(search.samplers) with the same seed; pruning uses search.pruners' median defaults. Each arm runs until a
COMPLETE trial reaches the grid's best score (at most --max-trials), and counts the proxy items scored on
the way. A cell already COMPLETE is not evaluated again (coordinator cache); a pruned cell is.
Target (issue #6 §8): >= 30% fewer proxy items evaluated for the same best score.

    .venv/bin/python benchmarks/search_pruning.py [--size full] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_landscape import cell_key, load_or_build, replay_spec  # noqa: E402

from search.pruners import make_pruner  # noqa: E402
from search.samplers import make_sampler  # noqa: E402


def _spec(pruner: str, seed: int, options: dict | None = None):
    return replay_spec(seed=seed, pruner=pruner, pruner_options=options)


def run(
    cells: dict, datasets: list[str], pruner: str, seed: int, n_trials: int, options: dict | None = None
) -> tuple[int, float]:
    """(proxy items evaluated, best COMPLETE value) of one study, stopped once the grid's best is reached."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = _spec(pruner, seed, options)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec), pruner=make_pruner(spec))
    items = 0
    done: dict[str, float] = {}
    target = max(c["mean"] for c in cells.values())
    for _ in range(n_trials):
        t = study.ask()
        key = cell_key(
            t.suggest_float("vlm_weight", 0.0, 1.5, step=0.25),
            t.suggest_float("llm_weight", 0.0, 1.5, step=0.25),
        )
        if key in done:
            study.tell(t, done[key])
            continue
        n = {d: 0 for d in datasets}
        c = {d: 0 for d in datasets}
        pruned = False
        chunks = cells[key]["chunks"]
        for k, (d, cn, cc) in enumerate(chunks, start=1):
            items += cn
            n[d] += cn
            c[d] += cc
            seen = [x for x in datasets if n[x]]
            value = sum(c[x] / n[x] for x in seen) / len(seen)
            if k < len(chunks):
                t.report(value, k)
                if t.should_prune():
                    pruned = True
                    break
        if pruned:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            done[key] = value
            study.tell(t, value)
            if value >= target - 1e-12:
                break
    return items, max(done.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="full", choices=("full", "ci"))
    p.add_argument("--seed", type=int, default=0, help="toy world seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="sampler seeds")
    p.add_argument("--max-trials", type=int, default=150)
    p.add_argument(
        "--warmup", type=int, default=None, help="median pruner n_warmup_steps (default: the product's)"
    )
    p.add_argument("--startup", type=int, default=5, help="median pruner n_startup_trials (with --warmup)")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    land = load_or_build(a.out, a.size, a.seed)
    cells, datasets = land["cells"], land["datasets"]
    grid_best = max(c["mean"] for c in cells.values())
    savings, same = [], 0
    for s in a.seeds:
        i_none, b_none = run(cells, datasets, "none", s, a.max_trials)
        opts = {"n_warmup_steps": a.warmup, "n_startup_trials": a.startup} if a.warmup is not None else {}
        i_med, b_med = run(cells, datasets, "median", s, a.max_trials, opts)
        savings.append(1 - i_med / i_none)
        same += int(b_med >= b_none - 1e-12)
        print(
            f"seed {s}: no pruning {i_none} items, best {b_none:.3f} | median pruner {i_med} items, "
            f"best {b_med:.3f} | saved {100 * (1 - i_med / i_none):.0f}%"
        )
    med = statistics.median(savings)
    print(
        f"grid best {grid_best:.3f}; median items saved {100 * med:.0f}% (target >= 30%); "
        f"same-or-better best in {same}/{len(a.seeds)} seeds; "
        f"ratio items none/median {1 / (1 - med):.2f}x: {'PASS' if med >= 0.3 and same == len(a.seeds) else 'CHECK'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
