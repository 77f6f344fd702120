"""Export a trial's recipe: JSON (re-merges bit for bit with ``mergesearch merge``) or a mergekit YAML.

The JSON is ``merge_core.Recipe.to_json()`` of the stored recipe: the exact object the worker merged in
memory, and ``merge_to_disk`` uses the same plan, so ``mergesearch merge recipe.json --out DIR`` writes
the very weights that were scored.

mergekit cannot load a VLM (arcee-ai/mergekit#576), so the YAML describes the language-model side only:
point the VLM entry at the VLM's language model saved as a causal LM. Per-layer weights are written as
lists of one value per layer (mergekit interpolates lists over layers; with L values it is exact) and
components as ``filter`` entries. What mergekit cannot express raises :class:`ExportError`: the
``vlm_merging`` compat mode, ``rescale = inverse_density``, and task-vector recipes that keep some layer
components the VLM's (mergekit has no "keep model X" for them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from merge_core.atomic import write_text_atomic
from merge_core.errors import MergesearchError

# our components → substrings of tensor names that mergekit's `filter` matches
_FILTERS = {"attention": "self_attn", "mlp": "mlp", "norm": "norm"}  # "norm" also hits the final norm


class ExportError(MergesearchError):
    """The recipe cannot be written in the requested format."""


def recipe_json(recipe: dict[str, Any]) -> str:
    """The canonical recipe JSON (validated through ``merge_core.Recipe``)."""
    from merge_core import Recipe

    return Recipe.from_dict(recipe).to_json() + "\n"


def num_layers(model_dir: str) -> int:
    """Number of LM layers from a checkpoint's config.json (``text_config`` for VLMs)."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file():
        raise ExportError(
            f"{cfg_path}: not found; the mergekit export needs the VLM's config for its layer count"
        )
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for c in (cfg.get("text_config") or {}, cfg):
        if isinstance(c.get("num_hidden_layers"), int):
            return int(c["num_hidden_layers"])
    raise ExportError(f"{cfg_path}: no num_hidden_layers; cannot size the per-layer weights")


def _config_dtype(model_dir: str) -> str | None:
    """The checkpoint's own dtype (config ``dtype`` / ``torch_dtype``), the recipe default; None if unknown."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for c in (cfg, cfg.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if isinstance(c.get(key), str):
                return c[key]
    return None


def mergekit_config(recipe: dict[str, Any], n_layers: int | None = None) -> dict[str, Any]:
    """The mergekit configuration (a dict ready for YAML) of the recipe's language-model merge."""
    from merge_core import Recipe
    from merge_core.methods import registry
    from merge_core.schedule import layer_factors

    r = Recipe.from_dict(recipe)
    mdef = registry.get(r.method)
    if mdef.mergekit is None:
        raise ExportError(f"recipe method {r.method!r} has no mergekit equivalent; export JSON")
    if r.compat != "mergekit":
        raise ExportError(
            f"recipe compat {r.compat!r} (the paper's code) has no mergekit equivalent; export JSON"
        )
    if r.rescale == "inverse_density":
        raise ExportError(
            "recipe rescale 'inverse_density' has no mergekit equivalent (mergekit rescales by L1)"
        )
    L = n_layers if n_layers is not None else num_layers(r.vlm)
    factors = layer_factors(r.schedule, L)
    layer_comps = [c for c in ("attention", "mlp", "norm") if c in r.components]

    def per_layer(scale: float, comp: str) -> list[float]:
        return [round(scale * r.component_weight(comp) * f, 10) for f in factors]

    def weights(scale: float, outside: float) -> list[dict[str, Any]] | float:
        """LLM weight: one list per component filter, ``outside`` for tensors outside the components."""
        entries: list[dict[str, Any]] = []
        for c in layer_comps:
            entries.append({"filter": _FILTERS[c], "value": per_layer(scale, c)})
        entries.append({"value": outside})
        return entries

    cfg: dict[str, Any] = {}
    dtype = r.dtype or _config_dtype(r.vlm)
    if dtype:
        cfg["dtype"] = dtype
    if not r.is_task_vector:
        w = float(r.weight or 0.0)
        llm = weights(w, 0.0)
        vlm = [
            {"filter": e["filter"], "value": [round(1.0 - v, 10) for v in e["value"]]}
            if "filter" in e
            else {"value": 1.0}
            for e in llm  # type: ignore[union-attr]
        ]
        cfg.update(
            merge_method="linear",
            models=[
                {"model": r.vlm, "parameters": {"weight": vlm}},
                {"model": r.llm, "parameters": {"weight": llm}},
            ],
            parameters={"normalize": True},
        )
        return cfg
    if set(layer_comps) != {"attention", "mlp", "norm"}:
        raise ExportError(
            f"recipe components {list(r.components)} keep some layer tensors the VLM's, which mergekit cannot "
            f"express for {r.method!r} (no 'keep this model' in task-vector merges); export JSON instead"
        )
    if not r.base:
        raise ExportError(f"recipe method {r.method!r} needs a base model for mergekit")
    llm_params: dict[str, Any] = {"weight": weights(float(r.llm_weight or 0.0), 0.0)}
    vlm_params: dict[str, Any] = {"weight": float(r.vlm_weight or 0.0)}
    for name in mdef.mergekit_model_params:  # per-model fields, the same for both models
        llm_params[name] = vlm_params[name] = r.param(name)
    params: dict[str, Any] = {
        "normalize": bool(r.normalize),
        "lambda": r.lambda_ if r.lambda_ is not None else 1.0,
    }
    for name in mdef.mergekit_params:
        params[name] = r.rescale == "l1" if name == "rescale" else r.param(name)
    cfg.update(
        merge_method=mdef.mergekit,
        base_model=r.base,
        models=[{"model": r.vlm, "parameters": vlm_params}, {"model": r.llm, "parameters": llm_params}],
        parameters=params,
    )
    return cfg


