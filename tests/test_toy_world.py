"""The toy world: real build path (ci size), determinism, checkpoints that reload, generate and merge."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from objectives.datasets import load_dataset
from objectives.toy import SIZES, ToyBuildError, build_into, build_toy_world
from objectives.toy.tasks import split_triples
from objectives.toy.train import image_features, vlm_logits
from objectives.toy.vocab import IM_END, TOKEN_ID, TOKENS, prompt_ids


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and (p.suffix in {".safetensors", ".tsv"} or p.name in {"config.json", "tokenizer.json"})
    }


def test_ci_world_layout_and_benchmarks(toy_world_ci):
    w = toy_world_ci
    sz = SIZES["ci"]
    for d in (w.vlm, w.llm, w.base):
        assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    assert (w.vlm / "processor_config.json").is_file()
    vista, mathv = (load_dataset(name, root=w.data_dir) for name in w.datasets)
    assert (vista.kind, mathv.kind) == ("mathvista", "mathvision")
    assert len(vista.items) == sz.vista_perception + sz.vista_chain
    assert len(mathv.items) == sz.mathv_text + sz.mathv_image
    assert all(it.image_b64 for it in vista.items + mathv.items)  # VLMEvalKit needs an image on every row
    assert {it.category for it in mathv.items} == {"arithmetic", "visual arithmetic"}
    # answers are the sums of the triples; no benchmark triple was a training triple
    train, _ = split_triples(0, sz.train_triples)
    for it in vista.items + mathv.items:
        triple = it.extra.get("triple", "")
        if triple:
            t = tuple(int(v) for v in triple.split())
            assert t not in set(train) and int(it.answer) == sum(t)
    img = vista.items[0].image
    assert img.size == (28, 28)
    for name, full in zip(w.proxy_datasets, (vista, mathv), strict=True):
        proxy = load_dataset(name, root=w.data_dir)
        assert len(proxy.items) == sz.proxy_n
        assert {it.index for it in proxy.items} <= {it.index for it in full.items}


def test_second_call_is_cached_and_bad_input_is_refused(toy_world_ci, tmp_path):
    start = time.perf_counter()
    again = build_toy_world(0, size="ci", cache_dir=toy_world_ci.root.parent.parent)
    assert again.root == toy_world_ci.root and time.perf_counter() - start < 2.0
    with pytest.raises(ToyBuildError, match="unknown toy size 'huge'"):
        build_toy_world(0, size="huge", cache_dir=tmp_path)
    (tmp_path / "occupied").mkdir()
    with pytest.raises(ToyBuildError, match="holds no toy world"):
        build_into(tmp_path / "occupied", seed=0, size="smoke")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left behind


def test_same_seed_gives_identical_files(tmp_path):
    a = build_into(tmp_path / "a", seed=3, size="smoke")
    b = build_into(tmp_path / "b", seed=3, size="smoke")
    c = build_into(tmp_path / "c", seed=4, size="smoke")
    da, db, dc = _digests(a.root), _digests(b.root), _digests(c.root)
    assert "vlm/model.safetensors" in da and len(da) >= 10
    assert da == db
    assert dc["vlm/model.safetensors"] != da["vlm/model.safetensors"]
    # the manifest names the machine and torch that trained it, and the weights' fingerprint
    meta = json.loads((a.root / "toy_world.json").read_text())
    assert meta["machine"]["torch"] == torch.__version__ and meta["machine"]["cpu"]
    assert meta["fingerprint"] == _fingerprint_by_hand(a.root)
    assert b.info["fingerprint"] == meta["fingerprint"] != c.info["fingerprint"]


def _fingerprint_by_hand(root: Path) -> str:
    """sha256 over base, llm, vlm tensors in name order: name, dtype, shape, raw bytes (an independent
    reading through safetensors.torch.load_file)."""
    h = hashlib.sha256()
    for sub in ("base", "llm", "vlm"):
        tensors = load_file(str(root / sub / "model.safetensors"))
        for name in sorted(tensors):
            t = tensors[name]
            h.update(f"{sub}/{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(bytes(t.contiguous().view(torch.uint8).flatten().tolist()))
    return h.hexdigest()


def _load(world):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    from objectives.processing import register_image_only_processors

    register_image_only_processors()
    vlm = AutoModelForImageTextToText.from_pretrained(str(world.vlm)).eval()
    llm = AutoModelForCausalLM.from_pretrained(str(world.llm)).eval()
    processor = AutoProcessor.from_pretrained(str(world.vlm))
    return vlm, llm, processor


def _greedy_reference(vlm, prompt_ids: list[int], feature: torch.Tensor, max_new: int) -> str:
    # full recomputation, no KV cache, image feature placed by hand: independent of generate()
    ids = torch.tensor([prompt_ids])
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(vlm_logits(vlm, ids, feature)[0, -1].argmax())
            if nxt == TOKEN_ID[IM_END]:
                break
            out.append(TOKENS[nxt])
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return " ".join(out)


def test_reload_and_generate_through_objectives(toy_world_ci):
    from objectives.generation import GenerationConfig, generate_responses

    vlm, llm, processor = _load(toy_world_ci)
    assert (
        type(vlm).__name__ == "Qwen2VLForConditionalGeneration" and type(llm).__name__ == "Qwen2ForCausalLM"
    )
    mathv = load_dataset(toy_world_ci.datasets[1], root=toy_world_ci.data_dir)
    items = mathv.items[:6]
    got = generate_responses(vlm, processor, items, GenerationConfig(max_new_tokens=14, batch_size=4))
    for item, response in zip(items, got, strict=True):
        enc = processor(
            text=[processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}],
                add_generation_prompt=True, tokenize=False)],
            images=[item.image], return_tensors="pt",
        )  # fmt: skip
        # generic prompting gives exactly the token layout the models were trained on
        assert enc["input_ids"][0].tolist() == prompt_ids(item.question, image=True)
        # the full Qwen2-VL forward equals the one-token-per-image training path
        with torch.no_grad():
            full = vlm(**enc).logits
            feature = image_features(vlm, enc["pixel_values"], 1)
            mine = vlm_logits(vlm, enc["input_ids"], feature)
        torch.testing.assert_close(full, mine, rtol=1e-4, atol=1e-4)
        assert response == _greedy_reference(vlm, enc["input_ids"][0].tolist(), feature, 14)
    # the LLM through its own tokenizer chat template
    tok = processor.tokenizer
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "3 plus 4 plus 5 ="}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    out = llm.generate(ids, max_new_tokens=14, do_sample=False)
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert text and all(w in TOKENS for w in text.split())


def test_merge_through_merge_core_matches_reference(toy_world_ci):
    from merge_core import Recipe, ResidentMerger

    w = toy_world_ci
    merger = ResidentMerger(str(w.vlm), str(w.llm), str(w.base))
    recipe = Recipe.from_dict(
        {"vlm": str(w.vlm), "llm": str(w.llm), "base": str(w.base), "method": "task_arithmetic",
         "vlm_weight": 0.5, "llm_weight": 1.0}
    )  # fmt: skip
    merger.apply(recipe)
    merged = merger.model.state_dict()
    v, lm_, b = (load_file(str(d / "model.safetensors")) for d in (w.vlm, w.llm, w.base))
    n_lm = 0
    for name, tensor in merged.items():
        disk = name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        if disk.startswith("model.layers.") or disk == "model.norm.weight":
            ref = b[disk] + 0.5 * (v[disk] - b[disk]) + 1.0 * (lm_[disk] - b[disk])
            torch.testing.assert_close(tensor, ref, rtol=1e-5, atol=1e-6)
            n_lm += 1
        elif disk in v:
            assert torch.equal(tensor, v[disk]), disk  # embeddings, lm_head and vision stay the VLM's
    assert n_lm == 4 * 12 + 1
    merger.restore()
    assert torch.equal(merger.model.state_dict()["lm_head.weight"], v["lm_head.weight"])


def test_cli_builds_into_out_dir(tmp_path, capsys):
    from search.cli.main import main

    assert (
        main(["toy", "build", "--out", str(tmp_path / "w"), "--size", "smoke", "--seed", "1", "--quiet"]) == 0
    )
    meta = json.loads((tmp_path / "w" / "toy_world.json").read_text())
    assert meta["seed"] == 1 and meta["size"] == "smoke"
    assert "MathVista_TOY" in capsys.readouterr().out
    assert (
        main(["toy", "build", "--out", str(tmp_path / "v"), "--size", "smoke", "--seed", "-1", "--quiet"])
        == 2
    )
    assert "non-negative integer" in capsys.readouterr().err and not (tmp_path / "v").exists()
