"""The plans an in-memory merge keeps (``ResidentMerger``, ``WeightUpdates``), each built once per recipe.

Both hold opened models (VLM, LLM, base) and a fixed dtype; a recipe can only be applied if it names those
models and that dtype.  :class:`PlanCache` checks that on a recipe's first use, builds its plan, and returns
the same plan for every later use of the recipe (a study re-applies its best recipes many times).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from merge_core.errors import RecipeError
from merge_core.io import DTYPE_NAMES, ModelFiles, resolve_model_path
from merge_core.plan import Plan, build_plan
from merge_core.recipe import Recipe
from merge_core.tensor_map import TensorMap

MAX_PLANS = 256  # a study's distinct recipes per worker rarely reach this; beyond it the cache starts over


class PlanCache:
    """``get(recipe)`` → the recipe's :class:`~merge_core.plan.Plan` in ``dtype``.

    On a miss the recipe's ``vlm`` / ``llm`` / ``base`` must resolve to the opened files' roots and its
    ``dtype`` (if set) must be ``dtype``, else :class:`RecipeError` naming the field; then ``check_plan``
    (the holder's own rule, e.g. every merged tensor is held) runs on the new plan.  ``holder`` names the
    object in messages ("this ResidentMerger", with ``holds`` its verb) and ``remedy`` says how to get one with another dtype."""

    def __init__(
        self,
        tmap: TensorMap,
        dtype: torch.dtype,
        files: dict[str, ModelFiles | None],
        *,
        holder: str,
        remedy: str,
        holds: str = "holds",
        check_plan: Callable[[Plan], None] | None = None,
    ) -> None:
        self.tmap, self.dtype, self.files = tmap, dtype, files
        self.holder, self.holds, self.remedy, self.check_plan = holder, holds, remedy, check_plan
        self._plans: dict[str, Plan] = {}

    def check_sources(self, recipe: Recipe) -> None:
        """The recipe names the models and dtype this holder was built on (see the class docstring)."""
        fields = ["vlm", "llm"]
        if recipe.is_task_vector:
            if self.files.get("base") is None:
                raise RecipeError(
                    f"recipe {recipe.id} (method {recipe.method}) needs a base model; {self.holder} has none "
                    "(give it base=)"
                )
            fields.append("base")
        for field in fields:
            path, files = getattr(recipe, field), self.files[field]
            assert files is not None
            if resolve_model_path(path, field) != files.root:
                raise RecipeError(f"recipe field {field!r} is {path!r} but {self.holder} {self.holds} {files.root}")
        if recipe.dtype is not None and DTYPE_NAMES[recipe.dtype] != self.dtype:
            raise RecipeError(
                f"recipe field 'dtype' is {recipe.dtype!r} but {self.holder} {self.holds} {self.dtype}; {self.remedy}"
            )

    def get(self, recipe: Recipe) -> Plan:
        """The (cached) plan of ``recipe``."""
        plan = self._plans.get(recipe.id)
        if plan is None:
            self.check_sources(recipe)
            plan = build_plan(recipe, self.tmap, dtype=self.dtype)
            if self.check_plan is not None:
                self.check_plan(plan)
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[recipe.id] = plan
        return plan
