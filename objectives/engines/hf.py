"""The ``hf`` engine: transformers ``generate`` on the live model, the resident merger's weights.

``apply(recipe)`` merges in place (``merge_core.ResidentMerger.apply``): the model the generator reads is
the merged one, with no copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from merge_core import Recipe
    from objectives.datasets import Item
    from objectives.generation import Generation, Generator


class HFEngine:
    """``objectives.generation.Generator`` on ``model``; ``merger`` (optional) takes the recipes."""

    name = "hf"

    def __init__(self, model: torch.nn.Module, generator: Generator, merger: Any = None) -> None:
        self.model = model
        self.generator = generator
        self.merger = merger

    def prepare(self, items: Sequence[Item], dataset_name: str | None = None) -> None:
        """Run the processor over ``items`` now (cached), so bad items fail before generation."""
        self.generator.prepare(items, dataset_name)

    def start(self) -> None:
        """Nothing to start: the model is loaded."""

    def generate(self, items: Sequence[Item], dataset_name: str | None = None) -> list[str]:
        """Greedy responses of ``items``, in order."""
        return self.generator.generate(self.model, items, dataset_name)

    def generate_results(self, items: Sequence[Item], dataset_name: str | None = None) -> list[Generation]:
        """Per item, the response or its out-of-memory failure (the generator splits batches first)."""
        return self.generator.generate_results(self.model, items, dataset_name)

    def apply(self, recipe: Recipe) -> None:
        """Merge ``recipe`` into the live weights."""
        if self.merger is None:
            raise RuntimeError("this HFEngine was built without a merger; it scores its model as it is")
        self.merger.apply(recipe)
