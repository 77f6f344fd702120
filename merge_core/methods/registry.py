"""The merge-method registry: every method declares itself once, as a :class:`MethodDef` in its own module.

A method module of this package exports ``METHODS: tuple[MethodDef, ...]``; :func:`registry` imports every
module of the package on first use and collects them.  Everything that needs to know the methods reads it:
:meth:`merge_core.recipe.Recipe.from_dict` (which fields apply, their ranges and defaults), the merge
dispatch (:func:`merge_core.methods.merge_tensor`), the study-file validation, the search space and grid
(``search.study.spec`` / ``search.study.space``) and the mergekit export (``search.results.export``).  Modelled on mergekit's
``ConfigParameterDef`` + method registry, as plain frozen dataclasses.

Discovery is lazy because the method modules import :mod:`merge_core.plan`, which imports the recipe.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MergeFn = Callable[..., torch.Tensor]
FAMILIES: tuple[str, ...] = ("linear", "task_vector")
WEIGHT_LIMIT = 10.0  # |vlm_weight|, |llm_weight|, lambda and component weights beyond this are surely typos


@dataclass(frozen=True)
class ParamDef:
    """One recipe field of a method: ``kind`` number (range [lo, hi], or (lo, hi] with ``open_low``),
    bool, integer or choice; ``default`` None means required.  ``searched``: the search space samples it
    (from the study file's ``space.<name>``); other fields take their default or ``space.fixed``."""

    name: str
    kind: str = "number"
    lo: float = 0.0
    hi: float = 1.0
    open_low: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    searched: bool = False
    help: str = ""


@dataclass(frozen=True)
class MethodDef:
    """A merge method: its recipe name, family, fields, implementations per compat mode and mergekit name.

    ``impls`` maps a compat mode (``mergekit`` = mergekit's definitions, ``vlm_merging`` = the paper's code)
    to ``fn(op, vlm, llm, base, out=None) -> Tensor``.  ``mergekit_model_params`` / ``mergekit_params``:
    recipe fields the mergekit export writes per model / globally (under the same names).
    """

    name: str
    family: str
    params: tuple[ParamDef, ...]
    impls: dict[str, MergeFn]
    mergekit: str | None = None
    mergekit_model_params: tuple[str, ...] = ()
    mergekit_params: tuple[str, ...] = ()
    check: Callable[[dict[str, Any]], str | None] | None = None  # cross-field rule: message naming the field
    schedule: str | None = None  # the one schedule shape the method requires (layer_swap: step)
    order: int = 100  # position in listings and error messages
    doc: str = field(default="", compare=False)

    @property
    def is_task_vector(self) -> bool:
        """True for the methods that merge task vectors τ = θ - base."""
        return self.family == "task_vector"

    def param(self, name: str) -> ParamDef | None:
        """The declaration of field ``name``, None if it does not apply."""
        return next((p for p in self.params if p.name == name), None)


# ---- shared field declarations (each method lists the ones it takes) -----------------------------------
def weight() -> ParamDef:
    """The LLM weight w of the linear family (merged = (1 - w)·VLM + w·LLM), required."""
    return ParamDef("weight", lo=0.0, hi=1.0, searched=True, help="the LLM weight w in [0, 1]")


def task_weights() -> tuple[ParamDef, ...]:
    """a1 = vlm_weight, a2 = llm_weight and λ = lambda of every task-vector method."""
    return (
        ParamDef("vlm_weight", lo=-WEIGHT_LIMIT, hi=WEIGHT_LIMIT, default=1.0, searched=True),
        ParamDef("llm_weight", lo=-WEIGHT_LIMIT, hi=WEIGHT_LIMIT, default=1.0, searched=True),
        ParamDef("lambda", lo=0.0, hi=WEIGHT_LIMIT, open_low=True, default=1.0, searched=True),
    )


def normalize(default: bool) -> ParamDef:
    """Divide δ by the (agreeing) weight sum."""
    return ParamDef("normalize", kind="bool", default=default)


def density(default: float = 1.0) -> ParamDef:
    """Fraction of task-vector entries kept, in (0, 1]."""
    return ParamDef("density", lo=0.0, hi=1.0, open_low=True, default=default, searched=True)


def rescale(default: str) -> ParamDef:
    """How the kept entries are rescaled: mergekit's L1 match, the DARE paper's 1/density, or none."""
    return ParamDef("rescale", kind="choice", default=default, choices=("l1", "inverse_density", "none"))


@functools.cache
def registry() -> dict[str, MethodDef]:
    """Every declared method by name, in listing order (imports the package's modules once)."""
    import merge_core.methods as pkg

    found: list[MethodDef] = []
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        found.extend(getattr(mod, "METHODS", ()) if info.name != "__init__" else ())
    by_name: dict[str, MethodDef] = {}
    for m in sorted(found, key=lambda m: (m.order, m.name)):
        if m.name in by_name:
            raise RuntimeError(f"merge method {m.name!r} is declared twice")
        if m.family not in FAMILIES:
            raise RuntimeError(f"merge method {m.name!r} has family {m.family!r}; known: {FAMILIES}")
        by_name[m.name] = m
    return by_name


def names() -> tuple[str, ...]:
    """The method names, in listing order."""
    return tuple(registry())


def get(name: str) -> MethodDef:
    """The declaration of method ``name`` (KeyError if unknown)."""
    return registry()[name]


def using(param: str) -> tuple[str, ...]:
    """The methods that take recipe field ``param``."""
    return tuple(n for n, m in registry().items() if m.param(param) is not None)


def param_names() -> tuple[str, ...]:
    """Every method field, first-declared first (the recipe's method-dependent JSON fields)."""
    seen: dict[str, None] = {}
    for m in registry().values():
        for p in m.params:
            seen.setdefault(p.name, None)
    return tuple(seen)
