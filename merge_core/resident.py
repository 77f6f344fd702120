"""In-memory merging for the search's hot path: load once, apply many recipes in place, restore.

:class:`ResidentMerger` loads the VLM on the CPU (``from_pretrained`` without ``device_map``, which in
transformers 5 would need accelerate) and moves it to ``device``.  Its merge sources — the pristine copy of
every language-model tensor the search can touch plus the LLM's (and base's) partners — live in one of two
tiers (:mod:`merge_core.memory_plan`): ``device`` keeps them on the device in the model's dtype; ``host``
takes them from the safetensors files, through the page cache, at every ``apply``
(:mod:`merge_core.sources`); ``auto`` picks from the device's free memory.  The plan is printed and checked before anything is loaded.

``apply(recipe)`` walks the same :class:`~merge_core.plan.Plan` as the streamed merge and calls the same
method functions with the live parameter as ``out`` — a linear merge is one ``torch.lerp(..., out=param)``
per tensor, restoring and merging in a single pass — so the weights equal ``merge_to_disk`` of the same
recipe bit for bit, in either tier (when the dtypes agree).  Tensors the recipe leaves alone are restored
only if an earlier recipe changed them.  Only tensors of ``components`` are held; a recipe that merges any
other is a RecipeError.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from merge_core.architectures import classify_vlm
from merge_core.devices import free_memory, resolve_device
from merge_core.errors import ArchitectureError, RecipeError
from merge_core.io import DTYPE_NAMES, ModelFiles, keep_freed_memory
from merge_core.memory_plan import MemoryPlan, held_tensors, plan_memory
from merge_core.methods import merge_tensor
from merge_core.plan import Plan, output_dtype
from merge_core.plan_cache import PlanCache
from merge_core.recipe import COMPONENTS, Recipe
from merge_core.sources import Job, SourceReader, Stager, stream_jobs
from merge_core.tensor_map import preflight


@dataclass
class _Slot:
    """One held LM tensor: the live parameter and, in the device tier, its sources on the device."""

    param: torch.Tensor
    pristine: torch.Tensor | None
    llm: torch.Tensor | None
    base: torch.Tensor | None
    vlm_name: str
    llm_name: str | None
    base_name: str | None


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise RecipeError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[dtype]


def _components(components: Iterable[str] | None) -> tuple[str, ...]:
    if components is None:
        return COMPONENTS
    chosen = set(components)
    bad = sorted(chosen - set(COMPONENTS))
    if bad or not chosen:
        raise RecipeError(
            f"ResidentMerger components {sorted(chosen)!r} must be a non-empty subset of {', '.join(COMPONENTS)}"
        )
    return tuple(c for c in COMPONENTS if c in chosen)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ResidentMerger:
    """A VLM resident on ``device`` into which recipes are merged in place (see module docstring).

    ``sources``: "device" | "host" | "auto" (the memory tier of the merge sources); ``components``: the
    components any recipe may merge (default all; embed and lm_head are the largest); ``reserve``: bytes
    the plan keeps free for generation (default :func:`merge_core.memory_plan.plan_memory`'s);
    ``report``: where the memory plan line goes (stderr).  ``.memory_plan`` is the plan, ``.sources`` the
    tier in use.  Errors before any weight is read: DeviceError (no such device), MemoryPlanError (does
    not fit), ArchitectureError / ModelFilesError (the checkpoints)."""

    def __init__(
        self,
        vlm: str,
        llm: str,
        base: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
        sources: str = "device",
        components: Iterable[str] | None = None,
        reserve: int | None = None,
        report: Callable[[str], None] | None = _stderr,
    ) -> None:
        self.device = resolve_device(device)
        self.components = _components(components)
        self.files_vlm = ModelFiles(vlm, "vlm")
        self.files_llm = ModelFiles(llm, "llm")
        self.files_base = ModelFiles(base, "base") if base is not None else None
        self.tmap = preflight(self.files_vlm, self.files_llm, self.files_base)
        self.dtype = _dtype(dtype) or output_dtype(Recipe(vlm=vlm, llm=llm), self.tmap)
        self.memory_plan: MemoryPlan = plan_memory(
            self.tmap, self.dtype, self.components, device=self.device, free=free_memory(self.device),
            sources=sources, reserve=reserve,
        )  # fmt: skip
        self.sources = self.memory_plan.tier
        if report is not None:
            report(self.memory_plan.summary())

        from transformers import AutoModelForImageTextToText

        self.model = AutoModelForImageTextToText.from_pretrained(
            self.files_vlm.root, dtype=self.dtype, trust_remote_code=trust_remote_code
        )
        self.model.to(self.device).eval()
        self.model.requires_grad_(False)

        by_canon: dict[str, torch.Tensor] = {}
        for name, p in self.model.named_parameters():  # tied weights appear once
            where = classify_vlm(self.tmap.arch, name)
            if where is not None and where.canonical is not None:
                by_canon[where.canonical] = p
        self._slots: dict[str, _Slot] = {}
        keep = self.sources == "device"
        with torch.no_grad():
            for t in held_tensors(self.tmap, self.components):
                canon = t.where.canonical
                assert canon is not None
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
                base_name = t.base_name if self.files_base is not None else None
                llm_t = base_t = pristine = None
                if keep:
                    pristine = p.detach().clone()
                    llm_t = self.files_llm.get(t.llm_name).to(self.device, self.dtype)  # type: ignore[arg-type]
                    if base_name is not None:
                        base_t = self.files_base.get(base_name).to(self.device, self.dtype)  # type: ignore[union-attr]
                self._slots[canon] = _Slot(p, pristine, llm_t, base_t, t.name, t.llm_name, base_name)
        self.files_llm.close()
        if self.files_base is not None:
            self.files_base.close()
        self._readers: dict[str, SourceReader] = {}
        self._stager: Stager | None = None
        if not keep:
            self._readers = {"vlm": SourceReader(self.files_vlm), "llm": SourceReader(self.files_llm)}
            if self.files_base is not None:
                self._readers["base"] = SourceReader(self.files_base)
            self._stager = Stager(self.device)
            keep_freed_memory()  # sources cast to the model dtype are allocated at every apply: reuse pages
        self._dirty: set[str] = set()
        self._plans = PlanCache(
            self.tmap, self.dtype, {"vlm": self.files_vlm, "llm": self.files_llm, "base": self.files_base},
            holder="this ResidentMerger", remedy="make a ResidentMerger with that dtype",
            check_plan=self._check_held,
        )  # fmt: skip

    def _check_held(self, plan: Plan) -> None:
        for e in plan.entries:
            if e.op is not None and e.canonical not in self._slots:
                raise RecipeError(
                    f"recipe {plan.recipe.id} merges {e.source.name!r} (component {e.source.where.component!r}), "
                    f"which this ResidentMerger does not hold (components {', '.join(self.components)}); "
                    "build it with that component (the study's space.components decide what workers hold)"
                )

    def plan(self, recipe: Recipe) -> Plan:
        """The (cached) plan of ``recipe`` for the resident model's dtype (merge_core.plan_cache)."""
        return self._plans.get(recipe)

    # ---- hot path -----------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, recipe: Recipe) -> None:
        """Restore the pristine VLM weights and merge ``recipe`` into the live parameters (one pass)."""
        plan = self.plan(recipe)
        if self._stager is not None:
            self._apply_streamed(plan)
            return
        for entry in plan.entries:
            canon = entry.canonical
            if canon is None or canon not in self._slots:
                continue
            slot = self._slots[canon]
            if entry.op is None:
                if canon in self._dirty:
                    slot.param.copy_(slot.pristine)
                    self._dirty.discard(canon)
                continue
            self._dirty.add(canon)  # before the merge: a failure half-way must still be restorable
            merge_tensor(entry.op, slot.pristine, slot.llm, slot.base, out=slot.param)

    def _apply_streamed(self, plan: Plan) -> None:
        """Host tier: the same loop, with each entry's sources streamed from the files (merge_core.sources)."""
        r = self._readers
        jobs: list[Job] = []
        for entry in plan.entries:
            canon = entry.canonical
            if canon is None or canon not in self._slots:
                continue
            slot = self._slots[canon]
            if entry.op is None:
                if canon in self._dirty:
                    jobs.append(Job((canon, None), ((r["vlm"], slot.vlm_name), None, None)))
                continue
            base = None
            if slot.base_name is not None and entry.op.vlm_weight is not None:  # task-vector methods only
                base = (r["base"], slot.base_name)
            jobs.append(Job((canon, entry.op), ((r["vlm"], slot.vlm_name), (r["llm"], slot.llm_name), base)))
        self._stream(jobs)

    def _stream(self, jobs: list[Job]) -> None:
        assert self._stager is not None
        for job, (pristine, llm_t, base_t) in stream_jobs(jobs, self._stager, self.dtype):
            canon, op = job.key
            slot = self._slots[canon]
            if op is None:
                slot.param.copy_(pristine)
                self._dirty.discard(canon)
                continue
            self._dirty.add(canon)
            merge_tensor(op, pristine, llm_t, base_t, out=slot.param)  # type: ignore[arg-type]

    @torch.no_grad()
    def restore(self) -> None:
        """Put the pristine VLM weights back."""
        if self._stager is not None:
            r = self._readers["vlm"]
            self._stream(
                [Job((c, None), ((r, self._slots[c].vlm_name), None, None)) for c in sorted(self._dirty)]
            )
            return
        for canon in sorted(self._dirty):
            slot = self._slots[canon]
            slot.param.copy_(slot.pristine)
        self._dirty.clear()

    @property
    def vlm_path(self) -> str:
        """The resolved VLM directory (for loading its processor)."""
        return str(self.files_vlm.root)

    def resident_bytes(self) -> int:
        """Bytes held besides the model: pristine, LLM and base tensors (0 in the host tier)."""
        total = 0
        for s in self._slots.values():
            for t in (s.pristine, s.llm, s.base):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total
