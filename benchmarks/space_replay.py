"""The toy study's real search space, replayed: every recipe a search asks for is scored once, item by item.

The 49-cell landscape (benchmarks/search_landscape.py) covers task arithmetic only. The toy study searches
four methods, three component sets and three schedules (studies/toy.toml), a space no grid covers. Here a
:class:`CellBank` scores on demand, in this process, each recipe a replayed search asks for, with the
product's own worker (``search.engine.worker.TrialWorker``: ResidentMerger + ProxyScorer, the study's chunk and
batch sizes), and keeps the correctness of every item by recipe id in a JSON file named after the toy
world's weights fingerprint (``objectives.toy.fingerprint``), so that a rerun, another pruner or another
sampler setting re-scores only the recipes it is the first to ask for, and a world trained on another CPU
never reads this one's scores.

:func:`replay` runs one study as the coordinator does with one worker: the baselines enqueued first, as
points of the space where they are (``search.study.baseline_points``) and never pruned; the product's sampler
(``search.study.samplers.make_sampler``) and pruner (``search.study.pruners.make_pruner`` with the step count); after
each step the running objective is reported and the pruner asked, except after the last step; a recipe
already COMPLETE is told its value without items (the recipe cache). With ``per_item`` the trial reports
every item's weighted correctness at its item index instead (what Optuna's WilcoxonPruner pairs), and the
pruner is still asked once per step. Two workers with a constant liar see each result a trial later than
here; ``make demo``-like runs confirm the final numbers (benchmarks/search_efficiency.py --real).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TOY_STUDY = REPO / "studies" / "toy.toml"


def toy_spec(size: str = "full", **changes: Any):
    """studies/toy.toml with the toy size and ``changes`` (StudySpec fields) applied."""
    import dataclasses

    from search.study.spec import ToySource, load_spec

    spec = load_spec(TOY_STUDY)
    spec = spec.replace(models=dataclasses.replace(spec.models, toy=ToySource(spec.models.toy.seed, size)))
    return spec.replace(**changes) if changes else spec


class CellBank:
    """Recipe id → per-item correctness (``{dataset: "0101..."}`` in the scorer's step order), scored on
    first request with the product's worker and kept in ``<out>/space_cells_<size>_seed<s>_<fp>.json``."""

    def __init__(self, spec, out: str | Path = REPO / "benchmarks" / "results") -> None:
        from objectives.toy import build_toy_world
        from objectives.toy.fingerprint import world_identity
        from search.study.resolve import resolve

        self.spec = spec
        self.resolved = resolve(spec)
        toy = spec.models.toy
        world = build_toy_world(toy.seed, size=toy.size)
        self.fingerprint = world_identity(world)["fingerprint"]
        self.path = Path(out) / f"space_cells_{toy.size}_seed{toy.seed}_{self.fingerprint[:12]}.json"
        self.cells: dict[str, dict[str, Any]] = {}  # recipe id → {"recipe": dict, "correct": {dataset: bits}}
        if self.path.is_file():
            self.cells = json.loads(self.path.read_text())["cells"]
        self._worker = None
        self.scored = 0  # recipes scored by this process (the others came from the file)
        self.steps: list[list[tuple[str, int]]] = []
        self.datasets: tuple[str, ...] = tuple(self.resolved.datasets)

    def _load_worker(self) -> Any:
        if self._worker is None:
            from search.engine.worker import TrialWorker, WorkerConfig

            obj = self.spec.objectives
            r = self.resolved
            self._worker = TrialWorker(
                WorkerConfig(
                    vlm=r.vlm, llm=r.llm, base=r.base, datasets=r.datasets, data_dir=r.data_dir,
                    device="cpu", dtype=self.spec.models.dtype, chunk_size=obj.chunk_size,
                    max_new_tokens=obj.max_new_tokens, batch_size=obj.batch_size, limit=obj.limit,
                )
            )  # fmt: skip
        return self._worker

    def plan(self) -> list[list[tuple[str, int]]]:
        """Per step, ``(dataset, items)`` of each chunk (the worker's plan; stored with the cells)."""
        if not self.steps:
            if self.path.is_file():
                self.steps = [[tuple(c) for c in st] for st in json.loads(self.path.read_text())["steps"]]
            else:
                self.steps = [[tuple(c) for c in st] for st in self._load_worker().info()["steps"]]
        return self.steps

    def correct(self, recipe: dict[str, Any], recipe_id: str) -> dict[str, str]:
        """The item-by-item correctness of ``recipe``, scored now if no run asked for it before."""
        if recipe_id not in self.cells:
            w = self._load_worker()
            bits: dict[str, list[str]] = {d: [] for d in self.datasets}
            for k in range(len(w.steps)):
                for rec in w.run_step(recipe, recipe_id, k)["records"]:
                    bits[rec["dataset"]].append("1" if rec["correct"] else "0")
            self.cells[recipe_id] = {"recipe": recipe, "correct": {d: "".join(b) for d, b in bits.items()}}
            self.scored += 1
            if self.scored % 10 == 0:
                self.save()
        return self.cells[recipe_id]["correct"]

    def save(self) -> None:
        """Write the bank atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        body = {"fingerprint": self.fingerprint, "steps": self.plan(), "cells": self.cells}
        tmp.write_text(json.dumps(body) + "\n")
        tmp.replace(self.path)


@dataclass
class Played:
    """One replayed trial: its recipe, whether a baseline, its final value had it run in full, its fate."""

    number: int
    recipe: dict[str, Any]
    baseline: str | None
    full_value: float
    state: str  # COMPLETE / PRUNED / CACHED
    items: int
    value: float | None = None  # the value told (COMPLETE) or the last reported (PRUNED)


@dataclass
class Replay:
    trials: list[Played] = field(default_factory=list)

    @property
    def items(self) -> int:
        return sum(t.items for t in self.trials)

    def best_sampled(self) -> Played | None:
        done = [t for t in self.trials if t.state != "PRUNED" and t.baseline is None]
        return max(done, key=lambda t: t.full_value, default=None)

    def best_baseline(self) -> Played | None:
        return max((t for t in self.trials if t.baseline), key=lambda t: t.full_value, default=None)

    def best_found(self) -> float:
        return max((t.full_value for t in self.trials if t.state != "PRUNED"), default=float("nan"))


def _values(bits: dict[str, str], steps: list[list[tuple[str, int]]], spec, datasets) -> list[tuple[int, float]]:
    """[(items in step, running objective after it)] — the coordinator's own running objective."""
    from search.study.objective_values import objective_values, running_scores

    records: list[dict[str, Any]] = []
    at = {d: 0 for d in datasets}
    out = []
    for step in steps:
        n = 0
        for d, k in step:
            records.extend({"dataset": d, "correct": b == "1"} for b in bits[d][at[d] : at[d] + k])
            at[d] += k
            n += k
        out.append((n, objective_values(running_scores(records, tuple(datasets)), spec, tuple(datasets))[0]))
    return out


def _item_values(bits, steps, spec, datasets) -> list[list[float]]:
    """Per step, each item's weighted correctness ``w_d / mean(w) · correct`` (its mean over a whole trial
    is the weighted objective when the datasets have equal item counts), in step order."""
    from search.engine.item_reports import item_value
    from search.study.objective_values import dataset_weights

    w = dataset_weights(spec, tuple(datasets))
    at = {d: 0 for d in datasets}
    out = []
    for step in steps:
        row = []
        for d, k in step:
            row.extend(item_value({"dataset": d, "correct": b == "1"}, w) for b in bits[d][at[d] : at[d] + k])
            at[d] += k
        out.append(row)
    return out


def replay(
    spec,
    bank: CellBank,
    *,
    n_trials: int,
    pruner: Callable[[], optuna.pruners.BasePruner] | None = None,
    per_item: bool = False,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> Replay:
    """One study of ``n_trials`` trials on the bank (see the module docstring)."""
    from merge_core import Recipe
    from search.study.baseline_points import enqueue_baselines, register_params
    from search.study.pruners import make_pruner
    from search.study.samplers import make_sampler
    from search.study.space import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    steps = bank.plan()
    study = optuna.create_study(
        direction="maximize",
        sampler=sampler or make_sampler(spec),
        pruner=pruner() if pruner else make_pruner(spec, n_steps=len(steps)),
    )
    space = SearchSpace(spec, bank.resolved.models())
    enqueue_baselines(study, space, spec.baselines)
    out = Replay()
    done: dict[str, float] = {}
    for _ in range(n_trials):
        t = study.ask()
        base = t.user_attrs.get("baseline")
        if base:
            recipe = dict(t.user_attrs["recipe"])
            register_params(space, t)
        else:
            recipe = space.suggest(t)
        rid = Recipe.from_dict(recipe).id
        bits = bank.correct(recipe, rid)
        vals = _values(bits, steps, spec, bank.datasets)
        full = vals[-1][1]
        if rid in done:
            study.tell(t, done[rid])
            out.trials.append(Played(t.number, recipe, base, full, "CACHED", 0, done[rid]))
            continue
        items_vals = _item_values(bits, steps, spec, bank.datasets) if per_item else None
        items, pruned, last, idx = 0, False, None, 0
        for k, (n, value) in enumerate(vals, start=1):
            items += n
            last = value
            if k == len(vals):
                break
            if items_vals is not None:
                for v in items_vals[k - 1]:
                    t.report(v, idx)
                    idx += 1
            else:
                t.report(value, k)
            if t.should_prune() and not base:
                pruned = True
                break
        if pruned:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
            out.trials.append(Played(t.number, recipe, base, full, "PRUNED", items, last))
        else:
            if items_vals is not None:
                for v in items_vals[-1]:
                    t.report(v, idx)
                    idx += 1
            done[rid] = full
            study.tell(t, full)
            out.trials.append(Played(t.number, recipe, base, full, "COMPLETE", items, full))
    return out


GRID = [round(0.25 * i, 2) for i in range(7)]  # benchmarks/search_landscape.py's task-arithmetic grid


def grid_best(spec, bank: CellBank) -> tuple[float, dict[str, Any]]:
    """The best cell of the 49-cell task-arithmetic grid on this world (scored through the bank, so the
    same world and the same step plan as the replays): (value, recipe)."""
    from merge_core import Recipe
    from search.study.space import SearchSpace

    space = SearchSpace(spec, bank.resolved.models())
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    for a1 in GRID:
        for a2 in GRID:
            recipe = space.baseline({"method": "task_arithmetic", "vlm_weight": a1, "llm_weight": a2})
            bits = bank.correct(recipe, Recipe.from_dict(recipe).id)
            value = _values(bits, bank.plan(), spec, bank.datasets)[-1][1]
            if value > best[0]:
                best = (value, recipe)
    return best
