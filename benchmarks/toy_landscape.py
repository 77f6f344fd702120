"""The toy world's merge landscape: is there something real for a search to find, and can a proxy find it?

For each seed: build (or reuse) the full toy world, hold the VLM / LLM / base in merge_core's ResidentMerger,
and score a fixed grid of recipes with objectives' ProxyScorer on the full MathVista_TOY and MathVision_TOY
sets (greedy, chat template, generic answer extraction). Prints, per seed:

* the endpoints: VLM alone (linear weight 0) and the LLM's LM inside the VLM (linear weight 1);
* the best grid recipe and its margin over the better endpoint on the mean of the two full sets, with the
  paired standard error (per-item differences), and the same margin when the recipe is chosen on one half
  of the items and scored on the other (no selection bias);
* Spearman's rank correlation over the grid between the 200-item proxy subsets (the proxy TSVs the toy
  world ships, made by objectives.proxy) and the full sets;
* the share of random 200-item-per-set proxies whose best recipe is within 2 points of the full-set best.

Targets (issue #5): margin >= 5 points, Spearman >= 0.9, proxy pick within 2 points in >= 90% of draws.
Proxy scores are the full run's records restricted to the proxy items (same greedy outputs).
Per-recipe results go to ``--out`` (JSON, one file per seed) for the search benchmarks to reuse.

    .venv/bin/python benchmarks/toy_landscape.py --seeds 0 1 2 [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MARGIN_TARGET, SPEARMAN_TARGET, PICK_TARGET = 5.0, 0.9, 0.90


def grid(vlm: str, llm: str, base: str) -> list[tuple[str, dict[str, Any]]]:
    """The fixed recipe grid: (label, recipe fields). The first two are the endpoints."""
    m = {"vlm": vlm, "llm": llm, "base": base}
    rows: list[tuple[str, dict[str, Any]]] = [
        ("VLM alone (linear w=0)", {"method": "linear", "weight": 0.0}),
        ("LLM's LM (linear w=1)", {"method": "linear", "weight": 1.0}),
    ]
    for w in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        rows.append((f"linear w={w}", {"method": "linear", "weight": w}))
    for a1 in (0.5, 0.75, 1.0):
        for a2 in (0.5, 0.75, 1.0):
            rows.append(
                (
                    f"task_arithmetic a1={a1} a2={a2}",
                    {"method": "task_arithmetic", "vlm_weight": a1, "llm_weight": a2},
                )
            )
    rows += [
        (
            "task_arithmetic a1=0.25 a2=1.0",
            {"method": "task_arithmetic", "vlm_weight": 0.25, "llm_weight": 1.0},
        ),
        (
            "task_arithmetic a1=0.5 a2=1.25",
            {"method": "task_arithmetic", "vlm_weight": 0.5, "llm_weight": 1.25},
        ),
        ("ties d=0.5 (1, 1)", {"method": "ties", "vlm_weight": 1.0, "llm_weight": 1.0, "density": 0.5}),
        ("ties d=0.8 (0.5, 1)", {"method": "ties", "vlm_weight": 0.5, "llm_weight": 1.0, "density": 0.8}),
        (
            "dare_linear d=0.7 (0.5, 1)",
            {"method": "dare_linear", "vlm_weight": 0.5, "llm_weight": 1.0, "density": 0.7},
        ),
        (
            "dare_ties d=0.7 (1, 1)",
            {"method": "dare_ties", "vlm_weight": 1.0, "llm_weight": 1.0, "density": 0.7},
        ),
        ("attention-only linear w=0.3", {"method": "linear", "weight": 0.3, "components": ["attention"]}),
        ("attention-only linear w=0.5", {"method": "linear", "weight": 0.5, "components": ["attention"]}),
        ("attention-only linear w=0.8", {"method": "linear", "weight": 0.8, "components": ["attention"]}),
        ("mlp-only linear w=0.5", {"method": "linear", "weight": 0.5, "components": ["mlp"]}),
        (
            "linear w=0.9 linear schedule",
            {"method": "linear", "weight": 0.9, "schedule": {"shape": "linear"}},
        ),
        (
            "linear w=0.9 loglinear schedule",
            {"method": "linear", "weight": 0.9, "schedule": {"shape": "loglinear"}},
        ),
        (
            "task_arithmetic (0.5, 1) linear schedule",
            {
                "method": "task_arithmetic",
                "vlm_weight": 0.5,
                "llm_weight": 1.0,
                "schedule": {"shape": "linear"},
            },
        ),
        (
            "layer_swap w=0.8 from layer 1",
            {"method": "layer_swap", "weight": 0.8, "schedule": {"shape": "step", "start": 1}},
        ),
        (
            "layer_swap w=0.9 from layer 2",
            {"method": "layer_swap", "weight": 0.9, "schedule": {"shape": "step", "start": 2}},
        ),
    ]
    return [(label, {**m, **fields}) for label, fields in rows]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the average ranks (ties share their mean rank)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def mean_score(correct: dict[str, np.ndarray], mask: dict[str, np.ndarray] | None = None) -> float:
    """Mean over datasets of each dataset's accuracy (optionally over the masked items only), in points."""
    accs = [c[mask[n]].mean() if mask is not None else c.mean() for n, c in correct.items()]
    return 100.0 * float(np.mean(accs))


