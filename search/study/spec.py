"""Study files (``studies/*.toml``) → a validated :class:`StudySpec`.

A study file says everything a night of search needs: the models, the proxy objectives, the search
space, the sampler and pruner, the trial budget, the workers, promotion and the baseline recipes.
Validation happens here, before any model is loaded or Ray is started; every problem raises
:class:`StudySpecError` naming the file and the dotted field (``space.density``) and what to do.

Layout (all tables optional except ``[models]`` and ``[objectives]``)::

    name = "toy"                      # Optuna study name
    storage = "sqlite:///runs/toy/study.db"   # default: sqlite under output_dir
    output_dir = "runs/toy"           # default runs/<name>, relative to the working directory
    n_trials = 36                     # COMPLETE + PRUNED trials to reach; and/or
    timeout = "2h"                    # seconds, or "90m" / "2h"
    workers = 2                       # Ray actors (one per GPU when GPUs exist)
    seed = 0
    warm_start = [{ storage = "sqlite:///runs/a/study.db", study = "a" }]   # known points (search.study.warm_start)

    [models]                          # paths / hub ids; or toy = {seed = 0, size = "full"}
    vlm = "..."; llm = "..."; base = "..."
    device = "auto"; dtype = "bfloat16"; trust_remote_code = false
    sources = "auto"                  # merge sources on the "device", streamed from the "host", or "auto"

    [objectives]
    datasets = ["MathVista_TOY_PROXY200", "MathVision_TOY_PROXY200"]
    data_dir = "~/LMUData"            # LMUData root (toy: the toy world's)
    proxy_size = 0                    # >0: sample a proxy of that size from each dataset first
    chunk_size = 25
    mode = "weighted"                 # or "multi" (one objective per dataset, Pareto front)
                                      # or "constrained" (search/study/constrained.py), with
    constrained = { maximize = "MathVision_PROXY200", baseline = "vlm_alone", within = 1.0 }
    weights = {MathVista_TOY_PROXY200 = 1.0}
    max_new_tokens = 32; batch_size = 8; limit = 0
    [objectives.generation]           # decoding settings; default: VLMEvalKit's (search/study/spec_generation.py)
    engine = "hf"                     # or "vllm" / "auto"; [objectives.vllm] max_model_len, ... (docs/vllm.md)

    [space]  ... see :mod:`search.study.space`
    [sampler] name = "tpe"; seed = 0; options = {...}
    [pruner] name = "successive_halving"; options = {...}   (see search/study/pruners.py)
    [promotion] top_k = 1; backend = "builtin"; datasets = [...]
    [[baselines]] name = "vlm_alone"; method = "linear"; weight = 0.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from objectives.engines.choice import VllmOptions, parse_engine
from search.study.spec_reader import Param, StudySpecError, TableReader
from search.study.warm_start import WarmStart, parse_warm_start

# the method fields every study file may range (space.<name>), with defaults of their own below;
# merge_core.methods.registry marks them ``searched``
SEARCHED = ("weight", "vlm_weight", "llm_weight", "density", "lambda")


def method_registry():  # type: ignore[no-untyped-def]
    """The merge-method registry, imported on first use (it imports torch: `import search.study.spec` stays light)."""
    from merge_core.methods import registry

    return registry


def own_searched() -> dict[str, Any]:
    """A method's own searched fields (della's ``epsilon``, breadcrumbs' ``gamma``, sce's ``select_topk``):
    name → its first :class:`~merge_core.methods.registry.ParamDef`.  A study file ranges one with
    ``space.<name>``; without it the field keeps the method's default (it is not suggested)."""
    out: dict[str, Any] = {}
    for m in method_registry().registry().values():
        for pd in m.params:
            if pd.searched and pd.name not in SEARCHED:
                out.setdefault(pd.name, pd)
    return out


SAMPLERS = ("tpe", "gp", "cmaes", "nsga2", "random", "grid")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "wilcoxon", "none")
MODES = ("weighted", "multi", "constrained")
COMPONENTS = ("attention", "mlp", "norm", "embed", "lm_head")
SHAPES = ("constant", "linear", "loglinear", "step", "explicit")
TOY_SIZES = ("full", "ci")
DEVICES = ("auto", "cpu", "cuda")  # Ray gives each worker a GPU of its own, which it sees as cuda:0
SOURCES = ("device", "host", "auto")  # merge_core.memory_plan's tiers
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class ToySource:
    """Models and data come from :func:`objectives.toy.build_toy_world` (built or taken from its cache)."""

    seed: int = 0
    size: str = "full"


