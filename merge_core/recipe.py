"""The merge recipe (``mergesearch.recipe/v2``): a frozen, validated, JSON-round-tripping dataclass.

A recipe fully determines a merged VLM.  ``Recipe.from_dict`` fills the per-method defaults (mergekit's)
and rejects unknown, inapplicable or out-of-range fields with a :class:`RecipeError` naming the field and
the allowed values.  ``to_dict`` returns the complete normalised form, so
``Recipe.from_dict(r.to_dict()) == r`` and ``r.id`` (sha256 of the canonical JSON, 12 hex chars) is stable.

Schemas: v2 and v1 have the same fields; they differ only in how DARE draws its masks (``dare_mask``):
v2 hashes each entry's index on the tensor's device (``splitmix64``), v1 drew them from a CPU
``torch.Generator`` (``torch_cpu``).  A v1 recipe keeps its schema (and its id) and re-merges bit for bit;
a recipe without ``schema`` is read as the current one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merge_core.errors import RecipeError

SCHEMA = "mergesearch.recipe/v2"
SCHEMA_V1 = "mergesearch.recipe/v1"
DARE_MASKS: dict[str, str] = {SCHEMA: "splitmix64", SCHEMA_V1: "torch_cpu"}  # merge_core.methods.masks
COMPONENTS: tuple[str, ...] = ("attention", "mlp", "norm", "embed", "lm_head")
DEFAULT_COMPONENTS: tuple[str, ...] = ("attention", "mlp", "norm")
SHAPES: tuple[str, ...] = ("constant", "linear", "loglinear", "step", "explicit")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
COMPATS: tuple[str, ...] = ("mergekit", "vlm_merging")
WEIGHT_LIMIT = 10.0  # |component weights| beyond this are surely typos (method fields: their MethodDef)
VLM_MERGING_FIXED: tuple[str, ...] = ("lambda", "normalize", "rescale")  # the paper's code fixes these

# the method fields (merge_core.methods.registry) that are Recipe attributes; the others go to ``extra``
CORE_PARAMS: tuple[str, ...] = ("weight", "vlm_weight", "llm_weight", "density", "lambda", "normalize", "rescale")
BASE_FIELDS: tuple[str, ...] = (
    "schema", "vlm", "llm", "base", "method", "components", "component_weights", "schedule", "seed", "dtype",
    "compat",
)  # fmt: skip


def _registry():  # type: ignore[no-untyped-def]
    # imported late: the method modules import merge_core.plan, which imports this module
    from merge_core.methods import registry

    return registry


def fields() -> tuple[str, ...]:
    """Every recipe JSON field: the fixed ones and every registered method's fields."""
    reg = _registry()
    return (*BASE_FIELDS[:5], *CORE_PARAMS, *[n for n in reg.param_names() if n not in CORE_PARAMS], *BASE_FIELDS[5:])


@dataclass(frozen=True)
class Schedule:
    """Per-layer multiplier r(i) of the LLM weight; see :mod:`merge_core.schedule` for the formulas."""

    shape: str = "constant"
    start: int | None = None
    values: tuple[float, ...] | None = None

    @classmethod
    def from_dict(cls, d: Any) -> Schedule:
        """Validate ``{"shape": ..., "start": int, "values": [...]}``; RecipeError names ``schedule.<key>``."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise RecipeError(
                f'recipe field \'schedule\' must be an object like {{"shape": "constant"}}, got {d!r}'
            )
        unknown = sorted(set(d) - {"shape", "start", "values"})
        if unknown:
            raise RecipeError(
                f"recipe field 'schedule.{unknown[0]}' is unknown; allowed: shape, start, values"
            )
        shape = d.get("shape", "constant")
        if shape not in SHAPES:
            raise RecipeError(f"recipe field 'schedule.shape' is {shape!r}; allowed: {', '.join(SHAPES)}")
        start, values = d.get("start"), d.get("values")
        if shape == "step":
            if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                raise RecipeError(
                    f"recipe field 'schedule.start' must be an integer >= 0 for shape 'step' (first merged layer), got {start!r}"
                )
        elif start is not None:
            raise RecipeError("recipe field 'schedule.start' applies only to shape 'step'; remove it")
        if shape == "explicit":
            if not isinstance(values, list | tuple) or not values:
                raise RecipeError(
                    "recipe field 'schedule.values' must be a non-empty list (one value per layer) for shape 'explicit'"
                )
            for i, v in enumerate(values):
                if not _is_number(v) or not 0.0 <= float(v) <= 1.0:
                    raise RecipeError(
                        f"recipe field 'schedule.values[{i}]' must be a number in [0, 1], got {v!r}"
                    )
            values = tuple(float(v) for v in values)
        elif values is not None:
            raise RecipeError("recipe field 'schedule.values' applies only to shape 'explicit'; remove it")
        return cls(shape=shape, start=start, values=values)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; only the keys the shape uses."""
        d: dict[str, Any] = {"shape": self.shape}
        if self.start is not None:
            d["start"] = self.start
        if self.values is not None:
            d["values"] = list(self.values)
        return d


