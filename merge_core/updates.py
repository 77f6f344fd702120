"""Weight updates for an engine that holds its own copy of the VLM (vLLM): the tensors that changed.

``WeightUpdates(vlm, llm, base)`` opens the three checkpoints and preflights them as ``merge_to_disk``
does. ``updates(recipe)`` yields ``(name, tensor)`` for the language-model tensors whose value differs
between the recipe and what the engine holds now; ``name`` is the VLM file's own name for the tensor
(either naming scheme, as stored), the tensor is exactly what ``merge_to_disk(recipe)`` writes under that
name (same :func:`~merge_core.plan.build_plan`, same :func:`~merge_core.methods.merge_tensor`, same
dtype casts), so an engine loaded from the VLM that receives every update holds ``merge_to_disk``'s weights
bit for bit (merged on the same device).

What the engine holds is tracked per tensor as the :class:`~merge_core.plan.TensorOp` that produced it
(``None`` = the VLM's pristine tensor, which is what an engine loaded from the VLM starts with). A tensor is
sent when the recipe's op for it differs from the held op: an attention-only recipe after an attention-only
recipe sends the attention tensors only; the VLM alone after any recipe sends the pristine value of every
tensor that recipe changed. Vision and projector tensors are never merged, so never sent.

The held state advances as each tensor is yielded. A consumer that fails half-way must call
:meth:`WeightUpdates.invalidate`: the engine's weights are then unknown and the next recipe sends every
language-model tensor. Sources (the pristine VLM, LLM and base tensors) are read once, lazily, and kept on
``device`` in the output dtype, as :class:`~merge_core.resident.ResidentMerger` keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from merge_core.errors import RecipeError
from merge_core.io import DTYPE_NAMES, ModelFiles
from merge_core.methods import merge_tensor
from merge_core.plan import Plan, PlanEntry, TensorOp, output_dtype
from merge_core.plan_cache import PlanCache
from merge_core.recipe import Recipe
from merge_core.tensor_map import preflight

_UNKNOWN = TensorOp(method="<unknown>", compat="<unknown>")  # held value unknown: differs from every op


class WeightUpdates:
    """The per-recipe tensor updates of one (VLM, LLM, base) trio (see the module docstring)."""

    def __init__(
        self,
        vlm: str,
        llm: str,
        base: str | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.files_vlm = ModelFiles(vlm, "vlm")
        self.files_llm = ModelFiles(llm, "llm")
        self.files_base = ModelFiles(base, "base") if base is not None else None
        self.tmap = preflight(self.files_vlm, self.files_llm, self.files_base)
        if isinstance(dtype, str):
            if dtype not in DTYPE_NAMES:
                raise RecipeError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
            dtype = DTYPE_NAMES[dtype]
        self.dtype: torch.dtype = dtype or output_dtype(Recipe(vlm=vlm, llm=llm), self.tmap)
        self.device = torch.device(device)
        self._held: dict[str, TensorOp | None] = {
            t.name: None for t in self.tmap.tensors if t.where.canonical is not None
        }
        self._sources: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self._plans = PlanCache(
            self.tmap, self.dtype, {"vlm": self.files_vlm, "llm": self.files_llm, "base": self.files_base},
            holder="these WeightUpdates", holds="hold", remedy="open WeightUpdates with that dtype",
        )  # fmt: skip

    def plan(self, recipe: Recipe) -> Plan:
        """The (cached) plan of ``recipe`` in the engine's dtype (merge_core.plan_cache)."""
        return self._plans.get(recipe)

    def _read(self, files: ModelFiles, name: str) -> torch.Tensor:
        t = files.get(name).to(self.device)
        return t.to(self.dtype) if t.dtype.is_floating_point and t.dtype != self.dtype else t

    def _source(self, entry: PlanEntry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        src = entry.source
        cached = self._sources.get(src.name)
        if cached is None:
            base = None
            if self.files_base is not None and src.base_name is not None:
                base = self._read(self.files_base, src.base_name)
            cached = (
                self._read(self.files_vlm, src.name),
                self._read(self.files_llm, src.llm_name),  # type: ignore[arg-type]
                base,
            )
            self._sources[src.name] = cached
        return cached

    def _to_send(self, plan: Plan, module_of: Callable[[str], str] | None) -> set[str]:
        lm = [e for e in plan.entries if e.source.name in self._held]
        send = {e.source.name for e in lm if self._held[e.source.name] != e.op}
        if module_of is not None and send:
            modules = {module_of(n) for n in send}
            send |= {e.source.name for e in lm if module_of(e.source.name) in modules}
        return send

    def pending(self, recipe: Recipe, module_of: Callable[[str], str] | None = None) -> list[str]:
        """The names :meth:`updates` would send for ``recipe`` now, in plan order (nothing is computed)."""
        plan = self.plan(recipe)
        send = self._to_send(plan, module_of)
        return [e.source.name for e in plan.entries if e.source.name in send]

    @torch.no_grad()
    def updates(
        self, recipe: Recipe, module_of: Callable[[str], str] | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(VLM file name, tensor)`` for every tensor whose value changes; the tensors are fresh buffers.

        tensor = ``merge_tensor(op, vlm, llm, base)`` for a merged entry, the VLM's own tensor (cast to the
        output dtype) for an entry the recipe leaves alone — what ``merge_to_disk`` writes.
        ``module_of`` maps a name to the engine module that loads it: when one tensor of a module changes,
        every tensor of that module is sent (an engine that rebuilds a module from one update needs them all).
        """
        plan = self.plan(recipe)
        send = self._to_send(plan, module_of)
        for entry in plan.entries:
            name = entry.source.name
            if name not in send:
                continue
            vlm, llm, base = self._source(entry)
            if entry.op is None:
                tensor = vlm.clone()
            else:
                partner_base = base if entry.op.vlm_weight is not None else None
                tensor = merge_tensor_fresh(entry.op, vlm, llm, partner_base)
            self._held[name] = entry.op
            yield name, tensor

    def invalidate(self) -> None:
        """Forget what the engine holds (a failed update): the next recipe sends every LM tensor."""
        for name in self._held:
            self._held[name] = _UNKNOWN

    def held(self) -> dict[str, TensorOp | None]:
        """A copy of the per-tensor ops the engine holds now (None = the VLM's pristine tensor)."""
        return dict(self._held)

    def close(self) -> None:
        """Close the checkpoint files (the cached sources stay)."""
        for files in (self.files_vlm, self.files_llm, self.files_base):
            if files is not None:
                files.close()


def merge_tensor_fresh(
    op: TensorOp, vlm: torch.Tensor, llm: torch.Tensor, base: torch.Tensor | None
) -> torch.Tensor:
    """``merge_tensor`` into a fresh copy of ``vlm``, as the streamed merge does (it merges into the buffer
    it read, ``out=vlm``): the same call with the same aliasing, so the same bits."""
    out = vlm.clone()
    return merge_tensor(op, out, llm, base, out=out)
