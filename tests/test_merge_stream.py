"""Streamed merge to disk: loadable output, sharding, copied files, model card, atomicity, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from merge_core import MergesearchError, Recipe, merge_to_disk
from search.cli.main import main
from tests.tiny.models import cached_trio

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return cached_trio(tmp_path_factory, "qwen2_vl", vlm_extra_vocab=3)


def recipe_for(trio, **d) -> Recipe:
    return Recipe.from_dict({"vlm": str(trio.vlm), "llm": str(trio.llm), "base": str(trio.base), **d})


def all_tensors(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_output_loads_generates_and_documents_itself(trio, tmp_path):
    src = tmp_path / "vlm"
    shutil.copytree(trio.vlm, src)
    (src / "tokenizer_config.json").write_text('{"model_max_length": 512}')
    (src / "chat_template.jinja").write_text("{{ messages }}")
    (src / "preprocessor_config.json").write_text('{"patch_size": 14}')
    recipe = Recipe.from_dict({**recipe_for(trio, method="ties", density=0.5).to_dict(), "vlm": str(src)})
    out = merge_to_disk(recipe, tmp_path / "out", progress=False)
    for name in (
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "generation_config.json",
    ):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert Recipe.from_json((out / "recipe.json").read_text()) == recipe
    card = (out / "README.md").read_text()
    assert recipe.id in card and "ties" in card
    for f in (src / "model.safetensors", trio.llm / "model.safetensors", trio.base / "model.safetensors"):
        assert hashlib.sha256(f.read_bytes()).hexdigest() in card, f
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    gen = model.generate(input_ids=torch.tensor([[1, 5, 6]]), max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 7)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dir left


def test_sharded_output_with_index_equals_single_file(trio, tmp_path):
    recipe = recipe_for(trio, method="dare_ties", density=0.5, seed=1)
    one = merge_to_disk(recipe, tmp_path / "one", progress=False)
    many = merge_to_disk(recipe, tmp_path / "many", shard_size="40KB", progress=False)
    shards = sorted(many.glob("model-*-of-*.safetensors"))
    assert len(shards) > 3 and not (many / "model.safetensors").exists()
    index = json.loads((many / "model.safetensors.index.json").read_text())
    a, b = all_tensors(one), all_tensors(many)
    assert set(index["weight_map"]) == set(a) == set(b)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in a.values())
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert k in load_file(many / index["weight_map"][k])
    AutoModelForImageTextToText.from_pretrained(many)  # loads from the index


def test_same_recipe_gives_identical_bytes_across_processes(trio, tmp_path):
    recipe = recipe_for(trio, method="dare_linear", density=0.4, seed=123)
    out = merge_to_disk(recipe, tmp_path / "a", progress=False)
    (tmp_path / "r.json").write_text(recipe.to_json())
    env = {**os.environ, "PYTHONHASHSEED": "977"}  # DARE seeds must not come from Python's salted hash()
    # only merge_core's commands: the full CLI imports every provider, which is slow and beside the point
    code = (
        "import argparse, sys; from merge_core import cli; p = argparse.ArgumentParser(); "
        "cli.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    subprocess.run(
        [sys.executable, "-c", code, "merge", str(tmp_path / "r.json"), "--out", str(tmp_path / "b"), "--quiet"],
        check=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    vlm = load_file(trio.vlm / "model.safetensors")
    assert not torch.equal(
        load_file(out / "model.safetensors")["model.layers.0.mlp.up_proj.weight"],
        vlm["model.layers.0.mlp.up_proj.weight"],
    )


def test_merge_threads_do_not_change_the_bytes(trio, tmp_path, monkeypatch):
    recipe = recipe_for(trio, method="ties", density=0.4)
    got = {}
    torch_threads = torch.get_num_threads()
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("MERGESEARCH_MERGE_THREADS", threads)
        out = merge_to_disk(recipe, tmp_path / f"t{threads}", progress=False, shard_size="20KB")
        got[threads] = {f.name: f.read_bytes() for f in sorted(out.glob("*.safetensors"))}
    assert len(got["1"]) > 1 and got["1"] == got["2"] == got["3"]
    assert torch.get_num_threads() == torch_threads  # restored after the merge
    for bad in ("0", "two"):
        monkeypatch.setenv("MERGESEARCH_MERGE_THREADS", bad)
        with pytest.raises(MergesearchError, match="^MERGESEARCH_MERGE_THREADS is"):
            merge_to_disk(recipe, tmp_path / "bad", progress=False)
        assert not (tmp_path / "bad").exists()


HEAVY = ("transformers", "pandas", "optuna", "ray", "rich", "PIL")


@pytest.mark.parametrize("how", ["merge_to_disk", "cli"])
def test_a_merge_to_disk_imports_no_transformers(trio, tmp_path, how):
    # a fresh process: merging to disk needs torch and safetensors, not transformers (nor the search stack)
    recipe = recipe_for(trio, method="ties", density=0.5)
    (tmp_path / "r.json").write_text(recipe.to_json())
    call = {
        "merge_to_disk": "from merge_core import load_recipe, merge_to_disk; "
        "merge_to_disk(load_recipe(sys.argv[1]), sys.argv[2], progress=False)",
        "cli": "from search.cli.main import main; assert main(['merge', sys.argv[1], '--out', sys.argv[2], '--quiet']) == 0",
    }[how]
    code = f"import json, sys; {call}; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "r.json"), str(tmp_path / "out")],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_dare_masks_keep_about_density_and_depend_on_seed(trio, tmp_path):
    k = "model.layers.1.mlp.down_proj.weight"
    base = load_file(trio.base / "model.safetensors")[k]
    vlm = load_file(trio.vlm / "model.safetensors")[k]
    outs = []
    for seed in (1, 2):
        # llm_weight 0 and vlm_weight 1 with no rescale: the output's task vector is the dropped τ_vlm
        r = recipe_for(trio, method="dare_linear", density=0.3, seed=seed, rescale="none", llm_weight=0.0)
        outs.append(
            load_file(merge_to_disk(r, tmp_path / str(seed), progress=False) / "model.safetensors")[k]
        )
    kept = [(o - base) != 0 for o in outs]
    for m in kept:
        assert 0.27 < m.float().mean().item() < 0.33
    assert not torch.equal(kept[0], kept[1])
    torch.testing.assert_close(outs[0][kept[0]], vlm[kept[0]])  # kept entries are the VLM's values


def test_existing_output_is_refused_then_replaced_with_overwrite(trio, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = tmp_path / "r.json"
    r.write_text(recipe_for(trio, method="linear", weight=0.2).to_json())
    assert main(["merge", str(r), "--out", str(out), "--quiet"]) == 2
    assert (out / "keep.txt").exists() and not (out / "model.safetensors").exists()
    assert main(["merge", str(r), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.json"]


def test_cli_inspect_summary(trio, capsys):
    assert main(["inspect", str(trio.vlm), str(trio.llm), "--base", str(trio.base)]) == 0
    text = capsys.readouterr().out
    assert "qwen2_vl" in text and "2 decoder layers" in text and "VLM 131, LLM 128" in text and "OK" in text


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next"])
def test_in_memory_tensor_names_are_accepted(tmp_path_factory, tmp_path, family):
    # transformers 5 state_dict names (model.language_model.*, model.visual.*, ...) load too; merge them alike
    from safetensors.torch import save_file

    trio = cached_trio(tmp_path_factory, family)
    model = AutoModelForImageTextToText.from_pretrained(trio.vlm)
    renamed = tmp_path / "vlm-mem"
    shutil.copytree(trio.vlm, renamed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.startswith("model.language_model.") for k in state)
    save_file(state, renamed / "model.safetensors", metadata={"format": "pt"})
    d = {"method": "ties", "density": 0.5, "components": ["attention", "mlp", "norm", "embed", "lm_head"]}
    hub = merge_to_disk(recipe_for(trio, **d), tmp_path / "hub", progress=False)
    mem_recipe = Recipe.from_dict({**recipe_for(trio, **d).to_dict(), "vlm": str(renamed)})
    mem = merge_to_disk(mem_recipe, tmp_path / "mem", progress=False)
    a = dict(AutoModelForImageTextToText.from_pretrained(hub).named_parameters())
    b = dict(AutoModelForImageTextToText.from_pretrained(mem).named_parameters())
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _console(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # the console script's body (pyproject's entry point), with an atexit handler of the caller's own
    code = "import atexit, sys; atexit.register(lambda: print('handler ran')); from search.cli.main import run; run()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)


def test_console_merge_ends_fast_but_complete(trio, tmp_path):
    # `mergesearch merge` ends with os._exit: its piped (block-buffered) output, the atexit handlers and
    # every byte of the checkpoint must still be there, equal to an in-process merge's
    recipe = recipe_for(trio, method="ties", density=0.5)
    (tmp_path / "r.json").write_text(recipe.to_json())
    res = _console(["merge", str(tmp_path / "r.json"), "--out", str(tmp_path / "cli"), "--quiet"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"merged recipe {recipe.id} (ties) -> {tmp_path / 'cli'}",
        "handler ran",
    ]
    ref = merge_to_disk(recipe, tmp_path / "ref", progress=False)
    for f in ("model.safetensors", "recipe.json", "config.json"):
        assert (tmp_path / "cli" / f).read_bytes() == (ref / f).read_bytes(), f
    # a bad input keeps its one-line error and exit code 2 through the fast exit
    bad = _console(["merge", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")], tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("mergesearch: error:") and "missing.json" in bad.stderr
    assert bad.stdout == "handler ran\n" and not (tmp_path / "x").exists()
