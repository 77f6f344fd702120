"""merge_core: recipes, VLM <-> LLM tensor maps, merge methods, streamed and in-memory merging.

Public names (see docs/interfaces.md): ``Recipe``, ``load_recipe``, ``merge_to_disk``, ``ResidentMerger``,
``inspect_models``, ``InspectReport`` and the errors.  Heavy modules (torch, transformers) are imported on
first use so that ``from merge_core import Recipe`` stays cheap for the CLI and the search coordinator.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from merge_core.errors import ArchitectureError, MergesearchError, ModelFilesError, RecipeError
from merge_core.recipe import SCHEMA, Recipe, Schedule, load_recipe

if TYPE_CHECKING:
    from merge_core.inspect import InspectReport, inspect_models
    from merge_core.resident import ResidentMerger
    from merge_core.stream import merge_to_disk

_LAZY = {
    "merge_to_disk": "merge_core.stream",
    "ResidentMerger": "merge_core.resident",
    "inspect_models": "merge_core.inspect",
    "InspectReport": "merge_core.inspect",
}

__all__ = [
    "SCHEMA",
    "ArchitectureError",
    "InspectReport",
    "MergesearchError",
    "ModelFilesError",
    "Recipe",
    "RecipeError",
    "ResidentMerger",
    "Schedule",
    "inspect_models",
    "load_recipe",
    "merge_to_disk",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'merge_core' has no attribute {name!r}")
