"""A real merge landscape for the search benchmarks: every cell of a task-arithmetic grid, scored item by item.

Grid: task_arithmetic with vlm_weight (a1) and llm_weight (a2) in {0, 0.25, ..., 1.5} (49 recipes) on the
toy world. Each recipe is merged in memory (merge_core.ResidentMerger) and scored on the toy proxy sets
with objectives.ProxyScorer step by step, exactly as a search worker does (``run_step`` with the study's
chunk size and batch size). Per cell the correctness of every item is kept (per dataset a string of 0/1,
in the scorer's item order, which ``items`` lists once per dataset), so the efficiency and pruning
benchmarks can replay real trials with the step plan of any chunk size (:func:`step_plan`, built by the
scorer's own grouping) and the coordinator's running objective (:func:`replay_cell`) without re-running
the model. Cached as JSON (``format`` = :data:`FORMAT`; a file of another format is rebuilt):

    .venv/bin/python benchmarks/search_landscape.py [--size full|ci] [--seed 0] [--out benchmarks/results]

prints the landscape (endpoint-like corners, best cell, spread) and the time per evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STEPS = [round(0.25 * i, 2) for i in range(7)]
FORMAT = "mergesearch.search_landscape/v2"  # v1 (per-chunk counts only) cannot be regrouped into steps


def landscape_path(out: str | Path, size: str, seed: int, fingerprint: str | None = None) -> Path:
    """The landscape's JSON file; with the toy world's weights fingerprint, the one built on that world."""
    tail = f"_{fingerprint[:12]}" if fingerprint else ""
    return Path(out) / f"search_landscape_v2_{size}_seed{seed}{tail}.json"


def local_fingerprint(size: str, seed: int) -> str | None:
    """The weights fingerprint of this machine's toy world (``objectives.toy.fingerprint``), None when it is
    not built: a landscape scored on another machine's world (float training differs across CPUs) is not
    this machine's landscape."""
    from objectives.toy.build import ToyWorld, world_dir
    from objectives.toy.fingerprint import world_identity

    root = world_dir(seed, size)
    if not (root / "toy_world.json").is_file():
        return None
    return world_identity(ToyWorld.load(root))["fingerprint"]


def cell_key(a1: float, a2: float) -> str:
    return f"{a1:.2f},{a2:.2f}"


def step_plan(items: dict[str, list[str]], chunk_size: int) -> list[list[tuple[str, int, int]]]:
    """The product's step plan for ``chunk_size``: per step, ``(dataset, start, end)`` of each chunk, as
    positions in ``items[dataset]`` (the scorer's item order, stored in the landscape).

    Built by the scorer's own planner (``objectives.scorer.plan_steps``), so the replay follows the
    scorer's order and steps rather than a copy of them.
    """
    from objectives.scorer import plan_steps

    pos = {name: {index: k for k, index in enumerate(idx)} for name, idx in items.items()}
    plan = []
    for step in plan_steps(items, chunk_size):
        rows = []
        for chunk in step:
            at = [pos[chunk.dataset][i] for i in chunk.indices]
            if at != list(range(at[0], at[0] + len(at))):
                raise ValueError(f"{chunk.dataset}: the scorer's order differs from the stored item order")
            rows.append((chunk.dataset, at[0], at[0] + len(at)))
        plan.append(rows)
    return plan


def replay_cell(cell: dict, plan: list[list[tuple[str, int, int]]], datasets: list[str], spec) -> list:
    """``[(items scored in the step, objective after the step), ...]`` for one cell, one entry per step:
    the coordinator's own ``running_scores`` and ``objective_values`` over the records so far."""
    from search.engine.coordinator import objective_values, running_scores

    records: list[dict[str, Any]] = []
    out = []
    for step in plan:
        n = 0
        for dataset, lo, hi in step:
            records.extend({"dataset": dataset, "correct": b == "1"} for b in cell["correct"][dataset][lo:hi])
            n += hi - lo
        scores = running_scores(records, tuple(datasets))
        out.append((n, objective_values(scores, spec, tuple(datasets))[0]))
    return out


def replay_spec(
    *,
    seed: int,
    sampler: str = "tpe",
    sampler_options: dict | None = None,
    pruner: str = "none",
    pruner_options: dict | None = None,
):
    """A study spec whose search space is exactly this grid (task arithmetic, a1 and a2 on STEPS), for the
    benchmarks that replay the stored cells through the product's samplers and pruners."""
    from search.study.spec import spec_from_dict

    step = STEPS[1] - STEPS[0]
    grid = {"low": STEPS[0], "high": STEPS[-1], "step": step}
    return spec_from_dict(
        {
            "name": "bench",
            "n_trials": 1,
            "models": {"vlm": "o/v", "llm": "o/l", "base": "o/b"},
            "objectives": {"datasets": ["A"]},
            "space": {"methods": ["task_arithmetic"], "vlm_weight": grid, "llm_weight": dict(grid)},
            "sampler": {"name": sampler, "seed": seed, "options": sampler_options or {}},
            "pruner": {"name": pruner, "options": pruner_options or {}},
        }
    )