@dataclass(frozen=True)
class ModelsSpec:
    """The merge pair; ``toy`` replaces the three paths by the toy world's checkpoints."""

    vlm: str | None = None
    llm: str | None = None
    base: str | None = None
    toy: ToySource | None = None
    device: str = "auto"
    dtype: str | None = None
    trust_remote_code: bool = False
    sources: str = "auto"


@dataclass(frozen=True)
class ObjectivesSpec:
    """Proxy objectives. ``mode="weighted"``: one value = sum_d w_d·acc_d / sum_d w_d (maximized).

    ``mode="multi"``: one maximized objective per dataset, in ``datasets`` order (a Pareto front).
    """

    datasets: tuple[str, ...]
    data_dir: str | None = None
    proxy_size: int = 0
    proxy_seed: int = 0
    chunk_size: int = 25
    mode: str = "weighted"
    weights: dict[str, float] = field(default_factory=dict)
    max_new_tokens: int = 64
    batch_size: int = 8
    limit: int = 0  # >0: only the first `limit` items of each dataset (smoke tests)
    # [objectives.generation], validated by search.study.spec_generation: {"preset": ..., <field>: value}
    generation: dict[str, Any] = field(default_factory=dict)
    constrained: Any = None  # mode "constrained": a search.study.constrained.ConstrainedSpec
    engine: str = "hf"  # "hf" | "vllm" | "auto" (objectives.engines.choice); [objectives.vllm] its settings
    vllm: VllmOptions = field(default_factory=VllmOptions)

    def weight(self, name: str) -> float:
        """The weight of dataset ``name`` (1.0 unless given)."""
        return float(self.weights.get(name, 1.0))

    @property
    def n_objectives(self) -> int:
        return len(self.datasets) if self.mode == "multi" else 1


@dataclass(frozen=True)
class SpaceSpec:
    """What the search varies; see :mod:`search.study.space` for how a trial becomes a recipe."""

    methods: tuple[str, ...] = ("task_arithmetic",)
    weight: Param = Param(0.0, 1.0)
    vlm_weight: Param = Param(0.0, 1.5)
    llm_weight: Param = Param(0.0, 1.5)
    density: Param = Param(0.1, 1.0)
    lambda_: Param = Param(1.0, 1.0)
    components: tuple[tuple[str, ...], ...] = (("attention", "mlp", "norm"),)
    component_flags: tuple[str, ...] = ()
    schedules: tuple[str, ...] = ("constant",)
    start: Param = Param(0, 0, integer=True)
    explicit_layers: int = 0
    explicit_value: Param = Param(0.0, 1.0)
    fixed: dict[str, Any] = field(default_factory=dict)
    own: dict[str, Param] = field(default_factory=dict)  # ranged fields of :func:`own_searched`

    def param(self, name: str) -> Param:
        """The range of searched method field ``name`` (one of :data:`SEARCHED`, or of :attr:`own`)."""
        if name in self.own:
            return self.own[name]
        return getattr(self, "lambda_" if name == "lambda" else name)

    def ranged(self) -> tuple[str, ...]:
        """Every method field this space gives a range or value for: :data:`SEARCHED`, then :attr:`own`."""
        return (*SEARCHED, *self.own)

    def has_categoricals(self) -> bool:
        """Whether any categorical parameter is searched (CMA-ES cannot handle them)."""
        return (
            len(self.methods) > 1
            or len(self.components) > 1
            or bool(self.component_flags)
            or len(self.schedules) > 1
        )


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunerSpec:
    name: str = "successive_halving"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromotionSpec:
    top_k: int = 0
    backend: str = "builtin"
    datasets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Baseline:
    """A recipe enqueued before any sampled trial; ``fields`` are recipe fields (models filled in later)."""

    name: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class StudySpec:
    """A validated study file (see the module docstring for the TOML layout)."""

    name: str
    storage: str
    models: ModelsSpec
    objectives: ObjectivesSpec
    space: SpaceSpec
    sampler: SamplerSpec
    pruner: PrunerSpec
    n_trials: int | None
    timeout: float | None
    workers: int
    promotion: PromotionSpec
    baselines: tuple[Baseline, ...]
    output_dir: Path
    seed: int = 0
    max_retries: int = 2
    path: Path | None = None
    warm_start: tuple[WarmStart, ...] = ()  # other studies' COMPLETE trials as known points (search.study.warm_start)

    @property
    def directions(self) -> list[str]:
        return ["maximize"] * self.objectives.n_objectives

    @property
    def multi_objective(self) -> bool:
        return self.objectives.n_objectives > 1

    def replace(self, **changes: Any) -> StudySpec:
        """A copy with fields changed (CLI overrides such as ``--n-trials``), validated again."""
        import dataclasses

        new = dataclasses.replace(self, **changes)
        _check_budget(new, str(self.path or "<study>"))
        return new


