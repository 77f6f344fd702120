"""The search space: an Optuna trial → a recipe dict (``mergesearch.recipe/v2``).

Parameters (Optuna names) and when they exist:

* ``method`` — categorical over ``space.methods`` (absent when only one).
* the method's searched fields, as its :class:`~merge_core.methods.registry.MethodDef` declares them:
  ``weight`` (linear family, merged = (1-w)·VLM + w·LLM); ``vlm_weight``, ``llm_weight``, ``lambda``
  (task-vector family); ``density`` (the sparsifying methods); a method's own field (della's ``epsilon``,
  breadcrumbs' ``gamma``, sce's ``select_topk``) only when the study file ranges it (``space.epsilon``),
  else it keeps the method's default.  Unsearched fields take their defaults or ``space.fixed`` (a method
  field there, e.g. ``rescale``, goes only into the recipes of the methods that take it).
* ``components`` — categorical of subsets (``"attention+mlp"``), or booleans ``comp_<name>`` for
  ``space.component_flags`` (an empty choice falls back to the first flag, so every trial merges something).
* ``schedule`` — categorical over shapes; ``start`` only for ``step`` (and always for a method whose
  declaration requires the step, ``layer_swap``); ``r_0 .. r_{L-1}`` only for ``explicit`` (a per-layer vector).

A parameter whose range is a single value is not suggested, it is written into every recipe.
Fields that the method does not use are left out, so merge_core's per-method defaults apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.study.spec import Param, SpaceSpec, StudySpec, method_registry

if TYPE_CHECKING:
    import optuna

RECIPE_SCHEMA = "mergesearch.recipe/v2"
GRID_ORDER = ("weight", "vlm_weight", "llm_weight", "lambda", "density")  # the grid's key order (kept stable)


def _suggest(trial: optuna.trial.BaseTrial, name: str, p: Param) -> float | int:
    if p.fixed:
        return int(p.low) if p.integer else p.low
    if p.integer:
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)


def _choice(trial: optuna.trial.BaseTrial, name: str, choices: tuple[str, ...]) -> str:
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


class SearchSpace:
    """Maps trials of one study to recipes; the models (vlm, llm, base) are filled in from ``models``."""

    def __init__(self, spec: StudySpec, models: dict[str, str | None] | None = None) -> None:
        self.space: SpaceSpec = spec.space
        self.models = models or {"vlm": spec.models.vlm, "llm": spec.models.llm, "base": spec.models.base}
        self.seed = spec.seed
        self.dtype = spec.models.dtype

    def _header(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": RECIPE_SCHEMA, "vlm": self.models["vlm"], "llm": self.models["llm"]}
        if self.models.get("base"):
            d["base"] = self.models["base"]
        d["seed"] = self.seed
        if self.dtype:
            d["dtype"] = self.dtype
        return d

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Draw this trial's parameters and return the recipe dict they define (see module docstring)."""
        s = self.space
        r = self._header()
        method = _choice(trial, "method", s.methods)
        r["method"] = method
        mdef = method_registry().get(method)
        for p in mdef.params:  # the method's searched fields, in its declaration order
            if p.searched and p.name in s.ranged():
                r[p.name] = _suggest(trial, p.name, s.param(p.name))
        if s.component_flags:
            chosen = [c for c in s.component_flags if trial.suggest_categorical(f"comp_{c}", [True, False])]
            r["components"] = chosen or [s.component_flags[0]]
        else:
            names = ["+".join(c) for c in s.components]
            r["components"] = _choice(trial, "components", tuple(names)).split("+")
        shape = mdef.schedule or _choice(trial, "schedule", s.schedules)
        schedule: dict[str, Any] = {"shape": shape}
        if shape == "step":
            schedule["start"] = _suggest(trial, "start", s.start)
        elif shape == "explicit":
            schedule["values"] = [
                _suggest(trial, f"r_{i}", s.explicit_value) for i in range(s.explicit_layers)
            ]
        r["schedule"] = schedule
        method_fields = set(method_registry().param_names())
        r.update({k: v for k, v in s.fixed.items() if k not in method_fields or mdef.param(k) is not None})
        return r

    def baseline(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A baseline's recipe dict: its fields over this study's models, seed and dtype."""
        r = self._header()
        r.update(fields)
        return r

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: every parameter :meth:`suggest` may draw, enumerated."""
        s = self.space
        g: dict[str, list[Any]] = {}
        if len(s.methods) > 1:
            g["method"] = list(s.methods)
        num: list[tuple[str, Param, bool]] = [
            *(
                (n, s.param(n), any(m in method_registry().using(n) for m in s.methods))
                for n in (*GRID_ORDER, *s.own)
            ),
            (
                "start",
                s.start,
                "step" in s.schedules or any(method_registry().get(m).schedule == "step" for m in s.methods),
            ),
        ]
        for name, p, used in num:
            if used and not p.fixed:
                g[name] = p.grid_values()
        if s.component_flags:
            for c in s.component_flags:
                g[f"comp_{c}"] = [True, False]
        elif len(s.components) > 1:
            g["components"] = ["+".join(c) for c in s.components]
        if len(s.schedules) > 1:
            g["schedule"] = list(s.schedules)
        if "explicit" in s.schedules and not s.explicit_value.fixed:
            for i in range(s.explicit_layers):
                g[f"r_{i}"] = s.explicit_value.grid_values()
        return g

    def grid_size(self) -> int:
        """Number of grid cells (product of the value counts)."""
        n = 1
        for v in self.grid().values():
            n *= len(v)
        return n