def evaluate(
    size: str,
    seed: int,
    *,
    chunk_size: int,
    max_new_tokens: int,
    batch_size: int,
    threads: int,
    verbose: bool,
) -> dict[str, Any]:
    """Score every grid cell step by step; per cell: per-item correctness per dataset, accuracies, mean."""
    import torch

    torch.set_num_threads(threads)
    from merge_core import Recipe, ResidentMerger
    from objectives.datasets import load_dataset
    from objectives.generation import GenerationConfig
    from objectives.processing import load_processor, register_image_only_processors
    from objectives.scorer import ProxyScorer
    from objectives.toy import build_toy_world

    register_image_only_processors()
    world = build_toy_world(seed, size=size)
    merger = ResidentMerger(str(world.vlm), str(world.llm), str(world.base))
    datasets = [load_dataset(n, root=world.data_dir) for n in world.proxy_datasets]
    names = [d.name for d in datasets]
    scorer = ProxyScorer(
        merger.model,
        load_processor(str(world.vlm)),
        datasets,
        chunk_size=chunk_size,
        generation=GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size),
    )
    steps = scorer.steps()
    items: dict[str, list[str]] = {name: [] for name in names}
    for step in steps:
        for chunk in step:
            items[chunk.dataset].extend(chunk.indices)
    # the stored order regrouped by the scorer's grouping must give back the steps that were scored
    plan = step_plan(items, chunk_size)
    assert [[(d, items[d][lo:hi]) for d, lo, hi in st] for st in plan] == [
        [(c.dataset, list(c.indices)) for c in st] for st in steps
    ]
    cells: dict[str, Any] = {}
    t_all = time.perf_counter()
    for a1 in STEPS:
        for a2 in STEPS:
            recipe = Recipe.from_dict(
                {
                    "vlm": str(world.vlm),
                    "llm": str(world.llm),
                    "base": str(world.base),
                    "method": "task_arithmetic",
                    "vlm_weight": a1,
                    "llm_weight": a2,
                }
            )
            t0 = time.perf_counter()
            merger.apply(recipe)
            correct: dict[str, dict[str, bool]] = {name: {} for name in names}
            for step in steps:
                for r in scorer.run_step(step):
                    correct[r.dataset][r.index] = bool(r.correct)
            bits = {d: "".join("1" if correct[d][i] else "0" for i in items[d]) for d in names}
            acc = {d: bits[d].count("1") / len(bits[d]) for d in names}
            key = cell_key(a1, a2)
            cells[key] = {
                "vlm_weight": a1,
                "llm_weight": a2,
                "recipe_id": recipe.id,
                "correct": bits,
                "scores": acc,
                "mean": sum(acc.values()) / len(acc),
                "eval_s": round(time.perf_counter() - t0, 2),
            }
            if verbose:
                print(
                    f"  a1={a1:.2f} a2={a2:.2f} mean {cells[key]['mean']:.3f} ({cells[key]['eval_s']} s)",
                    flush=True,
                )
    merger.restore()
    return {
        "format": FORMAT,
        "size": size,
        "seed": seed,
        "world": str(world.root),
        "datasets": names,
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "grid": STEPS,
        "items": items,
        "cells": cells,
        "total_s": round(time.perf_counter() - t_all, 1),
    }


def load_or_build(
    out: str | Path = "benchmarks/results", size: str = "full", seed: int = 0, **kw: Any
) -> dict:
    """The cached landscape JSON (format :data:`FORMAT`), evaluated first if absent or of another format
    (written atomically). Defaults match studies/toy.toml: chunk_size 25, batch_size 25, 24 new tokens."""
    local = local_fingerprint(size, seed)
    # this world's own landscape first; the plain name (e.g. the committed one) only when it records this
    # world's fingerprint, or when no world is built here to compare with
    for path in ([landscape_path(out, size, seed, local)] if local else []) + [landscape_path(out, size, seed)]:
        if path.is_file():
            res = json.loads(path.read_text())
            if res.get("format") == FORMAT and (local is None or res.get("fingerprint") == local):
                return res
    path = landscape_path(out, size, seed, local)
    opts = {"chunk_size": 25, "max_new_tokens": 24, "batch_size": 25, "threads": 1, "verbose": False}
    opts.update(kw)
    res = evaluate(size, seed, **opts)
    res["fingerprint"] = local_fingerprint(size, seed)  # built now, if it was not
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(path)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="full", choices=("full", "ci"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--chunk-size", type=int, default=25)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    res = load_or_build(
        a.out,
        a.size,
        a.seed,
        chunk_size=a.chunk_size,
        max_new_tokens=a.max_new_tokens,
        batch_size=a.batch_size,
        threads=a.threads,
        verbose=a.verbose,
    )
    cells = res["cells"]
    best = max(cells.values(), key=lambda c: c["mean"])
    means = sorted(c["mean"] for c in cells.values())
    print(
        f"landscape {res['size']} seed {res['seed']}: {len(cells)} cells, {res['total_s']} s "
        f"({res['total_s'] / len(cells):.1f} s per evaluation)"
    )
    print(
        f"corners: a1=1,a2=0 (VLM) {cells[cell_key(1.0, 0.0)]['mean']:.3f}; a1=0,a2=1 (LLM's LM) "
        f"{cells[cell_key(0.0, 1.0)]['mean']:.3f}; best a1={best['vlm_weight']} a2={best['llm_weight']} "
        f"{best['mean']:.3f}; median {means[len(means) // 2]:.3f}; worst {means[0]:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
