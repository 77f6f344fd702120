"""In-memory merging for the search's hot path: load once, apply many recipes in place, restore.

:class:`ResidentMerger` loads the VLM onto a device and keeps, on that same device and in the model's
dtype, a pristine copy of every language-model parameter plus the LLM's (and base's) partner tensors.
``apply(recipe)`` walks the same :class:`~merge_core.plan.Plan` as the streamed merge and calls the same
method functions with the live parameter as ``out`` — a linear merge is one ``torch.lerp(..., out=param)``
per tensor, restoring and merging in a single pass — so the weights equal ``merge_to_disk`` of the same
recipe bit for bit (when the dtypes agree).  Tensors the recipe leaves alone are restored by ``copy_`` only
if an earlier recipe changed them.  No disk I/O per trial.

Memory on the device: the model plus three copies of its language model (pristine, LLM, base) — two
without ``base``, which suffices for ``linear`` / ``layer_swap`` searches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from merge_core.architectures import classify_vlm
from merge_core.errors import ArchitectureError, RecipeError
from merge_core.io import DTYPE_NAMES, ModelFiles, resolve_model_path
from merge_core.methods import merge_tensor
from merge_core.plan import Plan, build_plan, output_dtype
from merge_core.recipe import Recipe
from merge_core.tensor_map import preflight


@dataclass
class _Slot:
    param: torch.Tensor
    pristine: torch.Tensor
    llm: torch.Tensor
    base: torch.Tensor | None


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise RecipeError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[dtype]


class ResidentMerger:
    """A VLM resident on ``device`` into which recipes are merged in place (see module docstring)."""

    def __init__(
        self,
        vlm: str,
        llm: str,
        base: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForImageTextToText

        self.files_vlm = ModelFiles(vlm, "vlm")
        self.files_llm = ModelFiles(llm, "llm")
        self.files_base = ModelFiles(base, "base") if base is not None else None
        self.tmap = preflight(self.files_vlm, self.files_llm, self.files_base)
        self.device = torch.device(device)
        self.dtype = _dtype(dtype) or output_dtype(Recipe(vlm=vlm, llm=llm), self.tmap)
        load_kw = {} if self.device.type == "cpu" else {"device_map": {"": str(self.device)}}
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.files_vlm.root, dtype=self.dtype, trust_remote_code=trust_remote_code, **load_kw
        )
        self.model.to(self.device).eval()
        self.model.requires_grad_(False)

        params = dict(self.model.named_parameters())  # tied weights appear once
        by_canon: dict[str, torch.Tensor] = {}
        for name, p in params.items():
            where = classify_vlm(self.tmap.arch, name)
            if where is not None and where.canonical is not None:
                by_canon[where.canonical] = p
        self._slots: dict[str, _Slot] = {}
        with torch.no_grad():
            for t in self.tmap.tensors:
                canon = t.where.canonical
                if canon is None:
                    continue
                p = by_canon.get(canon)
                if p is None:
                    raise ArchitectureError(
                        f"the loaded VLM has no parameter for {t.name!r} ({canon}); the in-memory names of "
                        f"{type(self.model).__name__} are missing from the {self.tmap.arch.family} table"
                    )
                if tuple(p.shape) != t.spec.shape:
                    raise ArchitectureError(
                        f"loaded parameter for {t.name!r} has shape {list(p.shape)}, file {list(t.spec.shape)}"
                    )
                llm_t = self.files_llm.get(t.llm_name).to(self.device, self.dtype)  # type: ignore[arg-type]
                base_t = None
                if self.files_base is not None and t.base_name is not None:
                    base_t = self.files_base.get(t.base_name).to(self.device, self.dtype)
                self._slots[canon] = _Slot(p, p.detach().clone(), llm_t, base_t)
        self.files_llm.close()
        if self.files_base is not None:
            self.files_base.close()
        self._dirty: set[str] = set()
        self._plans: dict[str, Plan] = {}

    # ---- recipe checks ------------------------------------------------------------------------------
    def _check_sources(self, recipe: Recipe) -> None:
        pairs = [("vlm", recipe.vlm, self.files_vlm), ("llm", recipe.llm, self.files_llm)]
        if recipe.is_task_vector:
            if self.files_base is None:
                raise RecipeError(
                    f"recipe {recipe.id} (method {recipe.method}) needs a base model; this ResidentMerger was built without base="
                )
            pairs.append(("base", recipe.base, self.files_base))
        for field, path, files in pairs:
            if resolve_model_path(path, field) != files.root:  # type: ignore[arg-type]
                raise RecipeError(
                    f"recipe field {field!r} is {path!r} but this ResidentMerger holds {files.root}"
                )
        if recipe.dtype is not None and DTYPE_NAMES[recipe.dtype] != self.dtype:
            raise RecipeError(
                f"recipe field 'dtype' is {recipe.dtype!r} but the resident model is {self.dtype}; make a ResidentMerger with that dtype"
            )

    def plan(self, recipe: Recipe) -> Plan:
        """The (cached) plan of ``recipe`` for the resident model's dtype."""
        plan = self._plans.get(recipe.id)
        if plan is None:
            self._check_sources(recipe)
            plan = build_plan(recipe, self.tmap, dtype=self.dtype)
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[recipe.id] = plan
        return plan

    # ---- hot path -----------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, recipe: Recipe) -> None:
        """Restore the pristine VLM weights and merge ``recipe`` into the live parameters (one pass)."""
        plan = self.plan(recipe)
        for entry in plan.entries:
            canon = entry.canonical
            if canon is None:
                continue
            slot = self._slots[canon]
            if entry.op is None:
                if canon in self._dirty:
                    slot.param.copy_(slot.pristine)
                    self._dirty.discard(canon)
                continue
            self._dirty.add(canon)  # before the merge: a failure half-way must still be restorable
            merge_tensor(entry.op, slot.pristine, slot.llm, slot.base, out=slot.param)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the pristine VLM weights back."""
        for canon in sorted(self._dirty):
            slot = self._slots[canon]
            slot.param.copy_(slot.pristine)
        self._dirty.clear()

    @property
    def vlm_path(self) -> str:
        """The resolved VLM directory (for loading its processor)."""
        return str(self.files_vlm.root)

    def resident_bytes(self) -> int:
        """Bytes held besides the model: pristine, LLM and base tensors."""
        total = 0
        for s in self._slots.values():
            for t in (s.pristine, s.llm, s.base):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total
