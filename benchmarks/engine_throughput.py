"""The proxy on both engines in one run: items/s, tokens/s, per-trial weight update vs in-place apply.

Run in .venv-vllm (``make test-vllm`` creates it)::

    .venv-vllm/bin/python benchmarks/engine_throughput.py [--items 48] [--tokens 24] [--rounds 3]

CPU FIGURES (this is a CPU run; a GPU changes the ratio, see docs/vllm.md). The world is tests/vllm/world.py's
(the toy world's vocabulary, images and benchmark rows with head_dim 32, which vLLM's CPU attention accepts;
the toy world's head_dim 24 it rejects), untrained, so every response runs to ``--tokens``. Both engines get
one torch thread, the same items, the same recipes and the same generation settings (``hf``: static batches
of ``--batch``; ``vllm``: continuous batching). Each round scores every recipe on both engines, the engine
order alternating between rounds (the machine's speed drifts); ratios are pooled over rounds, and each
round's ratio is printed beside. Before timing, both engines' responses are checked equal (float32).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES = [
    dict(method="linear", weight=0.5),
    dict(method="ties", vlm_weight=1.0, llm_weight=1.2, density=0.5, components=["attention"]),
    dict(method="task_arithmetic", vlm_weight=1.0, llm_weight=0.7),
    dict(method="linear", weight=0.0),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=48, help="rows per dataset kind (two datasets)")
    ap.add_argument("--tokens", type=int, default=24, help="max_new_tokens")
    ap.add_argument("--batch", type=int, default=8, help="hf batch size")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    t_cmd = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from merge_core import Recipe
    from objectives.datasets import load_dataset
    from objectives.engines import VllmOptions, make_engine
    from objectives.generation import GenerationConfig
    from objectives.processing import load_processor
    from tests.vllm.world import build_world

    tmp = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    world = build_world(tmp / "world", items=args.items)
    items = [it for name in world.datasets for it in load_dataset(name, root=world.data_dir).items]
    processor = load_processor(world.vlm)
    gen = GenerationConfig(max_new_tokens=args.tokens, batch_size=args.batch)
    engines, start_s = {}, {}
    for name in ("hf", "vllm"):
        t0 = time.perf_counter()
        engine = make_engine(
            name, vlm=str(world.vlm), llm=str(world.llm), base=str(world.base), processor=processor,
            generation=gen, dtype="float32", vllm_options=VllmOptions(kv_cache_mb=64),
        )  # fmt: skip
        engine.prepare(items)
        engine.start()
        engines[name], start_s[name] = engine, time.perf_counter() - t0
    recipes = [
        Recipe.from_dict({"vlm": str(world.vlm), "llm": str(world.llm), "base": str(world.base), **r})
        for r in RECIPES
    ]
    tokenizer = processor.tokenizer
    # parity first (float32): the same responses, so the same tokens, on both engines
    engines["hf"].apply(recipes[0])
    engines["vllm"].apply(recipes[0])
    same = engines["hf"].generate(items) == engines["vllm"].generate(items)

    totals = {n: {"gen_s": 0.0, "apply_s": 0.0, "items": 0, "tokens": 0} for n in engines}
    per_round: list[tuple[float, float]] = []
    update_split = {"merge_s": 0.0, "load_s": 0.0, "tensors": 0.0}
    for rnd in range(args.rounds):
        order = ["hf", "vllm"] if rnd % 2 == 0 else ["vllm", "hf"]
        this = {n: {"gen_s": 0.0, "apply_s": 0.0} for n in engines}
        for recipe in recipes:
            for name in order:
                engine = engines[name]
                t0 = time.perf_counter()
                engine.apply(recipe)
                t1 = time.perf_counter()
                responses = engine.generate(items)
                t2 = time.perf_counter()
                this[name]["apply_s"] += t1 - t0
                this[name]["gen_s"] += t2 - t1
                totals[name]["items"] += len(items)
                totals[name]["tokens"] += sum(len(tokenizer(r)["input_ids"]) for r in responses)
                if name == "vllm":
                    for k in update_split:
                        update_split[k] += engine.last_update.get(k, 0.0)
        for name in engines:
            for k in ("gen_s", "apply_s"):
                totals[name][k] += this[name][k]
        per_round.append(
            (
                this["hf"]["gen_s"] / this["vllm"]["gen_s"],
                this["vllm"]["apply_s"] / max(this["hf"]["apply_s"], 1e-9),
            )
        )
    trials = args.rounds * len(recipes)
    print("CPU figures (this machine, 1 torch thread each; a GPU estimate is in docs/vllm.md)")
    print(
        f"world: {len(items)} items, max_new_tokens {args.tokens}, hf batch {args.batch}; {trials} trials per engine"
    )
    print(f"responses equal (float32): {same}")
    for name, t in totals.items():
        print(
            f"{name:5s} start {start_s[name]:6.2f} s | {t['items'] / t['gen_s']:7.1f} items/s "
            f"{t['tokens'] / t['gen_s']:8.0f} tokens/s | per-trial apply {1000 * t['apply_s'] / trials:7.1f} ms"
        )
    n = len(recipes) * args.rounds
    print(
        f"vllm update per trial: merge {1000 * update_split['merge_s'] / n:.1f} ms + load "
        f"{1000 * update_split['load_s'] / n:.1f} ms ({update_split['tensors'] / n:.0f} tensors)"
    )
    hf, vl = totals["hf"], totals["vllm"]
    print(f"ratio vllm/hf items/s (pooled): {hf['gen_s'] / vl['gen_s']:.2f}x   per round: "
          + ", ".join(f"{g:.2f}x" for g, _ in per_round))  # fmt: skip
    print(f"ratio vllm update / hf in-place apply time (pooled): {vl['apply_s'] / hf['apply_s']:.2f}x   per round: "
          + ", ".join(f"{a:.2f}x" for _, a in per_round))  # fmt: skip
    trial_hf = (hf["gen_s"] + hf["apply_s"]) / trials
    trial_vl = (vl["gen_s"] + vl["apply_s"]) / trials
    print(
        f"per trial (apply + generate): hf {trial_hf:.2f} s, vllm {trial_vl:.2f} s, ratio {trial_hf / trial_vl:.2f}x"
    )
    print(f"whole command: {time.perf_counter() - t_cmd:.1f} s")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