@dataclass(frozen=True)
class Recipe:
    """A merge recipe.  Build it with :meth:`from_dict` / :meth:`from_json` / :func:`load_recipe`.

    Linear family (``linear``, ``layer_swap``): out = (1 - w_i)·VLM + w_i·LLM with w_i = weight·c·r(i).
    Task-vector family: out = base + λ·combine(a1·τ_vlm, a2_i·τ_llm), τ = θ - base, a1 = vlm_weight,
    a2_i = llm_weight·c·r(i); ``c`` is the component weight (1 unless ``component_weights`` says otherwise).
    """

    vlm: str
    llm: str
    base: str | None = None
    method: str = "linear"
    weight: float | None = None
    vlm_weight: float | None = None
    llm_weight: float | None = None
    density: float | None = None
    lambda_: float | None = None
    normalize: bool | None = None
    rescale: str | None = None
    components: tuple[str, ...] = DEFAULT_COMPONENTS
    component_weights: tuple[tuple[str, float], ...] = ()
    schedule: Schedule = field(default_factory=Schedule)
    seed: int = 0
    dtype: str | None = None
    compat: str = "mergekit"
    schema: str = SCHEMA
    extra: tuple[tuple[str, Any], ...] = ()  # method fields beyond CORE_PARAMS (e.g. della's epsilon)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Validate a JSON object and fill the per-method defaults; RecipeError names the bad field."""
        if not isinstance(d, dict):
            raise RecipeError(f"a recipe must be a JSON object, got {type(d).__name__}")
        reg = _registry()
        allowed = fields()
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise RecipeError(f"recipe field {unknown[0]!r} is unknown; allowed fields: {', '.join(allowed)}")
        schema = d.get("schema", SCHEMA)
        if not isinstance(schema, str) or schema not in DARE_MASKS:
            raise RecipeError(
                f"recipe field 'schema' is {schema!r}; this version reads {' and '.join(map(repr, DARE_MASKS))}"
            )
        for key in ("vlm", "llm"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise RecipeError(f"recipe field {key!r} is required: a local model directory or a hub id")
        method = d.get("method", "linear")
        if method not in reg.registry():
            raise RecipeError(f"recipe field 'method' is {method!r}; allowed: {', '.join(reg.names())}")
        mdef = reg.get(method)
        compat = d.get("compat", "mergekit")
        if compat not in COMPATS:
            raise RecipeError(f"recipe field 'compat' is {compat!r}; allowed: {', '.join(COMPATS)}")
        tv = mdef.is_task_vector
        base = d.get("base")
        if base is not None and (not isinstance(base, str) or not base):
            raise RecipeError("recipe field 'base' must be a model directory or hub id")
        if tv and base is None:
            raise RecipeError(
                f"recipe field 'base' is required by method {method!r} (task vectors are θ - base)"
            )
        for name in reg.param_names():
            if d.get(name) is not None and mdef.param(name) is None:
                raise RecipeError(
                    f"recipe field {name!r} does not apply to method {method!r} "
                    f"(it applies to {', '.join(reg.using(name))})"
                )
        values = {p.name: _param(d, p, method) for p in mdef.params}
        problem = mdef.check(values) if mdef.check else None
        if problem:
            raise RecipeError(f"recipe {problem} for method {method!r}")
        weight = values.get("weight")

        components = d.get("components", list(DEFAULT_COMPONENTS))
        if not isinstance(components, list | tuple) or not components:
            raise RecipeError(
                f"recipe field 'components' must be a non-empty list drawn from {', '.join(COMPONENTS)}"
            )
        for c in components:
            if c not in COMPONENTS:
                raise RecipeError(f"recipe field 'components' has {c!r}; allowed: {', '.join(COMPONENTS)}")
        components = tuple(c for c in COMPONENTS if c in components)  # canonical order, no duplicates

        cw_in = d.get("component_weights") or {}
        if not isinstance(cw_in, dict):
            raise RecipeError(
                'recipe field \'component_weights\' must be an object like {"attention": 1.0, "mlp": 0.5}'
            )
        cw: list[tuple[str, float]] = []
        for c in COMPONENTS:
            if c not in cw_in:
                continue
            if c not in components:
                raise RecipeError(
                    f"recipe field 'component_weights.{c}' names a component not in 'components' ({', '.join(components)})"
                )
            cw.append((c, _number(cw_in, c, 0.0, WEIGHT_LIMIT, label=f"component_weights.{c}")))
        extra = sorted(set(cw_in) - set(COMPONENTS))
        if extra:
            raise RecipeError(
                f"recipe field 'component_weights.{extra[0]}' is unknown; allowed: {', '.join(COMPONENTS)}"
            )

        schedule = Schedule.from_dict(d.get("schedule"))
        if mdef.schedule is not None and schedule.shape != mdef.schedule:
            raise RecipeError(
                'recipe field \'schedule\' must be {"shape": "step", "start": N} for method \'layer_swap\' '
                "(layers < N stay the VLM's; the paper's base_layer_num b is N = b + 1)"
            )
        if not tv and weight is not None:
            worst = weight * max([v for _, v in cw] + [1.0 if len(cw) < len(components) else 0.0])
            if worst > 1.0 + 1e-12:
                raise RecipeError(
                    f"recipe field 'component_weights' makes the LLM weight {worst:g} > 1 for method {method!r}; "
                    "weight x component weight must stay in [0, 1]"
                )

        seed = d.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise RecipeError(f"recipe field 'seed' must be an integer in [0, 2^63), got {seed!r}")
        dtype = d.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise RecipeError(
                f"recipe field 'dtype' is {dtype!r}; allowed: {', '.join(DTYPES)} or null (the VLM's)"
            )

        if compat not in mdef.impls:
            have = [n for n, m in reg.registry().items() if compat in m.impls]
            raise RecipeError(
                f"recipe field 'compat' {compat!r} has no {method}; use {', '.join(have[:-1])} or {have[-1]}"
            )
        if compat == "vlm_merging":
            if components != DEFAULT_COMPONENTS or cw or schedule.shape not in ("constant", "step"):
                raise RecipeError(
                    "recipe field 'compat' 'vlm_merging' merges all LM layers and the final norm with one weight: "
                    "leave 'components', 'component_weights' and 'schedule' at their defaults"
                )
            if not tv and mdef.schedule is None and schedule.shape != "constant":
                raise RecipeError(
                    f"recipe field 'schedule' must be constant for compat 'vlm_merging' {method}; use method layer_swap"
                )
            for name in VLM_MERGING_FIXED:
                if d.get(name) is not None:
                    raise RecipeError(
                        f"recipe field {name!r} is fixed by compat 'vlm_merging' (the paper's code); remove it"
                    )
                values.pop(name, None)

        return cls(
            vlm=d["vlm"], llm=d["llm"], base=base, method=method, weight=weight,
            vlm_weight=values.get("vlm_weight"), llm_weight=values.get("llm_weight"),
            density=values.get("density"), lambda_=values.get("lambda"), normalize=values.get("normalize"),
            rescale=values.get("rescale"), components=components, component_weights=tuple(cw),
            schedule=schedule, seed=seed, dtype=dtype, compat=compat, schema=schema,
            extra=tuple((k, v) for k, v in values.items() if k not in CORE_PARAMS),
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """Parse and validate recipe JSON text."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"recipe is not valid JSON: {err}") from None
        return cls.from_dict(d)

    # ---- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The complete normalised JSON object (fields that do not apply to the method are omitted)."""
        d: dict[str, Any] = {"schema": self.schema, "vlm": self.vlm, "llm": self.llm}
        if self.base is not None:
            d["base"] = self.base
        d["method"] = self.method
        for key, val in (
            ("weight", self.weight), ("vlm_weight", self.vlm_weight), ("llm_weight", self.llm_weight),
            ("density", self.density), ("lambda", self.lambda_), ("normalize", self.normalize),
            ("rescale", self.rescale), *self.extra,
        ):  # fmt: skip
            if val is not None:
                d[key] = val
        d["components"] = list(self.components)
        if self.component_weights:
            d["component_weights"] = dict(self.component_weights)
        d["schedule"] = self.schedule.to_dict()
        d["seed"] = self.seed
        d["dtype"] = self.dtype
        d["compat"] = self.compat
        return d

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict` (stable key order)."""
        return json.dumps(self.to_dict(), indent=indent)

    @property
    def id(self) -> str:
        """sha256 (first 12 hex chars) of the canonical JSON: sorted keys, no whitespace."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> Recipe:
        """A validated copy with JSON-named fields changed (``lambda`` may be passed as ``lambda_``)."""
        d = self.to_dict()
        if "lambda_" in changes:
            changes["lambda"] = changes.pop("lambda_")
        if "schedule" in changes and isinstance(changes["schedule"], Schedule):
            changes["schedule"] = changes["schedule"].to_dict()
        if "method" in changes and changes["method"] != self.method:
            # drop fields that only belonged to the old method; the new one's defaults fill in
            for key in _registry().param_names():
                d.pop(key, None)
        d.update(changes)
        return Recipe.from_dict(d)

    # ---- derived ------------------------------------------------------------------------------------
    @property
    def is_task_vector(self) -> bool:
        """True for the methods that merge task vectors against ``base``."""
        return _registry().get(self.method).is_task_vector

    def param(self, name: str) -> Any:
        """The value of method field ``name`` (JSON name), None when it does not apply."""
        core = {"lambda": self.lambda_, "weight": self.weight, "vlm_weight": self.vlm_weight,
                "llm_weight": self.llm_weight, "density": self.density, "normalize": self.normalize,
                "rescale": self.rescale}  # fmt: skip
        return core[name] if name in core else dict(self.extra).get(name)

    @property
    def dare_mask(self) -> str:
        """How DARE draws its masks under this recipe's schema (:mod:`merge_core.methods.masks`)."""
        return DARE_MASKS[self.schema]

    def component_weight(self, component: str) -> float:
        """The multiplier of the LLM weight for ``component`` (1.0 unless set)."""
        return dict(self.component_weights).get(component, 1.0)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe JSON file; RecipeError names the file on a problem."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file {str(p)!r} does not exist")
    try:
        return Recipe.from_json(p.read_text(encoding="utf-8"))
    except RecipeError as err:
        raise RecipeError(f"{p}: {err}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def _param(d: dict[str, Any], p: Any, method: str) -> Any:
    """Validate method field ``p`` (a registry ParamDef) of ``d``, or return its default."""
    v = d.get(p.name)
    if v is None and p.default is None:
        what = f" ({p.help})" if p.help else ""
        raise RecipeError(f"recipe field {p.name!r}{what} is required by method {method!r}")
    if p.kind == "number":
        return _number(d, p.name, p.lo, p.hi, default=p.default, open_low=p.open_low)
    if v is None:
        return p.default
    if p.kind == "bool":
        if not isinstance(v, bool):
            raise RecipeError(f"recipe field {p.name!r} must be true or false, got {v!r}")
        return v
    if p.kind == "integer":
        if not isinstance(v, int) or isinstance(v, bool) or not p.lo <= v <= p.hi:
            raise RecipeError(f"recipe field {p.name!r} must be an integer in [{p.lo:g}, {p.hi:g}], got {v!r}")
        return v
    if v not in p.choices:
        raise RecipeError(f"recipe field {p.name!r} is {v!r}; allowed: {', '.join(p.choices)}")
    return v


def _number(
    d: dict[str, Any],
    key: str,
    lo: float,
    hi: float,
    *,
    default: float | None = None,
    open_low: bool = False,
    label: str | None = None,
) -> float:
    label = label or key
    v = d.get(key)
    if v is None:
        if default is None:
            raise RecipeError(f"recipe field {label!r} is required")
        return default
    bad = not _is_number(v) or float(v) > hi or float(v) < lo or (open_low and float(v) == lo)
    if bad:
        rng = f"({lo:g}, {hi:g}]" if open_low else f"[{lo:g}, {hi:g}]"
        raise RecipeError(f"recipe field {label!r} must be a number in {rng}, got {v!r}")
    return float(v)