def mergekit_yaml(recipe: dict[str, Any], n_layers: int | None = None) -> str:
    """:func:`mergekit_config` as YAML text with a header saying what it covers."""
    import yaml

    from merge_core import Recipe

    rid = Recipe.from_dict(recipe).id
    head = (
        f"# mergekit config for the language-model side of recipe {rid} (exported by mergesearch).\n"
        "# mergekit cannot load a VLM: replace the VLM path by its language model saved as a causal LM.\n"
        "# Vision tower and projector stay the VLM's. mergesearch keeps embed_tokens / lm_head the VLM's: copy them\n"
        "# back from the VLM after a task-vector merge (here they get the LLM weight 0, i.e. base + a1 * tau_vlm).\n"
    )
    return head + yaml.safe_dump(mergekit_config(recipe, n_layers), sort_keys=False)


def provenance_path(out: Path) -> Path:
    """Where :func:`export_recipe` writes a recipe's provenance: ``r.json`` → ``r.provenance.json``."""
    return Path(out).with_suffix(".provenance.json")


def export_recipe(
    recipe: dict[str, Any],
    out: Path,
    fmt: str = "json",
    n_layers: int | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the recipe as ``json`` or ``mergekit`` YAML to ``out`` (atomically).

    ``provenance`` (how the recipe was scored: study, trial, scores, the generation settings) goes beside
    it in :func:`provenance_path` — the recipe file itself stays exactly ``Recipe.to_json()``. It is written
    first, so a recipe file on disk always has its provenance."""
    if fmt == "json":
        text = recipe_json(recipe)
    elif fmt == "mergekit":
        text = mergekit_yaml(recipe, n_layers)
    else:
        raise ExportError(f"--format {fmt!r} is unknown; use json or mergekit")
    if provenance is not None:
        from merge_core import Recipe

        record = {
            "schema": "mergesearch.provenance/v1",
            "recipe_id": Recipe.from_dict(recipe).id,
            **provenance,
        }
        write_text_atomic(provenance_path(out), json.dumps(record, indent=2, sort_keys=True) + "\n")
    return write_text_atomic(out, text)


def provenance(ev: Any, trial: Any, how: str) -> dict[str, Any]:
    """Where an exported recipe comes from and what it scored: trial number, how it was chosen, its scores
    with 95% intervals on the proxy, the full sets and the held-out items, and its paired gains over each
    baseline there (``ev``: a :class:`search.results.evidence.StudyEvidence`; scopes without data are left out)."""
    scores: dict[str, Any] = {}
    gains: dict[str, Any] = {}
    for scope in ("proxy", "full", "held_out"):
        s = ev.scored(trial, scope)
        if s.per_dataset:
            scores[scope] = {
                "per_dataset": {d: e.to_dict() for d, e in s.per_dataset.items()},
                "weighted": s.weighted.to_dict() if s.weighted is not None else None,
            }
        for name, base in ev.baselines.items():
            if base.number == trial.number:
                continue
            per, w = ev.gains(trial, base, scope)
            if w is not None:
                gains.setdefault(name, {})[scope] = {
                    "weighted": w.to_dict(),
                    "per_dataset": {d: g.to_dict() for d, g in per.items()},
                }
    return {
        "study": ev.study.study_name,
        "trial": trial.number,
        "baseline": trial.user_attrs.get("baseline"),
        "chosen": how,
        "recipe_id": trial.user_attrs.get("recipe_id"),
        "scores": scores,
        "gains": gains,
        "intervals": "95%: Wilson per dataset, bootstrap over items for weighted, paired bootstrap for gains; "
        "p_value: exact McNemar",
    }


def trial_provenance(ev: Any, trial: Any, how: str) -> dict[str, Any]:
    """Everything :func:`export_recipe` records beside a trial's recipe: :func:`provenance`, the trial's
    objective values and the generation settings it was scored with (None for trials recorded before)."""
    return {
        **provenance(ev, trial, how),
        "values": list(trial.values) if trial.values is not None else None,
        "generation": trial.user_attrs.get("generation"),
    }


def write_provenance(recipe_path: Path, ev: Any, trial: Any, how: str) -> Path:
    """:func:`trial_provenance` in :func:`provenance_path` beside an already exported recipe (the recipe
    file itself stays the exact recipe, so it re-merges bit for bit)."""
    record = {"schema": "mergesearch.provenance/v1", **trial_provenance(ev, trial, how)}
    return write_text_atomic(provenance_path(recipe_path), json.dumps(record, indent=2, sort_keys=True) + "\n")
