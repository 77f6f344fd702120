"""Scoring engines: who generates the proxy's responses, and how a recipe's weights reach it.

An :class:`Engine` generates greedy completions for prepared items with the study's generation settings
(``objectives.generation.GenerationConfig``) and accepts new weights (``apply(recipe)``). The scorer
(``objectives.scorer.ProxyScorer(..., engine=...)``), its records and its chunked steps are the same for
every engine.

- ``hf`` (:mod:`.hf`): transformers ``generate`` on the resident merger's live model (merged in place).
- ``vllm`` (:mod:`.vllm_engine`): ``vllm.LLM`` in the worker; a recipe's changed tensors go in through
  vLLM's in-place reload (``merge_core.updates``).

Which one runs: ``[objectives] engine`` (:mod:`.choice`: ``hf`` | ``vllm`` | ``auto``); the families vLLM
serves are a table (:mod:`.families`). This package imports no torch or vLLM until an engine is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .choice import ENGINES, EngineError, VllmOptions, choose_engine, parse_engine, vllm_installed

if TYPE_CHECKING:
    from merge_core import Recipe
    from objectives.datasets import Item
    from objectives.generation import Generation, GenerationConfig

__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "VllmOptions",
    "choose_engine",
    "make_engine",
    "parse_engine",
    "vllm_installed",
]


class Engine(Protocol):
    """What the scorer and the worker call (see the module docstring)."""

    name: str

    def prepare(self, items: Sequence[Item], dataset_name: str | None = None) -> None:
        """Process ``items`` now, so a bad item fails before any generation."""

    def start(self) -> None:
        """Load whatever is left to load (idempotent)."""

    def generate(self, items: Sequence[Item], dataset_name: str | None = None) -> list[str]:
        """Greedy responses of ``items``, in their order."""
        ...

    def generate_results(self, items: Sequence[Item], dataset_name: str | None = None) -> list[Generation]:
        """:class:`~objectives.generation.Generation` per item, in order: the response, or why an item could
        not be generated (out of memory even alone), which the scorer records as a scored failure."""
        ...

    def apply(self, recipe: Recipe) -> None:
        """Hold the weights of ``recipe`` (``merge_to_disk(recipe)``'s) from now on."""


def make_engine(
    engine: str,
    *,
    vlm: str,
    llm: str,
    base: str | None,
    processor: Any,
    generation: GenerationConfig,
    device: str = "cpu",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    vllm_options: VllmOptions | dict[str, Any] | None = None,
) -> Engine:
    """Build the engine ``engine`` (``hf`` / ``vllm`` / ``auto``, resolved by :func:`choose_engine`)."""
    from objectives.generation import Generator

    chosen = choose_engine(engine, vlm, device)
    if chosen == "hf":
        from merge_core import ResidentMerger

        from .hf import HFEngine

        merger = ResidentMerger(
            vlm, llm, base, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        generator = Generator(processor, generation, cache_dtype=merger.dtype)
        return HFEngine(merger.model, generator, merger)
    from .vllm_engine import VLLMEngine

    options = VllmOptions(**vllm_options) if isinstance(vllm_options, dict) else vllm_options
    generator = Generator(processor, generation)  # prompts and their lengths; vLLM processes the images
    return VLLMEngine(
        vlm, llm, base, generator, device=device, dtype=dtype, options=options,
        trust_remote_code=trust_remote_code,
    )  # fmt: skip
