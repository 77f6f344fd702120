"""Toy-world sizes: steps of every training stage and sizes of every benchmark set (no heavy imports,
so the CLI can list them without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToySize:
    """Steps of every stage and sizes of every set; ``full`` and ``ci`` run the same code."""

    base_steps: int
    llm_steps: int
    vision_steps: int
    align_steps: int
    vlm_steps: int
    pool_images: int
    train_triples: int
    vista_perception: int
    vista_chain: int
    mathv_text: int
    mathv_image: int
    proxy_n: int
    batch: int = 128


SIZES: dict[str, ToySize] = {
    "full": ToySize(1300, 400, 300, 300, 400, 20000, 600, 500, 500, 400, 600, 200),
    # tests and the search engineer's tests: the same stages, shorter; worlds of this size are not accurate
    "ci": ToySize(120, 50, 50, 40, 60, 1500, 600, 60, 60, 50, 70, 50, batch=64),
    # determinism and plumbing checks only (seconds)
    "smoke": ToySize(6, 4, 4, 4, 4, 200, 600, 12, 12, 10, 14, 10, batch=16),
}