def paired_se(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """SE (points) of mean_score(a) - mean_score(b) from per-item differences, datasets independent."""
    var = sum(np.var(a[n].astype(float) - b[n].astype(float), ddof=1) / len(a[n]) for n in a)
    return 100.0 * float(np.sqrt(var)) / len(a)


def evaluate_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Build/reuse the world, score the grid, compute the landscape statistics for one seed."""
    import torch

    from merge_core import Recipe, ResidentMerger
    from objectives.datasets import load_dataset
    from objectives.generation import GenerationConfig
    from objectives.processing import load_processor
    from objectives.scorer import ProxyScorer
    from objectives.toy import build_toy_world

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    world = build_toy_world(seed, size=args.size, progress=False)
    build_s = time.perf_counter() - t0
    full = [load_dataset(name, root=world.data_dir) for name in world.datasets]
    proxies = [load_dataset(name, root=world.data_dir) for name in world.proxy_datasets]
    merger = ResidentMerger(str(world.vlm), str(world.llm), str(world.base))
    processor = load_processor(world.vlm)
    scorer = ProxyScorer(
        merger.model,
        processor,
        full,
        chunk_size=10_000,
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
    )
    order = {d.name: [it.index for it in d.items] for d in full}
    proxy_mask = {
        d.name: np.isin(order[d.name], [it.index for it in p.items])
        for d, p in zip(full, proxies, strict=True)
    }
    results = []
    correct: list[dict[str, np.ndarray]] = []
    for label, fields in grid(str(world.vlm), str(world.llm), str(world.base)):
        recipe = Recipe.from_dict(fields)
        t1 = time.perf_counter()
        merger.apply(recipe)
        records = scorer.score().records
        by = {(r.dataset, r.index): r.correct for r in records}
        c = {name: np.array([by[(name, i)] for i in idx], dtype=bool) for name, idx in order.items()}
        correct.append(c)
        row = {
            "label": label,
            "recipe": recipe.to_dict(),
            "recipe_id": recipe.id,
            "full": {n: round(100 * float(v.mean()), 2) for n, v in c.items()},
            "full_mean": round(mean_score(c), 2),
            "proxy": {n: round(100 * float(v[proxy_mask[n]].mean()), 2) for n, v in c.items()},
            "proxy_mean": round(mean_score(c, proxy_mask), 2),
            "per_category": _per_category(records),
            "correct_bits": {n: "".join("1" if x else "0" for x in v) for n, v in c.items()},
            "eval_s": round(time.perf_counter() - t1, 1),
        }
        results.append(row)
        if args.verbose:
            print(
                f"  seed {seed} {label:42s} full {row['full_mean']:5.1f}  proxy {row['proxy_mean']:5.1f}  ({row['eval_s']} s)",
                flush=True,
            )
    merger.restore()
    return {"seed": seed, "world": str(world.root), "build_s": round(build_s, 1), "item_order": order,
            "proxy_datasets": list(world.proxy_datasets), **_statistics(results, correct, proxy_mask, seed, args)}  # fmt: skip


def _per_category(records: list[Any]) -> dict[str, dict[str, float]]:
    tally: dict[str, list[int]] = {}
    for r in records:
        t = tally.setdefault(f"{r.dataset}/{r.category}", [0, 0])
        t[0] += 1
        t[1] += int(r.correct)
    return {k: round(100 * c / n, 2) for k, (n, c) in sorted(tally.items())}


def _statistics(results: list[dict], correct: list[dict[str, np.ndarray]], proxy_mask: dict[str, np.ndarray],
                seed: int, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    full = np.array([r["full_mean"] for r in results])
    proxy = np.array([r["proxy_mean"] for r in results])
    vlm_i, llm_i = 0, 1
    better = vlm_i if full[vlm_i] >= full[llm_i] else llm_i
    best = int(np.argmax(full))
    margin = float(full[best] - full[better])
    se = paired_se(correct[best], correct[better])
    # choose on one half of the items, score on the other half (both ways): a margin free of selection bias
    rng = np.random.default_rng([seed, 11])
    halves = {n: rng.permutation(len(v)) % 2 == 0 for n, v in correct[0].items()}
    split = []
    for side in (True, False):
        pick_mask = {n: h == side for n, h in halves.items()}
        held = {n: h != side for n, h in halves.items()}
        scores = np.array([mean_score(c, pick_mask) for c in correct])
        pick = int(np.argmax(scores))
        split.append(
            mean_score(correct[pick], held)
            - max(mean_score(correct[vlm_i], held), mean_score(correct[llm_i], held))
        )
    # random proxies of the same size as the shipped ones (per dataset), drawn from the full sets
    n_per = {n: int(m.sum()) for n, m in proxy_mask.items()}
    hits = 0
    for _ in range(args.draws):
        mask = {}
        for n, v in correct[0].items():
            m = np.zeros(len(v), dtype=bool)
            m[rng.choice(len(v), size=n_per[n], replace=False)] = True
            mask[n] = m
        pick = int(np.argmax([mean_score(c, mask) for c in correct]))
        hits += int(full[pick] >= full[best] - 2.0)
    return {
        "results": results,
        "endpoints": {"vlm": float(full[vlm_i]), "llm": float(full[llm_i])},
        "best": {"label": results[best]["label"], "recipe_id": results[best]["recipe_id"], "full_mean": float(full[best])},
        "margin": margin,
        "margin_paired_se": se,
        "split_half_margin": float(np.mean(split)),
        "spearman_proxy_full": spearman(proxy, full),
        "proxy_pick_within_2": hits / args.draws,
        "official_proxy_pick": {"label": results[int(np.argmax(proxy))]["label"], "full_mean": float(full[int(np.argmax(proxy))])},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--size", default="full", help="toy world size (full for the targets; ci for a smoke run)"
    )
    parser.add_argument(
        "--out", default="benchmarks/results", help="directory for toy_landscape_seed<S>.json"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--draws", type=int, default=1000, help="random proxies drawn per seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="print every recipe as it is scored")
    parser.add_argument("--reuse", action="store_true", help="read a seed's results from --out when present")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for seed in args.seeds:
        path = out / f"toy_landscape_seed{seed}.json"
        if args.reuse and path.is_file():
            res = json.loads(path.read_text())
            if res.get("size") != args.size or len(res.get("results", [])) != len(grid("v", "l", "b")):
                sys.exit(f"{path}: results of another size or grid; rerun without --reuse")
        else:
            t0 = time.perf_counter()
            res = evaluate_seed(seed, args)
            res["size"] = args.size
            res["total_s"] = round(time.perf_counter() - t0, 1)
            tmp = out / f".toy_landscape_seed{seed}.json.tmp"
            tmp.write_text(json.dumps(res, indent=1) + "\n")
            tmp.replace(path)
        summary.append(res)
        print(
            f"seed {seed}: VLM alone {res['endpoints']['vlm']:.1f} | LLM's LM {res['endpoints']['llm']:.1f} | "
            f"best {res['best']['label']} {res['best']['full_mean']:.1f} | margin {res['margin']:+.1f} "
            f"(paired SE {res['margin_paired_se']:.1f}; split-half {res['split_half_margin']:+.1f}) | "
            f"Spearman(proxy, full) {res['spearman_proxy_full']:.3f} | proxy pick within 2 pts "
            f"{100 * res['proxy_pick_within_2']:.0f}% | shipped proxy picks {res['official_proxy_pick']['label']} "
            f"({res['official_proxy_pick']['full_mean']:.1f}) | {len(res['results'])} recipes, {res['total_s']:.0f} s",
            flush=True,
        )
    ok = all(
        r["margin"] >= MARGIN_TARGET
        and r["spearman_proxy_full"] >= SPEARMAN_TARGET
        and r["proxy_pick_within_2"] >= PICK_TARGET
        for r in summary
    )
    print(
        f"targets (margin >= {MARGIN_TARGET}, Spearman >= {SPEARMAN_TARGET}, pick within 2 pts >= {PICK_TARGET:.0%}) "
        f"on seeds {args.seeds}: {'MET' if ok else 'NOT MET'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
