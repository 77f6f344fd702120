"""The tiny trio builder other parts rely on: deterministic, loadable, fine-tune-like task vectors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from tests.tiny.models import BASE_VOCAB, FAMILIES, build_trio


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = build_trio("qwen2_5_vl", tmp_path / "a", seed=3)
    b = build_trio("qwen2_5_vl", tmp_path / "b", seed=3)
    c = build_trio("qwen2_5_vl", tmp_path / "c", seed=4)
    for part in ("vlm", "llm", "base"):
        fa = getattr(a, part) / "model.safetensors"
        assert fa.read_bytes() == (getattr(b, part) / "model.safetensors").read_bytes(), part
        assert fa.read_bytes() != (getattr(c, part) / "model.safetensors").read_bytes(), part


@pytest.mark.parametrize("family", FAMILIES)
def test_trio_loads_and_lm_is_a_small_finetune_of_base(tmp_path, family):
    trio = build_trio(family, tmp_path, tie_embeddings=family == "llava", vlm_extra_vocab=2, noise=0.02)
    vlm = AutoModelForImageTextToText.from_pretrained(trio.vlm).eval()
    llm = AutoModelForCausalLM.from_pretrained(trio.llm).eval()
    assert vlm.get_input_embeddings().weight.shape[0] == BASE_VOCAB + 2
    assert llm.get_input_embeddings().weight.shape[0] == BASE_VOCAB
    out = vlm.generate(input_ids=torch.tensor([[1, 4, 5]]), max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 5)
    base = load_file(trio.base / "model.safetensors")
    lsd = load_file(trio.llm / "model.safetensors")
    tau = lsd["model.layers.1.mlp.up_proj.weight"] - base["model.layers.1.mlp.up_proj.weight"]
    assert 0.015 < tau.std().item() < 0.025
    v_emb = vlm.get_input_embeddings().weight.detach()
    tau_v = v_emb[:BASE_VOCAB] - base["model.embed_tokens.weight"]
    assert 0.015 < tau_v.std().item() < 0.025 and not torch.equal(
        tau_v, lsd["model.embed_tokens.weight"] - base["model.embed_tokens.weight"]
    )
