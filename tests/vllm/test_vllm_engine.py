"""The vLLM engine against the HF reference, float32, on the head_dim-32 world (tests/vllm/world.py).

- greedy parity: the text LLM (vllm.LLM on its own) and the VLM with images (the engine), token for token;
- after ``apply(recipe)``: the engine's responses equal HF ``generate`` on ``merge_to_disk(recipe)``, through
  a sequence linear -> attention-only TIES -> attention-only TIES again -> the VLM alone (restore, partial
  updates, cache resets), on a Qwen2-VL and a Qwen2.5-VL each stored with the hub's names and with
  transformers' in-memory names (after transformers 4.52 renamed Qwen2.5-VL's keys, vLLM's loader raised
  KeyErrors in the field: both schemes must load and update), and on a LLaVA-Next.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from merge_core import Recipe, merge_to_disk
from objectives.datasets import load_dataset
from objectives.engines import EngineError, VllmOptions, make_engine
from objectives.generation import GenerationConfig, Generator
from objectives.processing import load_processor
from tests.vllm.world import build_llava_next_world, build_world

TOKENS = 16
# A system prompt longer than a KV block (vLLM's CPU blocks hold up to 256 tokens): the prompts share
# full blocks, so the prefix cache serves them and a missed reset after a weight update shows.
SYSTEM = " ".join(["count", "plus", "next", "is"] * 80)
# LLaVA-Next's byte-level tokenizer spends ~3 tokens a word there (961 tokens, past its 512 positions):
# its system prompt is ~205 tokens, still over one CPU KV block (128 tokens)
SYSTEM_LLAVA = " ".join(["Hint: Please answer the question and provide the final answer at the end."] * 5)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world32"))


@pytest.fixture(scope="module")
def world_25(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world32_25"), family="qwen2_5_vl")


@pytest.fixture(scope="module")
def world_llava(tmp_path_factory):
    return build_llava_next_world(tmp_path_factory.mktemp("world32_llava_next"))


@pytest.fixture(scope="module")
def items(world):
    return items_of(world)


def _config(family: str = "qwen2_vl") -> GenerationConfig:
    system = SYSTEM_LLAVA if family == "llava_next" else SYSTEM
    return GenerationConfig(max_new_tokens=TOKENS, batch_size=4, system_prompt=system)


def _hf_responses(model_dir: Path, processor, items, family: str = "qwen2_vl") -> list[str]:
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return Generator(processor, _config(family)).generate(model, items)


def _engine(world, vlm: Path):
    processor = load_processor(vlm)
    engine = make_engine(
        "vllm", vlm=str(vlm), llm=str(world.llm), base=str(world.base), processor=processor,
        generation=_config(world.family), dtype="float32", vllm_options=VllmOptions(kv_cache_mb=16),
    )  # fmt: skip
    assert type(engine).__name__ == "VLLMEngine"
    engine.prepare(items_of(world))
    engine.start()
    return engine, processor


def items_of(world):
    """The first 6 items of each dataset (images and text)."""
    out = []
    for name in world.datasets:
        out.extend(load_dataset(name, root=world.data_dir).items[:6])
    return out


def _in_memory_copy(vlm: Path, out: Path) -> Path:
    """The VLM with its file written under transformers' in-memory names (model.language_model.*,
    model.visual.*), the scheme transformers 4.52+ gives Qwen2-VL and Qwen2.5-VL in memory."""
    shutil.copytree(vlm, out)
    state = {}
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            state.update({k: h.get_tensor(k) for k in h.keys()})
        f.unlink()
    renamed = {}
    for k, v in state.items():
        if k.startswith("model."):
            k = "model.language_model." + k.removeprefix("model.")
        elif k.startswith("visual."):
            k = "model." + k
        renamed[k] = v
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_text_llm_greedy_equals_hf(world, items):
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(str(world.llm))
    text_items = [it for it in items if "what number" not in it.question]
    gen = Generator(tokenizer, _config())
    hf_model = AutoModelForCausalLM.from_pretrained(str(world.llm), dtype=torch.float32).eval()
    prompts = []
    for it in text_items:
        ids = gen.encode(it)["input_ids"][0].tolist()
        prompts.append(ids)
    hf_ids = []
    with torch.no_grad():
        for ids in prompts:
            out = hf_model.generate(
                torch.tensor([ids]),
                do_sample=False,
                max_new_tokens=TOKENS,
                pad_token_id=tokenizer.pad_token_id,
            )
            hf_ids.append(out[0, len(ids) :].tolist())
    llm = LLM(
        model=str(world.llm), enforce_eager=True, max_model_len=512, dtype="float32",
        kv_cache_memory_bytes=16 << 20, seed=0,
    )  # fmt: skip
    outs = llm.generate(
        [{"prompt_token_ids": ids} for ids in prompts], SamplingParams(temperature=0, max_tokens=TOKENS)
    )
    vllm_ids = [list(o.outputs[0].token_ids) for o in outs]
    assert len(vllm_ids) == len(hf_ids) >= 4
    assert vllm_ids == hf_ids
    del llm


SEQUENCE = [
    ("vlm_at_start", None),
    ("linear", dict(method="linear", weight=0.6)),
    ("ties_attention", dict(method="ties", vlm_weight=1.0, llm_weight=1.5, density=0.5, components=["attention"])),
    ("ties_attention_2", dict(method="ties", vlm_weight=1.0, llm_weight=0.8, density=0.5, components=["attention"])),
    ("vlm_alone", dict(method="linear", weight=0.0)),
]  # fmt: skip


# scheme -> (world fixture, family, VLM file stored in transformers' in-memory names, LM tensor prefix)
SCHEMES = {
    "hub": ("world", "qwen2_vl", False, "model.layers."),
    "in_memory": ("world", "qwen2_vl", True, "model.language_model.layers."),
    "qwen2_5_vl": ("world_25", "qwen2_5_vl", False, "model.layers."),
    "qwen2_5_vl_in_memory": ("world_25", "qwen2_5_vl", True, "model.language_model.layers."),
    "llava_next": ("world_llava", "llava_next", False, "language_model.model.layers."),
}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_engine_follows_merge_to_disk_through_a_sequence(request, tmp_path, scheme):
    fixture, family, in_memory, prefix = SCHEMES[scheme]
    world = request.getfixturevalue(fixture)
    items = items_of(world)
    vlm = world.vlm if not in_memory else _in_memory_copy(world.vlm, tmp_path / "vlm_in_memory")
    engine, processor = _engine(world, vlm)
    tmap = engine.updates.tmap
    names = {t.name for t in tmap.tensors}
    assert engine.family.family == family
    assert any(n.startswith(prefix) for n in names)  # the names vLLM receives are the file's own
    attention = {t.name for t in tmap.tensors if t.where.component == "attention"}
    seen_differences = 0
    previous: list[str] | None = None
    for label, fields in SEQUENCE:
        if fields is None:
            ref_dir = vlm
        else:
            recipe = Recipe.from_dict(
                {"vlm": str(vlm), "llm": str(world.llm), "base": str(world.base), **fields}
            )
            engine.apply(recipe)
            ref_dir = merge_to_disk(recipe, tmp_path / label, progress=False)
        got = engine.generate(items)
        want = _hf_responses(ref_dir, processor, items, family)
        assert got == want, label
        if previous is not None and got != previous:
            seen_differences += 1
        previous = got
        sent = int(engine.last_update.get("tensors", 0)) if fields is not None else 0
        if label in ("ties_attention_2", "vlm_alone"):  # attention-only after attention-only: attention only
            assert sent == len(attention), label
        if label == "linear":
            assert sent > len(attention)
    assert seen_differences >= 2  # the recipes change the responses: the comparisons can fail
    assert engine.generate(items) == previous  # the VLM alone, again: the restored weights are stable


def test_context_too_short_fails_before_vllm_loads(world):
    engine = make_engine(
        "vllm", vlm=str(world.vlm), llm=str(world.llm), base=str(world.base),
        processor=load_processor(world.vlm), generation=_config(), dtype="float32",
        vllm_options=VllmOptions(max_model_len=40, kv_cache_mb=16),
    )  # fmt: skip
    engine.prepare(items_of(world))
    assert engine.longest_prompt > 300  # the long system prompt
    with pytest.raises(
        EngineError, match=r"max_model_len is 40, but the proxy's longest prompt needs \d+ tokens"
    ):
        engine.start()
    assert engine.llm is None
