"""The merge plan: for every output tensor, what to do with it (keep the VLM's, or merge with which weights).

Both the streamed merge and :class:`~merge_core.resident.ResidentMerger` execute the same plan with the
same method functions, which is why their results are bit-identical.

Effective weights of an LM tensor in layer i with component c (factor cw_c, default 1) and schedule r:
linear / layer_swap: w = weight·cw_c·r(i); task-vector methods: a1 = vlm_weight, a2 = llm_weight·cw_c·r(i).
Embeddings take r(0); the final norm and lm_head take r(L-1) (see :mod:`merge_core.schedule`).
Components not in ``recipe.components`` stay the VLM's.  A linear weight of 0 is a plain copy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from merge_core.io import DTYPE_NAMES, ST_DTYPES, TORCH_TO_ST, TensorSpec
from merge_core.recipe import Recipe
from merge_core.schedule import layer_factors
from merge_core.tensor_map import TensorMap, VlmTensor


@dataclass(frozen=True)
class TensorOp:
    """How to merge one tensor (all weights already resolved for its layer and component)."""

    method: str
    compat: str
    weight: float | None = None  # LLM weight, linear family
    vlm_weight: float | None = None
    llm_weight: float | None = None
    density: float | None = None
    lambda_: float | None = None
    normalize: bool | None = None
    rescale: str | None = None
    seeds: tuple[int, int] = (0, 0)  # DARE mask seeds for the VLM's and the LLM's task vector
    rows: int | None = None  # merge only rows [:rows] (embeddings shared by both vocabularies)
    mask: str = "splitmix64"  # DARE mask algorithm (merge_core.methods.masks), from the recipe's schema
    extra: tuple[tuple[str, object], ...] = ()  # the recipe's other method fields (Recipe.extra)

    def param(self, name: str) -> object:
        """Method field ``name`` from :attr:`extra` (KeyError if the recipe has none)."""
        return dict(self.extra)[name]


@dataclass(frozen=True)
class PlanEntry:
    """One output tensor: its source in the VLM, its canonical name, and its op (None = the VLM's)."""

    source: VlmTensor
    canonical: str | None
    op: TensorOp | None
    out_spec: TensorSpec


@dataclass(frozen=True)
class Plan:
    """The ordered entries of a recipe applied to a tensor map, plus the output dtype."""

    recipe: Recipe
    entries: tuple[PlanEntry, ...]
    dtype: torch.dtype

    def merged(self) -> list[PlanEntry]:
        """Entries that are actually merged."""
        return [e for e in self.entries if e.op is not None]


def mask_seed(seed: int, canonical: str, source: int) -> int:
    """Stable 63-bit seed of one DARE mask from (recipe seed, canonical tensor name, source index).

    sha256 rather than Python's ``hash()``, which is salted per process.
    """
    digest = hashlib.sha256(f"{seed}\x00{canonical}\x00{source}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def output_dtype(recipe: Recipe, tmap: TensorMap) -> torch.dtype:
    """recipe.dtype, else the dtype of the VLM's LM weights on disk."""
    if recipe.dtype is not None:
        return DTYPE_NAMES[recipe.dtype]
    for t in tmap.tensors:
        if t.where.canonical is not None:
            return ST_DTYPES[t.spec.dtype]
    return torch.float32


def _factor(r: list[float], t: VlmTensor) -> float:
    if t.where.layer is not None:
        return r[t.where.layer]
    return r[0] if t.where.cls == "embed" else r[-1]


def build_plan(recipe: Recipe, tmap: TensorMap, dtype: torch.dtype | None = None) -> Plan:
    """Resolve ``recipe`` against ``tmap`` (which must be problem-free) into per-tensor ops.

    ``dtype`` overrides the output dtype (the resident merger's model dtype); default :func:`output_dtype`.
    """
    tmap.raise_if_problems()
    r = layer_factors(recipe.schedule, tmap.num_layers)
    dtype = dtype or output_dtype(recipe, tmap)
    entries: list[PlanEntry] = []
    for t in tmap.tensors:
        src_dtype = ST_DTYPES[t.spec.dtype]
        out_dtype = dtype if src_dtype.is_floating_point else src_dtype
        out_spec = TensorSpec(t.name, TORCH_TO_ST[out_dtype], t.spec.shape)
        comp = t.where.component
        op = None
        if comp is not None and comp in recipe.components:
            f = _factor(r, t) * recipe.component_weight(comp)
            rows = t.rows if t.where.cls in ("embed", "lm_head") else None
            if recipe.is_task_vector:
                op = TensorOp(
                    method=recipe.method, compat=recipe.compat, vlm_weight=recipe.vlm_weight,
                    llm_weight=recipe.llm_weight * f, density=recipe.density, lambda_=recipe.lambda_,
                    normalize=recipe.normalize, rescale=recipe.rescale,
                    seeds=(mask_seed(recipe.seed, t.where.canonical, 0), mask_seed(recipe.seed, t.where.canonical, 1)),
                    rows=rows, mask=recipe.dare_mask, extra=recipe.extra,
                )  # fmt: skip
            elif recipe.weight * f != 0.0:
                op = TensorOp(method=recipe.method, compat=recipe.compat, weight=recipe.weight * f, rows=rows)
        entries.append(PlanEntry(t, t.where.canonical, op, out_spec))
    return Plan(recipe=recipe, entries=tuple(entries), dtype=dtype)
