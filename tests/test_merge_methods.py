"""Every method, schedule and component option against an independent reference written here with torch.

The reference works on raw state dicts read with safetensors.torch.load_file and its own name mapping;
it does not call merge_core.  DARE masks follow the documented contract, keyed by the first 8 bytes of
sha256(f"{seed}\\0{canonical}\\0{source}") >> 1: schema v2 hashes entry i with SplitMix64 (computed here
with numpy's wrapping uint64), schema v1 seeds a CPU torch.Generator with the key (keep where rand < density).
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from merge_core import Recipe, merge_to_disk
from tests.tiny.models import cached_trio

# ----------------------------------------------------------------------------------------- reference
LM_PREFIX = {
    "qwen2_vl": [("model.", "model.")],
    "qwen2_5_vl": [("model.", "model.")],
    "llava_next": [("language_model.model.", "model."), ("language_model.lm_head.weight", "lm_head.weight")],
    "llava": [("language_model.model.", "model."), ("language_model.lm_head.weight", "lm_head.weight")],
    "idefics2": [("model.text_model.", "model."), ("lm_head.weight", "lm_head.weight")],
}


def canon(family: str, key: str) -> str | None:
    if key == "lm_head.weight" and family.startswith("qwen"):
        return key
    for prefix, repl in LM_PREFIX[family]:
        if key.startswith(prefix) and not key.startswith(("model.vision_model", "model.connector")):
            return repl + key[len(prefix) :]
    return None


def component(c: str) -> tuple[str, int | None]:
    m = re.match(r"model\.layers\.(\d+)\.(\w+)", c)
    if m:
        kind = m.group(2)
        comp = {"self_attn": "attention", "mlp": "mlp"}.get(kind, "norm")
        return comp, int(m.group(1))
    if c == "model.norm.weight":
        return "norm", -1
    if c == "model.embed_tokens.weight":
        return "embed", 0
    assert c == "lm_head.weight", c
    return "lm_head", -1


def r_of(schedule: dict, i: int, n: int) -> float:
    shape = schedule.get("shape", "constant")
    if shape == "constant":
        return 1.0
    if shape == "linear":
        return i / (n - 1)
    if shape == "loglinear":
        return math.log(1 + i) / math.log(n)
    if shape == "step":
        return 0.0 if i < schedule["start"] else 1.0
    return schedule["values"][i]


def dare_keep(
    seed: int, name: str, source: int, shape: torch.Size, density: float, schema: str | None = None
) -> torch.Tensor:
    s = int.from_bytes(hashlib.sha256(f"{seed}\x00{name}\x00{source}".encode()).digest()[:8], "little") >> 1
    if schema == "mergesearch.recipe/v1":
        g = torch.Generator().manual_seed(s)
        return torch.rand(shape, generator=g) < density
    n = math.prod(shape)
    z = (np.arange((n + 3) // 4, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(s)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, 1)):
        z = (z ^ (z >> np.uint64(shift))) * np.uint64(mult)
    lanes = z.astype("<u8").view("<i2")[:n]  # lane i % 4 of hash i // 4, as signed int16
    return torch.from_numpy(lanes < int(density * 65536) - 32768).reshape(shape)


def topk_keep(t: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1:
        return torch.ones_like(t, dtype=torch.bool)
    k = int(density * t.numel())
    order = torch.argsort(t.abs().flatten(), descending=True, stable=True)[:k]
    keep = torch.zeros(t.numel(), dtype=torch.bool)
    keep[order] = True
    return keep.view(t.shape)


def ref_tensor(
    d: dict, name: str, v: torch.Tensor, lm: torch.Tensor, b: torch.Tensor | None, w: float
) -> torch.Tensor:
    """One merged tensor in fp32 (w = the scheduled LLM weight / llm_weight)."""
    method, compat = d["method"], d.get("compat", "mergekit")
    v32, x32 = v.float(), lm.float()
    if method in ("linear", "layer_swap"):
        if compat == "vlm_merging":
            return (1 - w) * v32 + w * x32
        return v32 + w * (x32 - v32)
    b32 = b.float()
    a = [d.get("vlm_weight", 1.0), w]
    taus = [v32 - b32, x32 - b32]
    density = d.get("density", 1.0)
    if compat == "vlm_merging":
        if method == "ties":
            taus = [t * topk_keep(t, density) for t in taus]
        elif density < 1:
            taus = [
                t * dare_keep(d.get("seed", 0), name, i, t.shape, density, d.get("schema"))
                for i, t in enumerate(taus)
            ]
        if method == "dare_linear":
            return b32 + a[0] * taus[0] + a[1] * taus[1]
        sign = torch.where(taus[0] + taus[1] >= 0, 1.0, -1.0)
        keeps = [(t != 0) & (torch.sign(t) == sign) for t in taus]
        total = a[0] * taus[0] * keeps[0] + a[1] * taus[1] * keeps[1]
        return b32 + total / torch.clamp(keeps[0].float() + keeps[1].float(), min=1)
    rescale = d.get("rescale", {"ties": "none", "dare_ties": "l1", "dare_linear": "l1"}.get(method))
    if method != "task_arithmetic" and density < 1:
        new = []
        for i, t in enumerate(taus):
            keep = (
                topk_keep(t, density)
                if method == "ties"
                else dare_keep(d.get("seed", 0), name, i, t.shape, density, d.get("schema"))
            )
            kept = t * keep
            if rescale == "l1":
                kept = kept * (t.abs().double().sum() / kept.abs().double().sum()).float()
            elif rescale == "inverse_density":
                kept = kept / density
            new.append(kept)
        taus = new
    u = [a[0] * taus[0], a[1] * taus[1]]
    normalize = d.get("normalize", method == "ties")
    if method in ("ties", "dare_ties"):
        sign = torch.where(u[0] + u[1] >= 0, 1.0, -1.0)
        keeps = [torch.sign(x) == sign for x in u]
        delta = u[0] * keeps[0] + u[1] * keeps[1]
        if normalize:
            div = a[0] * keeps[0] + a[1] * keeps[1]
            delta = delta / torch.where(div == 0, 1.0, div)
    else:
        delta = u[0] + u[1]
        if normalize:
            delta = delta / (a[0] + a[1])
    return b32 + d.get("lambda", 1.0) * delta


def reference_merge(family: str, trio, d: dict) -> dict[str, torch.Tensor]:
    vsd = load_file(trio.vlm / "model.safetensors")
    lsd = load_file(trio.llm / "model.safetensors")
    bsd = load_file(trio.base / "model.safetensors")
    n = 1 + max(int(m.group(1)) for k in vsd if (m := re.search(r"layers\.(\d+)\.", k)) and canon(family, k))
    comps = d.get("components", ["attention", "mlp", "norm"])
    cw = d.get("component_weights", {})
    out = {}
    for key, v in vsd.items():
        c = canon(family, key)
        if c is None:
            out[key] = v
            continue
        comp, layer = component(c)
        if comp not in comps:
            out[key] = v
            continue
        layer = n - 1 if layer == -1 else layer
        f = r_of(d.get("schedule", {}), layer, n) * cw.get(comp, 1.0)
        w = (d["weight"] if "weight" in d else d.get("llm_weight", 1.0)) * f
        partner = c if c in lsd else "model.embed_tokens.weight"
        lt, b = lsd[partner], bsd[partner]
        rows = min(v.shape[0], lt.shape[0])
        merged = v.clone()
        merged[:rows] = ref_tensor(d, c, v[:rows], lt[:rows], b[:rows], w).to(v.dtype)
        out[key] = merged
    return out


def check(family: str, trio, d: dict, out_dir: Path, *, exact: bool = False) -> dict[str, torch.Tensor]:
    recipe = Recipe.from_dict({"vlm": str(trio.vlm), "llm": str(trio.llm), "base": str(trio.base), **d})
    out = merge_to_disk(recipe, out_dir, progress=False)
    got = load_file(out / "model.safetensors")
    want = reference_merge(family, trio, d)
    assert got.keys() == want.keys()
    changed = 0
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        if exact:
            assert torch.equal(got[k], want[k]), k
        else:
            # fp32: a few ulps (summation order); bf16: one rounding step (lerp's fused multiply-add)
            tol = (
                {"rtol": 2e-6, "atol": 2e-7}
                if got[k].dtype == torch.float32
                else {"rtol": 8e-3, "atol": 1e-6}
            )
            torch.testing.assert_close(got[k], want[k], **tol, msg=k)
        changed += not torch.equal(got[k], load_file(trio.vlm / "model.safetensors")[k])
    assert changed > 0, "the recipe changed nothing"
    return got


# ----------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return cached_trio(tmp_path_factory, "qwen2_vl", vlm_extra_vocab=3)


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    return cached_trio(tmp_path_factory, "llava_next", num_layers=4)


@pytest.mark.parametrize(
    "d",
    [
        {"method": "linear", "weight": 0.3},
        {"method": "linear", "weight": 0.25, "components": ["attention", "mlp", "norm", "embed", "lm_head"]},
        {"method": "layer_swap", "weight": 0.4, "schedule": {"shape": "step", "start": 1}},
        {"method": "task_arithmetic", "vlm_weight": 0.5, "llm_weight": 1.0, "lambda": 0.8},
        {
            "method": "task_arithmetic",
            "vlm_weight": 0.7,
            "llm_weight": 0.6,
            "normalize": True,
            "components": ["embed", "lm_head", "mlp"],
        },
        {"method": "ties", "density": 0.4, "vlm_weight": 1.0, "llm_weight": 0.7},
        {
            "method": "ties",
            "density": 0.5,
            "vlm_weight": 0.6,
            "llm_weight": -0.4,
            "rescale": "l1",
            "normalize": False,
            "lambda": 1.5,
        },
        {"method": "dare_ties", "density": 0.5, "seed": 7},
        {"method": "dare_linear", "density": 0.3, "rescale": "inverse_density", "normalize": True, "seed": 3},
        {"method": "dare_linear", "density": 0.6, "rescale": "none", "vlm_weight": 0.9, "llm_weight": 0.4},
        {"method": "dare_ties", "density": 0.5, "seed": 7, "schema": "mergesearch.recipe/v1"},
        {"method": "dare_linear", "density": 0.3, "seed": 3, "schema": "mergesearch.recipe/v1"},
    ],
    ids=lambda d: "-".join(f"{v}" for v in d.values())[:60],
)
def test_methods_match_reference(qwen, tmp_path, d):
    check("qwen2_vl", qwen, d, tmp_path / "out")


@pytest.mark.parametrize(
    "d",
    [
        {"method": "linear", "weight": 0.5, "schedule": {"shape": "linear"}},
        {"method": "linear", "weight": 0.5, "schedule": {"shape": "loglinear"}, "components": ["attention"]},
        {"method": "linear", "weight": 0.6, "schedule": {"shape": "step", "start": 2}},
        {
            "method": "linear",
            "weight": 0.5,
            "schedule": {"shape": "explicit", "values": [0.1, 0.9, 0.0, 0.5]},
            "component_weights": {"attention": 1.0, "mlp": 0.5, "norm": 2.0},
        },
        {
            "method": "ties",
            "density": 0.5,
            "llm_weight": 0.8,
            "schedule": {"shape": "loglinear"},
            "components": ["attention", "mlp", "norm", "embed", "lm_head"],
            "component_weights": {"mlp": 0.3},
        },
        {"method": "dare_ties", "density": 0.7, "schedule": {"shape": "linear"}, "seed": 11},
    ],
    ids=lambda d: "-".join(f"{v}" for v in d.values())[:60],
)
def test_schedules_and_component_weights_match_reference(deep, tmp_path, d):
    check("llava_next", deep, d, tmp_path / "out")


@pytest.mark.parametrize(
    "d",
    [
        {"method": "linear", "weight": 0.1},
        {"method": "layer_swap", "weight": 0.1, "schedule": {"shape": "step", "start": 1}},
        {"method": "ties", "vlm_weight": 1.6, "llm_weight": 0.2, "density": 0.2},
        {"method": "dare_ties", "vlm_weight": 1.0, "llm_weight": 0.5, "density": 0.5, "seed": 5},
        {"method": "dare_linear", "vlm_weight": 0.9, "llm_weight": 0.3, "density": 0.4},
        {"method": "dare_ties", "density": 0.5, "seed": 5, "schema": "mergesearch.recipe/v1"},
    ],
    ids=lambda d: d["method"] + d.get("schema", "")[-3:],
)
def test_compat_vlm_merging_matches_paper_formulas(qwen, tmp_path, d):
    check("qwen2_vl", qwen, {**d, "compat": "vlm_merging"}, tmp_path / "out")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava", "idefics2"])
def test_other_families_match_reference(tmp_path_factory, tmp_path, family):
    trio = cached_trio(tmp_path_factory, family, vlm_extra_vocab=2)
    check(
        family,
        trio,
        {"method": "ties", "density": 0.5, "components": ["attention", "mlp", "norm", "embed", "lm_head"]},
        tmp_path / "a",
    )
    check(family, trio, {"method": "linear", "weight": 0.2}, tmp_path / "b")


def test_bf16_linear_is_fp32_lerp_rounded_once(tmp_path_factory, tmp_path):
    trio = cached_trio(tmp_path_factory, "qwen2_vl", dtype=torch.bfloat16)
    got = check("qwen2_vl", trio, {"method": "linear", "weight": 0.37}, tmp_path / "out")
    v, lt = load_file(trio.vlm / "model.safetensors"), load_file(trio.llm / "model.safetensors")
    for k in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
    ):
        assert torch.equal(got[k], torch.lerp(v[k].float(), lt[k].float(), 0.37).bfloat16()), k


def test_bf16_ties_with_many_ties_at_the_threshold(tmp_path_factory, tmp_path):
    # bf16 task vectors take few distinct values, so the k-th largest |τ| is shared by many entries:
    # exactly k must be kept, the lowest indices first
    trio = cached_trio(tmp_path_factory, "qwen2_vl", dtype=torch.bfloat16)
    check("qwen2_vl", trio, {"method": "ties", "density": 0.3, "vlm_weight": 0.8}, tmp_path / "out")


def test_dtype_override_casts_everything(qwen, tmp_path):
    recipe = Recipe.from_dict(
        {"vlm": str(qwen.vlm), "llm": str(qwen.llm), "method": "linear", "weight": 0.5, "dtype": "bfloat16"}
    )
    out = merge_to_disk(recipe, tmp_path / "o", progress=False)
    got = load_file(out / "model.safetensors")
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    v, lt = load_file(qwen.vlm / "model.safetensors"), load_file(qwen.llm / "model.safetensors")
    k = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(got[k], torch.lerp(v[k].bfloat16(), lt[k].bfloat16(), 0.5))


@pytest.mark.parametrize(
    "d",
    [
        {"method": "ties", "density": 0.3, "vlm_weight": 0.8, "rescale": "l1"},
        {"method": "dare_ties", "density": 0.4, "seed": 2},
        {"method": "ties", "density": 0.2, "vlm_weight": 1.6, "llm_weight": 0.2, "compat": "vlm_merging"},
    ],
    ids=lambda d: d["method"] + d.get("compat", ""),
)
def test_chunked_engine_matches_reference_across_chunk_boundaries(tmp_path_factory, tmp_path, monkeypatch, d):
    # tiny tensors fit one chunk; shrink the chunk so the top-k tie quota and masks cross boundaries
    from merge_core.methods import engine

    monkeypatch.setattr(engine, "CPU_CHUNK", 1000)
    trio = cached_trio(tmp_path_factory, "qwen2_vl", dtype=torch.bfloat16)
    if "compat" not in d:
        d = {**d, "components": ["attention", "mlp", "norm", "embed", "lm_head"]}
    check("qwen2_vl", trio, d, tmp_path / "out")


def test_topk_keeps_exactly_k_with_ties_lowest_index_first():
    from merge_core.methods.engine import Magnitude, whole_mask

    g = torch.Generator().manual_seed(0)
    base = torch.zeros(3001)
    theta = (torch.randint(-4, 5, (3001,), generator=g) * 0.5).float()  # few distinct values: many ties
    for density in (0.01, 0.1, 0.37, 0.5, 0.99):
        k = int(density * theta.numel())
        order = torch.argsort(theta.abs(), descending=True, stable=True)[:k]
        want = torch.zeros(3001, dtype=torch.bool)
        want[order] = True
        for chunk in (3001, 1000, 7):
            from merge_core.methods import engine

            old, engine.CPU_CHUNK = engine.CPU_CHUNK, chunk
            try:
                got = whole_mask(Magnitude(density), theta, base)
            finally:
                engine.CPU_CHUNK = old
            assert int(got.sum()) == k and torch.equal(got, want), (density, chunk)


def test_partner_with_tied_embeddings_supplies_its_head(tmp_path_factory, tmp_path):
    # VLM with its own lm_head, LLM and base that tie theirs: the head merges with their embeddings
    import json
    import shutil

    from safetensors.torch import save_file

    from tests.tiny.models import Trio

    src = cached_trio(tmp_path_factory, "qwen2_vl", vlm_extra_vocab=3)
    dirs = {}
    for part in ("llm", "base"):
        d = shutil.copytree(getattr(src, part), tmp_path / part)
        sd = load_file(d / "model.safetensors")
        del sd["lm_head.weight"]
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        cfg = json.loads((d / "config.json").read_text())
        cfg["tie_word_embeddings"] = True
        (d / "config.json").write_text(json.dumps(cfg))
        dirs[part] = d
    trio = Trio("qwen2_vl", src.vlm, dirs["llm"], dirs["base"])
    got = check(
        "qwen2_vl", trio, {"method": "ties", "density": 0.5, "components": ["lm_head"]}, tmp_path / "out"
    )
    vlm = load_file(src.vlm / "model.safetensors")
    assert not torch.equal(got["lm_head.weight"][:128], vlm["lm_head.weight"][:128])
    assert torch.equal(got["lm_head.weight"][128:], vlm["lm_head.weight"][128:])  # image rows stay the VLM's
    assert torch.equal(got["model.embed_tokens.weight"], vlm["model.embed_tokens.weight"])
