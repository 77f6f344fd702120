"""Batching that is safe for every family and for the device's memory, and the generation settings a study
decodes with (tiny real models of every family in the architecture table, greedy, float32)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForImageTextToText

from merge_core.architectures import ARCHITECTURES
from objectives.datasets import Item
from objectives.generation import (
    GenerationConfig,
    Generator,
    build_messages,
    free_device_cache,
    left_pad_collate,
)
from objectives.generation_defaults import (
    FAMILY_GENERATION,
    GenerationSettingsError,
    resolve_generation,
)
from objectives.scorer import ProxyScorer
from objectives.tsv import encode_image
from tests.test_obj_datasets import digit_image
from tests.tiny.models import build_trio
from tests.tiny.vlm_processing import add_processor

FAMILIES = tuple(a.family for a in ARCHITECTURES)
MAX_NEW = 6


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    vlm = build_trio(family, tmp_path_factory.mktemp(f"batch_{family}"), seed=3).vlm
    processor = add_processor(vlm)
    model = AutoModelForImageTextToText.from_pretrained(str(vlm), dtype=torch.float32).eval()
    return family, model, processor


def _mixed_items() -> list[Item]:
    """Images of several aspect ratios (wide, tall, square, small, large) and one text-only question."""
    sizes = [(28, 28), (56, 28), (28, 56), (60, 40), (36, 70), None]
    items = []
    for n, size in enumerate(sizes):
        image = None
        if size is not None:
            image = encode_image(digit_image(n + 1, 28).resize(size))
        question = "What is 3 plus 4?" if n % 2 else "Which number is shown? Count from the left."
        items.append(Item(index=str(n), question=question, answer="7", image_b64=image, source="mem"))
    return items


def _last_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits[:, -1, :]


def test_mixed_aspect_batch_equals_each_item_alone(family_model) -> None:
    family, model, processor = family_model
    items = _mixed_items()
    batched = Generator(processor, GenerationConfig(max_new_tokens=MAX_NEW, batch_size=len(items)))
    (batch,) = batched.batches(items)
    got = batched.generate(model, items)
    alone = Generator(processor, GenerationConfig(max_new_tokens=MAX_NEW, batch_size=1))
    assert got == alone.generate(model, items)
    # segments of 1, 2, 4 tokens, re-encoding the rows that go on: the same greedy texts
    segmented = Generator(
        processor, GenerationConfig(max_new_tokens=MAX_NEW, batch_size=len(items)), segment_tokens=1
    )
    assert segmented.generate(model, items) == got and segmented.stats.reencoded_tokens > 0
    # the collated batch gives each row the next-token logits the row has alone (a sharper check than text)
    encodings = [batched.encode(items[i]) for i in batch]
    inputs = left_pad_collate(encodings, batched.pad_id)
    if family == "idefics2":
        shapes = {tuple(e["pixel_values"].shape[-2:]) for e in encodings if "pixel_values" in e}
        assert len(shapes) > 1  # the batch really mixes image sizes
        assert inputs["pixel_attention_mask"].shape[0] == len(batch)
        assert inputs["pixel_values"].shape[0] == len(batch)  # the text-only row has a blank image
    together = _last_logits(model, inputs)
    for row, enc in enumerate(encodings):
        single = _last_logits(model, left_pad_collate([enc], batched.pad_id))
        torch.testing.assert_close(together[row], single[0], rtol=1e-4, atol=1e-4)


def test_collate_pads_height_width_and_mask_like_the_processor() -> None:
    a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
         "pixel_values": torch.ones(1, 1, 3, 2, 4), "pixel_attention_mask": torch.ones(1, 1, 2, 4, dtype=torch.long)}  # fmt: skip
    b = {"input_ids": torch.tensor([[8]]), "attention_mask": torch.ones(1, 1, dtype=torch.long),
         "pixel_values": 2 * torch.ones(1, 2, 3, 3, 1), "pixel_attention_mask": torch.ones(1, 2, 3, 1, dtype=torch.long)}  # fmt: skip
    c = {"input_ids": torch.tensor([[9, 9]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    out = left_pad_collate([a, b, c], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 9]]
    assert out["pixel_values"].shape == (3, 2, 3, 3, 4)
    mask = out["pixel_attention_mask"]
    assert mask.shape == (3, 2, 3, 4)
    # reference built by hand: the valid region of each image at the top left, zeros elsewhere
    want = torch.zeros(3, 2, 3, 4, dtype=torch.long)
    want[0, 0, :2, :4] = 1
    want[1, :, :3, :1] = 1
    assert torch.equal(mask, want)
    assert torch.equal(out["pixel_values"][:, :, 0] != 0, want.bool())
    assert float(out["pixel_values"][1].sum()) == 2 * 3 * 2 * 3  # values kept, not moved


# ------------------------------------------------------------------ out of memory


class OomAbove:
    """Stand-in for ``model.generate``: raises torch's OOM error for batches above ``rows`` rows, or for any
    batch holding a prompt of ``too_long`` tokens; otherwise the real generate of the tiny model."""

    def __init__(self, generate: Any, rows: int, too_long: int | None = None) -> None:
        self.generate, self.rows, self.too_long = generate, rows, too_long
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, **inputs: Any) -> torch.Tensor:
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        fails = len(lengths) > self.rows or (self.too_long is not None and self.too_long in lengths)
        self.calls.append((len(lengths), fails))
        if fails:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return self.generate(**inputs)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory):
    vlm = build_trio("qwen2_vl", tmp_path_factory.mktemp("oom_qwen"), seed=4).vlm
    processor = add_processor(vlm)
    return AutoModelForImageTextToText.from_pretrained(str(vlm)).eval(), processor


@pytest.mark.parametrize("segment", [None, 2], ids=["batches", "pool"])
def test_out_of_memory_batches_split_and_results_equal_the_unsplit_run(qwen, monkeypatch, segment) -> None:
    model, processor = qwen
    items = _mixed_items() * 2
    items = [Item(index=str(i), question=it.question, answer="7", image_b64=it.image_b64, source="mem")
             for i, it in enumerate(items)]  # fmt: skip
    reference = Generator(processor, GenerationConfig(max_new_tokens=MAX_NEW, batch_size=8)).generate(
        model, items
    )
    gen = Generator(processor, GenerationConfig(max_new_tokens=MAX_NEW, batch_size=8), segment_tokens=segment)
    stand_in = OomAbove(model.generate, rows=3)
    monkeypatch.setattr(model, "generate", stand_in)
    emptied: list[bool] = []
    monkeypatch.setattr("objectives.generation.free_device_cache", lambda d: emptied.append(d.type) or False)
    assert gen.generate(model, items) == reference
    assert gen.stats.oom_splits >= 2 and gen.stats.oom_failures == 0
    assert emptied == ["cpu"] * sum(1 for _, failed in stand_in.calls if failed)
    assert gen.max_batch_tokens is not None
    # the learnt cap holds for the rest of the Generator's life: no batch above 3 rows is tried again
    stand_in.calls.clear()
    assert gen.generate(model, items) == reference
    assert stand_in.calls and all(not failed and rows <= 3 for rows, failed in stand_in.calls)
    assert all(len(b) <= 3 for b in gen.batches(items))


@pytest.mark.parametrize("segment", [None, 2], ids=["batches", "pool"])
def test_item_that_cannot_fit_alone_is_a_scored_failure(qwen, monkeypatch, tmp_path: Path, segment) -> None:
    from objectives.datasets import load_dataset
    from objectives.tsv import write_tsv
    from tests.test_obj_datasets import mathvision_rows

    model, processor = qwen
    ds = load_dataset(write_tsv(mathvision_rows(), tmp_path / "MathVision_O.tsv"))
    config = GenerationConfig(max_new_tokens=MAX_NEW, batch_size=4)
    reference = ProxyScorer(model, processor, [ds], chunk_size=50, generation=config).score()
    scorer = ProxyScorer(model, processor, [ds], chunk_size=50, generation=config)
    scorer.generator.segment_tokens = segment
    victim = ds.items[2]
    length = int(scorer.generator.encode(victim, ds.name)["input_ids"].shape[-1])
    monkeypatch.setattr(model, "generate", OomAbove(model.generate, rows=2, too_long=length))
    result = scorer.score()  # never raises
    by_index = {r.index: r for r in result.records}
    failed = [r for r in result.records if r.why.startswith("out of memory")]
    assert failed, "the stand-in must have forced an item out of memory"
    for r in failed:
        assert int(scorer.generator.encode(ds.by_index()[r.index], ds.name)["input_ids"].shape[-1]) == length
        assert r.correct is False and r.response == "" and r.extracted is None
        assert r.why == f"out of memory at batch size 1 (prompt {length} tokens, max_new_tokens {MAX_NEW})"
    assert victim.index in {r.index for r in failed}
    for r in reference.records:  # every other item scored exactly as without the stand-in
        if r.index not in {f.index for f in failed}:
            assert by_index[r.index] == r
    assert result.per_dataset[ds.name].n == len(ds.items)


def test_free_device_cache_empties_only_cuda(monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    assert free_device_cache(torch.device("cpu")) is False and calls == []
    assert free_device_cache(torch.device("cuda", 0)) is True and calls == [1]


# ------------------------------------------------------------------ settings


def test_family_defaults_are_vlmevalkits_and_cover_every_family() -> None:
    assert set(FAMILY_GENERATION) == {t for a in ARCHITECTURES for t in a.vlm_model_types}
    qwen = resolve_generation("qwen2_5_vl", {}, batch_size=16)
    assert (qwen.min_pixels, qwen.max_pixels) == (1280 * 28 * 28, 16384 * 28 * 28)
    assert (qwen.max_new_tokens, qwen.repetition_penalty, qwen.batch_size) == (2048, 1.0, 16)
    assert qwen.system_prompt is None and qwen.stop_strings == () and qwen.eos_token_ids == ()
    assert resolve_generation("idefics2").max_new_tokens == 1024
    assert resolve_generation("llava_next").max_new_tokens == 2048
    set_ = resolve_generation(
        "qwen2_vl",
        {"max_new_tokens": 100, "max_pixels": 1000, "eos_token_ids": [7], "stop_strings": ["\n\n"],
         "instructions": {"*": "Answer."}, "system_prompt": "Be brief."},
    )  # fmt: skip
    assert (set_.max_new_tokens, set_.max_pixels, set_.min_pixels) == (100, 1000, 1280 * 28 * 28)
    assert set_.eos_token_ids == (7,) and set_.stop_strings == ("\n\n",)
    assert set_.instructions == {"*": "Answer."} and set_.system_prompt == "Be brief."
    none = resolve_generation("qwen2_vl", {"preset": "none", "max_new_tokens": 24}, batch_size=25)
    assert none == GenerationConfig(max_new_tokens=24, batch_size=25, repetition_penalty=1.0)
    assert resolve_generation("qwen2_vl", {"preset": "none"}).max_new_tokens == 64
    assert none.to_dict()["stop_strings"] == [] and isinstance(none.to_dict()["instructions"], dict)
    with pytest.raises(GenerationSettingsError, match="model_type 'mllama'"):
        resolve_generation("mllama")
    with pytest.raises(GenerationSettingsError, match="'top_p' is unknown"):
        resolve_generation("qwen2_vl", {"top_p": 0.5})
    with pytest.raises(GenerationSettingsError, match="preset 'hf'"):
        resolve_generation("qwen2_vl", {"preset": "hf"})


def test_llava_next_stops_at_eot_through_its_tokenizer(tmp_path: Path) -> None:
    vlm = build_trio("llava_next", tmp_path, seed=0).vlm
    processor = add_processor(vlm)
    cfg = resolve_generation("llava_next", {"eos_token_ids": [3]}, tokenizer=processor.tokenizer)
    eot = processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert cfg.eos_token_ids == (eot, 3)
    # a tokenizer without the token (a Vicuna/Mistral LLaVA-Next) gets no extra eos
    assert resolve_generation("llava_next", tokenizer=_NoEot()).eos_token_ids == ()


class _NoEot:
    def get_vocab(self) -> dict[str, int]:
        return {"</s>": 2}


def test_finished_rows_leave_a_segmented_batch(family_model) -> None:
    family, model, processor = family_model
    items = _mixed_items()
    enc = Generator(processor).encode(items[0])
    with torch.no_grad():
        first = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW)[0, enc["input_ids"].shape[1] :]
    # an eos id that ends item 0 after its second token: rows end at different steps
    config = GenerationConfig(max_new_tokens=MAX_NEW, batch_size=len(items), eos_token_ids=(int(first[1]),))
    whole = Generator(processor, config)
    want = whole.generate(model, items)
    assert want == Generator(processor, replace(config, batch_size=1)).generate(model, items)
    parts = Generator(processor, config, segment_tokens=2)
    assert parts.generate(model, items) == want
    assert parts.stats.wasted_row_steps <= whole.stats.wasted_row_steps
    assert parts.stats.row_steps <= whole.stats.row_steps


def test_decoding_settings_reach_generate(qwen) -> None:
    model, processor = qwen
    item = _mixed_items()[0]
    base = GenerationConfig(max_new_tokens=MAX_NEW, batch_size=1)
    gen = Generator(processor, base)
    enc = gen.encode(item)
    with torch.no_grad():
        plain = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW)[0, enc["input_ids"].shape[1] :]
        penal = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW, repetition_penalty=1.8)
    penal = penal[0, enc["input_ids"].shape[1] :]
    tok = processor.tokenizer
    assert gen.generate(model, [item]) == [tok.decode(plain, skip_special_tokens=True).strip()]
    with_penalty = Generator(processor, GenerationConfig(max_new_tokens=MAX_NEW, repetition_penalty=1.8))
    assert with_penalty.generate(model, [item]) == [tok.decode(penal, skip_special_tokens=True).strip()]
    # an extra eos id: the row ends there and the response stops before it
    stop_id = int(plain[2])
    first = int(torch.nonzero(plain == stop_id)[0])
    ended = Generator(processor, GenerationConfig(max_new_tokens=MAX_NEW, eos_token_ids=(stop_id,)))
    assert ended.generate(model, [item]) == [tok.decode(plain[:first], skip_special_tokens=True).strip()]
    assert ended.stats.row_steps == first + 1
    # a stop string: the response is cut before it
    text = tok.decode(plain, skip_special_tokens=True)
    stop = text.strip()[2:4]
    if stop.strip():
        cut = Generator(processor, GenerationConfig(max_new_tokens=MAX_NEW, stop_strings=(stop,)))
        assert cut.generate(model, [item]) == [text.split(stop, 1)[0].strip()]


def test_messages_carry_the_system_prompt() -> None:
    item = _mixed_items()[0]
    msgs = build_messages(item, "", "Be brief.")
    assert msgs[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert build_messages(item, "", "")[0]["role"] == "user"
