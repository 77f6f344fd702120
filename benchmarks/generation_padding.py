"""Decode steps wasted on finished rows: HF ``generate`` keeps a row that ended in the batch until the last row
ends. Measured on the toy world's proxy with the toy study's settings, for two ways of batching, side by side:

* ``prompt``: batches of similar prompt length (what every call does first);
* ``pool``: continuous batching at segment boundaries — S tokens at a time for a pool of ``batch_size``
  rows; after each segment the rows that ended leave, the next items take their places, and the rows that
  go on are encoded afresh from prompt + tokens so far (``Generator(segment_tokens=S)``).

Every arm scores the same recipes in the same order on one resident model (as a worker does), one chunk of
each dataset per call; the arms alternate within each call, so the machine's drift falls on all of them.
Printed per arm: wasted / total decode row-steps (a row-step = one row in one decode step), decode steps
(forward passes of the batch: what a memory-bound GPU pays for, whatever the rows), re-encoded tokens (the
pool's cost), prompt padding, and wall time relative to ``prompt``. The run fails if any arm's
texts differ from the ``prompt`` arm's (greedy, float32: batching must not change an answer).

    .venv/bin/python benchmarks/generation_padding.py [--recipes 4] [--segment 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES = [
    {"method": "linear", "weight": 0.0},
    {"method": "task_arithmetic", "vlm_weight": 0.5, "llm_weight": 1.0},
    {"method": "linear", "weight": 1.0},
    {"method": "linear", "weight": 0.5},
    {"method": "task_arithmetic", "vlm_weight": 0.75, "llm_weight": 0.75},
    {"method": "ties", "vlm_weight": 1.0, "llm_weight": 1.0, "density": 0.5},
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="toy world seed (built once, then cached)")
    p.add_argument("--recipes", type=int, default=4, help=f"how many of the {len(RECIPES)} recipes to score")
    p.add_argument("--segment", type=int, default=4, help="segment length S of the 'pool' arm")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch

    from merge_core import Recipe, ResidentMerger
    from objectives.datasets import load_dataset
    from objectives.generation import GenerationConfig, Generator
    from objectives.processing import load_processor
    from objectives.scorer import plan_steps
    from objectives.toy import build_toy_world
    from search.study.spec import load_spec

    torch.set_num_threads(a.threads)
    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "toy.toml")
    obj = spec.objectives
    world = build_toy_world(a.seed, size="full")
    datasets = {name: load_dataset(name, root=world.data_dir) for name in world.proxy_datasets}
    merger = ResidentMerger(str(world.vlm), str(world.llm), str(world.base))
    processor = load_processor(world.vlm)
    config = GenerationConfig(max_new_tokens=obj.generation["max_new_tokens"], batch_size=obj.batch_size)
    dtype = next(merger.model.parameters()).dtype
    arms = {
        "prompt": Generator(processor, config, cache_dtype=dtype),
        "pool": Generator(processor, config, cache_dtype=dtype, segment_tokens=a.segment),
    }
    seconds = dict.fromkeys(arms, 0.0)
    steps = plan_steps({n: [it.index for it in d.items] for n, d in datasets.items()}, obj.chunk_size)
    by_index = {n: d.by_index() for n, d in datasets.items()}
    print(
        f"toy world seed {a.seed}; {sum(len(d.items) for d in datasets.values())} proxy items in {len(steps)} "
        f"steps; batch_size {config.batch_size}, max_new_tokens {config.max_new_tokens}; "
        f"{a.recipes} recipes; pool segments of {a.segment} tokens"
    )
    calls = 0
    for fields in RECIPES[: a.recipes]:
        merger.apply(Recipe.from_dict({"vlm": str(world.vlm), "llm": str(world.llm), "base": str(world.base),
                                       **fields}))  # fmt: skip
        for step in steps:
            for chunk in step:
                items = [by_index[chunk.dataset][i] for i in chunk.indices]
                names = list(arms) if calls % 2 == 0 else list(reversed(arms))
                texts = {}
                for name in names:
                    t0 = time.perf_counter()
                    texts[name] = arms[name].generate(merger.model, items, chunk.dataset)
                    seconds[name] += time.perf_counter() - t0
                calls += 1
                for name, got in texts.items():
                    if got != texts["prompt"]:
                        bad = next(
                            i for i, (x, y) in enumerate(zip(got, texts["prompt"], strict=True)) if x != y
                        )
                        print(f"MISMATCH: arm {name}, {chunk.dataset} item {items[bad].index}: "
                              f"{got[bad]!r} != {texts['prompt'][bad]!r}")  # fmt: skip
                        return 1
    print(f"{'arm':<10} {'wasted/total row-steps':>26} {'share':>7} {'decode steps':>13} {'re-encoded':>11} {'prompt pad':>11} {'time':>8} {'vs prompt':>10}")  # fmt: skip
    for name, gen in arms.items():
        s = gen.stats
        print(
            f"{name:<10} {s.wasted_row_steps:>12} / {s.row_steps:<11} {s.wasted_fraction:>7.1%} "
            f"{s.decode_steps:>13} {s.reencoded_tokens:>11} {s.prompt_pad_tokens / max(1, s.prompt_tokens):>11.1%} "
            f"{seconds[name]:>7.1f}s {seconds[name] / seconds['prompt']:>9.2f}x"
        )
    print("texts identical across arms: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