# --------------------------------------------------------------------------------------------- parsing


def parse_duration(value: Any, field_name: str, src: str) -> float | None:
    """Seconds from a number or a string like ``"90s"``, ``"45m"``, ``"8h"``; None for none."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise StudySpecError(
            f"{src}: field `{field_name}` must be seconds or a string like '8h', got {value!r}"
        )
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*([0-9.]+)\s*([smhd]?)\s*", value)):
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    else:
        raise StudySpecError(
            f"{src}: field `{field_name}` must be seconds or a string like '8h', got {value!r}"
        )
    if seconds <= 0:
        raise StudySpecError(f"{src}: field `{field_name}` must be positive, got {value!r}")
    return seconds


def _parse_models(t: TableReader) -> ModelsSpec:
    toy = None
    raw_toy = t.get("toy")
    if raw_toy is not None:
        tt = t.table("toy")
        toy = ToySource(seed=tt.int_("seed", 0, 0) or 0, size=tt.str_("size", "full", TOY_SIZES) or "full")
        tt.finish()
    vlm, llm, base = t.str_("vlm"), t.str_("llm"), t.str_("base")
    if toy is None:
        if not vlm:
            raise t.fail("vlm", "is required (a local path or hub id of the VLM), or set models.toy")
        if not llm:
            raise t.fail("llm", "is required (a local path or hub id of the reasoning LLM)")
    elif vlm or llm or base:
        raise t.fail("toy", "cannot be combined with vlm/llm/base paths; use one or the other")
    spec = ModelsSpec(
        vlm=vlm,
        llm=llm,
        base=base,
        toy=toy,
        device=t.str_("device", "auto", DEVICES) or "auto",
        dtype=t.str_("dtype", None, ("float32", "bfloat16", "float16")),
        trust_remote_code=t.bool_("trust_remote_code", False),
        sources=t.str_("sources", "auto", SOURCES) or "auto",
    )
    t.finish()
    return spec


def _parse_objectives(t: TableReader, toy: bool) -> ObjectivesSpec:
    from search.study.spec_generation import parse_generation

    datasets = t.list_str("datasets", ())
    if not datasets and not toy:
        raise t.fail("datasets", "is required: the proxy datasets (names under data_dir, or TSV paths)")
    mode = t.str_("mode", "weighted", MODES) or "weighted"
    raw_w = t.get("weights", {})
    if not isinstance(raw_w, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in raw_w.values()
    ):
        raise t.fail("weights", f"must be a table of non-negative numbers, got {raw_w!r}")
    if datasets:
        from search.study.spec_weights import unknown_weight_keys

        unknown = unknown_weight_keys(raw_w, datasets, t.get("proxy_size", 0))
        if unknown:
            raise t.fail(
                "weights",
                f"names {unknown!r}, which match no dataset of objectives.datasets {list(datasets)!r} "
                "(nor its proxy); key a weight by a listed dataset's name",
            )
    if raw_w and sum(raw_w.get(d, 1.0) for d in datasets) <= 0:
        raise t.fail("weights", "sum to zero; give at least one dataset a positive weight")
    if mode == "multi" and datasets and len(datasets) < 2:
        raise t.fail("mode", "is 'multi' but only one dataset is listed; use 'weighted' or list two datasets")
    generation = parse_generation(t, toy)
    from search.study.constrained import parse_constrained

    constrained = parse_constrained(t, mode, datasets)
    spec = ObjectivesSpec(
        datasets=datasets,
        data_dir=t.str_("data_dir"),
        proxy_size=t.int_("proxy_size", 0, 0) or 0,
        proxy_seed=t.int_("proxy_seed", 0, 0) or 0,
        chunk_size=t.int_("chunk_size", 25, 1) or 25,
        mode=mode,
        weights={k: float(v) for k, v in raw_w.items()},
        max_new_tokens=generation.get("max_new_tokens", 64),  # 64 or the preset's when unset
        batch_size=t.int_("batch_size", 8, 1) or 8,
        limit=t.int_("limit", 0, 0) or 0,
        generation=generation,
        constrained=constrained,
    )
    import dataclasses

    engine, vllm = parse_engine(t.get("engine", "hf"), t.get("vllm"), spec.max_new_tokens, t.src)
    spec = dataclasses.replace(spec, engine=engine, vllm=vllm)
    t.finish()
    return spec


def _parse_space(t: TableReader) -> SpaceSpec:
    d = SpaceSpec()
    methods = t.list_str("methods", d.methods, method_registry().names())
    if not methods:
        raise t.fail("methods", "is empty; list at least one merge method")
    raw_c = t.get("components", None)
    components = d.components
    if raw_c is not None:
        if not isinstance(raw_c, list) or not raw_c:
            raise t.fail(
                "components", "must be a non-empty list of component subsets, e.g. [['attention', 'mlp']]"
            )
        subsets = []
        for s in raw_c:
            s = [s] if isinstance(s, str) else s
            if not isinstance(s, list) or not s or not all(isinstance(x, str) and x in COMPONENTS for x in s):
                raise t.fail(
                    "components", f"has {s!r}; each entry is a non-empty subset of {', '.join(COMPONENTS)}"
                )
            subsets.append(tuple(x for x in COMPONENTS if x in s))  # canonical order
        if len(set(subsets)) != len(subsets):
            raise t.fail("components", "has duplicate subsets")
        components = tuple(subsets)
    flags = t.list_str("component_flags", (), COMPONENTS)
    if flags and raw_c is not None:
        raise t.fail(
            "component_flags", "cannot be combined with space.components; pick one way to search them"
        )
    schedules = t.list_str("schedules", d.schedules, SHAPES)
    if not schedules:
        raise t.fail("schedules", "is empty; list at least one schedule shape")
    explicit_layers = t.int_("explicit_layers", 0, 0) or 0
    if "explicit" in schedules and explicit_layers < 1:
        raise t.fail(
            "explicit_layers", "must give the number of LM layers when 'explicit' is in space.schedules"
        )
    fixed = t.get("fixed", {})
    if not isinstance(fixed, dict):
        raise t.fail("fixed", f"must be a table of recipe fields, got {fixed!r}")
    own: dict[str, Param] = {}
    for name, pd in own_searched().items():
        if name in t.data:
            users = method_registry().using(name)
            if not set(users) & set(methods):
                raise t.fail(name, f"applies to {', '.join(users)} only, and space.methods lists none of them")
            own[name] = t.param(name, Param(pd.default, pd.default), lo=pd.lo, hi=pd.hi,
                                integer=pd.kind == "integer")  # fmt: skip
            if pd.open_low and own[name].low <= pd.lo:
                raise t.fail(name, f"must be > {pd.lo} (the range ({pd.lo}, {pd.hi}] of {name})")
    unused = sorted(
        k for k in fixed
        if k in method_registry().param_names() and not set(method_registry().using(k)) & set(methods)
    )  # fmt: skip
    if unused:
        raise t.fail(
            "fixed", f"sets {unused[0]!r}, which only {', '.join(method_registry().using(unused[0]))} take(s), "
            "and space.methods lists none of them; remove it or add such a method",
        )
    searched = {"method", *SEARCHED, *own, "components", "schedule"}
    clash = sorted(set(fixed) & searched)
    if clash:
        raise t.fail(
            "fixed", f"sets {clash!r}, which the space searches; give a fixed number in space.<field> instead"
        )
    spec = SpaceSpec(
        methods=methods,
        weight=t.param("weight", d.weight, lo=0.0, hi=1.0),
        vlm_weight=t.param("vlm_weight", d.vlm_weight, lo=-10.0, hi=10.0),
        llm_weight=t.param("llm_weight", d.llm_weight, lo=-10.0, hi=10.0),
        density=t.param("density", d.density, lo=0.0, hi=1.0),
        lambda_=t.param("lambda", d.lambda_, lo=0.0, hi=5.0),
        components=components,
        component_flags=flags,
        schedules=schedules,
        start=t.param("start", d.start, lo=0, hi=1000, integer=True),
        explicit_layers=explicit_layers,
        explicit_value=t.param("explicit_value", d.explicit_value, lo=0.0, hi=1.0),
        fixed=dict(fixed),
        own=own,
    )
    if spec.density.low <= 0 and any(m in method_registry().using("density") for m in methods):
        raise t.fail("density", "must be > 0 for ties / dare methods")
    _check_corners(t, spec)
    t.finish()
    return spec


def _check_corners(t: TableReader, space: SpaceSpec) -> None:
    """A method's cross-field rule (della: density ± epsilon inside (0, 1); breadcrumbs: density + gamma
    ≤ 1) must hold over the whole space, not only for some trials: each rule is checked at every corner of
    the ranged fields it reads (the rules are linear, so the corners bound the box)."""
    import itertools

    for name in space.methods:
        mdef = method_registry().get(name)
        if mdef.check is None:
            continue
        values: dict[str, list[Any]] = {}
        for pd in mdef.params:
            if pd.name in space.fixed:
                values[pd.name] = [space.fixed[pd.name]]
            elif pd.searched and pd.name in space.ranged():
                r = space.param(pd.name)
                values[pd.name] = sorted({r.low, r.high})
            else:
                values[pd.name] = [pd.default]
        for corner in itertools.product(*values.values()):
            problem = mdef.check(dict(zip(values, corner, strict=True)))
            if problem:
                ranged = [k for k, v in values.items() if len(v) > 1]
                ranged = [k for k in ranged if re.search(rf"\b{k}\b", problem)] or ranged  # the fields it read
                raise t.fail(
                    ranged[0] if ranged else "methods",
                    f"lets method {name!r} draw an invalid recipe: {problem}; narrow "
                    + " / ".join(f"space.{k}" for k in ranged),
                )


def _parse_baselines(raw: Any, src: str) -> tuple[Baseline, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise StudySpecError(f"{src}: field `baselines` must be an array of tables ([[baselines]])")
    out: list[Baseline] = []
    names: set[str] = set()
    for i, b in enumerate(raw):
        if not isinstance(b, dict):
            raise StudySpecError(f"{src}: field `baselines[{i}]` must be a table")
        name = b.get("name")
        if not isinstance(name, str) or not name:
            raise StudySpecError(
                f"{src}: field `baselines[{i}].name` is required (a label such as 'vlm_alone')"
            )
        if name in names:
            raise StudySpecError(f"{src}: field `baselines[{i}].name` repeats {name!r}; names must be unique")
        names.add(name)
        fields = {k: v for k, v in b.items() if k != "name"}
        for k in ("vlm", "llm", "base"):
            if k in fields:
                raise StudySpecError(
                    f"{src}: field `baselines[{i}].{k}` is not allowed: baselines use the models of [models]"
                )
        if fields.get("method") not in method_registry().names():
            raise StudySpecError(
                f"{src}: field `baselines[{i}].method` is {fields.get('method')!r}; allowed: {', '.join(method_registry().names())}"
            )
        out.append(Baseline(name=name, fields=fields))
    return tuple(out)


def _check_budget(spec: StudySpec, src: str) -> None:
    if spec.n_trials is None and spec.timeout is None:
        raise StudySpecError(
            f"{src}: field `n_trials` (or `timeout`) is required so the study knows when to stop"
        )
    if spec.n_trials is not None and spec.n_trials < 1:
        raise StudySpecError(f"{src}: field `n_trials` must be >= 1, got {spec.n_trials}")
    if spec.workers < 1:
        raise StudySpecError(f"{src}: field `workers` must be >= 1, got {spec.workers}")


def spec_from_dict(data: dict[str, Any], *, src: str = "<study>", base_dir: Path | None = None) -> StudySpec:
    """Validate a parsed study table; relative output paths resolve against ``base_dir`` (default: cwd)."""
    root = TableReader(data, "", src)
    name = root.str_("name")
    if not name or not _NAME_RE.match(name):
        raise root.fail("name", f"must be a non-empty name of letters, digits, '_', '-', '.', got {name!r}")
    base = base_dir or Path.cwd()
    out_raw = root.str_("output_dir")
    output_dir = Path(out_raw).expanduser() if out_raw else Path("runs") / name
    if not output_dir.is_absolute():
        output_dir = (base / output_dir).resolve()
    storage = root.str_("storage") or f"sqlite:///{output_dir / 'study.db'}"
    if "://" not in storage:
        raise root.fail(
            "storage", "must be a database URL (sqlite:///path.db, postgresql://..., mysql://...)"
        )
    models = _parse_models(root.table("models"))
    objectives = _parse_objectives(root.table("objectives"), toy=models.toy is not None)
    space = _parse_space(root.table("space"))
    st = root.table("sampler")
    sampler = SamplerSpec(
        name=st.str_("name", "tpe", SAMPLERS) or "tpe",
        seed=st.int_("seed", None, 0),
        options=dict(st.get("options", {}) or {}),
    )
    st.finish()
    pt = root.table("pruner")
    pruner = PrunerSpec(
        name=pt.str_("name", "successive_halving", PRUNERS) or "successive_halving",
        options=dict(pt.get("options", {}) or {}),
    )
    pt.finish()
    if objectives.mode == "multi" and pruner.name != "none":
        raise StudySpecError(
            f"{src}: field `pruner.name` is {pruner.name!r}, but Optuna prunes single-objective studies only; "
            "set pruner.name = 'none' for objectives.mode = 'multi'"
        )
    if sampler.name == "cmaes" and space.has_categoricals():
        raise StudySpecError(
            f"{src}: field `sampler.name` is 'cmaes', which cannot search categorical parameters "
            "(space.methods / components / component_flags / schedules with several choices); "
            "fix them to one choice or use 'tpe' / 'gp'"
        )
    if sampler.name == "cmaes" and objectives.mode == "multi":
        raise StudySpecError(f"{src}: field `sampler.name` 'cmaes' is single-objective; use 'nsga2' or 'tpe'")
    if sampler.name == "grid":
        m = set(space.methods)
        for fname, p, used in (
            *((n, space.param(n), bool(m & set(method_registry().using(n)))) for n in space.ranged()),
            ("start", space.start, "step" in space.schedules or any(method_registry().get(x).schedule for x in m)),
            ("explicit_value", space.explicit_value, "explicit" in space.schedules),
        ):
            if used and not p.fixed and p.step is None:
                raise StudySpecError(
                    f"{src}: field `space.{fname}` needs a `step` for the grid sampler, e.g. "
                    f"{{low = {p.low}, high = {p.high}, step = 0.1}}"
                )
    pm = root.table("promotion")
    promotion = PromotionSpec(
        top_k=pm.int_("top_k", 0, 0) or 0,
        backend=pm.str_("backend", "builtin") or "builtin",
        datasets=pm.list_str("datasets", ()),
    )
    pm.finish()
    spec = StudySpec(
        name=name,
        storage=storage,
        models=models,
        objectives=objectives,
        space=space,
        sampler=sampler,
        pruner=pruner,
        n_trials=root.int_("n_trials", None, 1),
        timeout=parse_duration(root.get("timeout"), "timeout", src),
        workers=root.int_("workers", 1, 1) or 1,
        promotion=promotion,
        baselines=_parse_baselines(root.get("baselines"), src),
        output_dir=output_dir,
        seed=root.int_("seed", 0, 0) or 0,
        max_retries=root.int_("max_retries", 2, 0) or 0,
        warm_start=parse_warm_start(root.get("warm_start"), src),
    )
    root.finish()
    _check_budget(spec, src)
    from search.study.constrained import check_study

    check_study(spec, src)
    return spec


def merge_components(spec: StudySpec) -> tuple[str, ...]:
    """Every component a recipe of this study can merge (the space's choices and the baselines'): what a
    worker must hold."""
    from merge_core.recipe import DEFAULT_COMPONENTS

    space = spec.space
    chosen = set(space.component_flags) or {c for subset in space.components for c in subset}
    for b in spec.baselines:
        comps = b.fields.get("components", DEFAULT_COMPONENTS)
        chosen |= {comps} if isinstance(comps, str) else set(comps)
    return tuple(c for c in COMPONENTS if c in chosen)


def load_spec(path: str | Path, *, base_dir: Path | None = None) -> StudySpec:
    """Read and validate a study TOML file; raises :class:`StudySpecError` naming the file and field."""
    p = Path(path)
    if not p.is_file():
        raise StudySpecError(f"{p}: study file not found; pass the path of a studies/*.toml file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudySpecError(f"{p}: not valid TOML ({err}); fix the syntax") from None
    import dataclasses

    spec = spec_from_dict(data, src=str(p), base_dir=base_dir)
    return dataclasses.replace(spec, path=p.resolve())
