"""A tiny real VLM end to end: image-only processor via AutoProcessor, batched greedy generation, ProxyScorer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from objectives.answers import judge
from objectives.datasets import DatasetError, Item, load_dataset
from objectives.generation import GenerationConfig, Generator, build_messages
from objectives.processing import (
    Qwen2_5_VLImageOnlyProcessor,
    Qwen2VLImageOnlyProcessor,
    register_image_only_processors,
)
from objectives.scorer import ProxyScorer, ScoreResult
from objectives.tsv import write_tsv
from tests.test_obj_datasets import digit_image, mathvision_rows, mathvista_rows
from tests.tiny.models import build_trio
from tests.tiny.vlm_processing import add_processor

MAX_NEW = 6


@pytest.fixture(scope="module", params=["qwen2_vl", "llava_next"])
def tiny_vlm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    vlm = build_trio(request.param, tmp_path_factory.mktemp(f"tiny_{request.param}"), seed=0).vlm
    add_processor(vlm)
    return vlm


@pytest.fixture(scope="module")
def model_and_processor(tiny_vlm: Path) -> tuple[torch.nn.Module, object]:
    register_image_only_processors()
    processor = AutoProcessor.from_pretrained(str(tiny_vlm))
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_vlm)).eval()
    return model, processor


def _items() -> list[Item]:
    rows = [
        ("a", "What is 3 plus 4?", digit_image(3, 28)),
        (
            "b",
            "Which number is missing in the sequence shown in the picture, counting from the left?",
            digit_image(5, 40),
        ),
        ("c", "Is it red?", None),
        ("d", "How many?", digit_image(8, 28)),
        ("e", "Compute the area of the shaded triangle.", digit_image(1, 60)),
    ]
    from objectives.tsv import encode_image

    return [Item(index=i, question=q, answer="7", image_b64=encode_image(img) if img else None, source="mem", kind="mathvision")
            for i, q, img in rows]  # fmt: skip


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_image_only_processor_through_autoprocessor(tmp_path: Path, family: str) -> None:
    vlm = build_trio(family, tmp_path, seed=1).vlm
    add_processor(vlm)
    register_image_only_processors()
    register_image_only_processors()  # idempotent
    processor = AutoProcessor.from_pretrained(str(vlm))
    want = Qwen2VLImageOnlyProcessor if family == "qwen2_vl" else Qwen2_5_VLImageOnlyProcessor
    assert type(processor) is want
    assert "torchvision" not in sys.modules
    assert processor.image_token_id == int(
        __import__("json").loads((vlm / "config.json").read_text())["image_token_id"]
    )
    item = _items()[0]
    messages = build_messages(item)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == processor.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert "<|vision_start|><|image_pad|><|vision_end|>What is 3 plus 4?<|im_end|>" in text
    enc = processor(text=[text], images=[item.image], return_tensors="pt")
    # a 28x28 image stays 28x28 (min_pixels = 784): a 2x2 patch grid merged into one LM token
    assert enc["image_grid_thw"].tolist() == [[1, 2, 2]]
    assert int((enc["input_ids"] == processor.image_token_id).sum()) == 1


def test_load_processor_handles_stock_processor_class(tmp_path: Path) -> None:
    import json
    import shutil

    from objectives.processing import ProcessorLoadError, load_processor

    vlm = build_trio("qwen2_5_vl", tmp_path / "trio", seed=2).vlm
    add_processor(vlm)
    stock = tmp_path / "stock"
    shutil.copytree(vlm, stock)
    config = json.loads((stock / "processor_config.json").read_text())
    config["processor_class"] = "Qwen2_5_VLProcessor"  # what Hub checkpoints say; it needs torchvision
    (stock / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(OSError, match="video processor"):
        AutoProcessor.from_pretrained(str(stock))
    processor = load_processor(stock)
    assert type(processor) is Qwen2_5_VLImageOnlyProcessor
    reference = AutoProcessor.from_pretrained(str(vlm))
    text = reference.apply_chat_template(
        build_messages(_items()[0]), add_generation_prompt=True, tokenize=False
    )
    a = processor(text=[text], images=[_items()[0].image], return_tensors="pt")
    b = reference(text=[text], images=[_items()[0].image], return_tensors="pt")
    assert all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(ProcessorLoadError, match="no config.json"):
        load_processor(tmp_path)


def test_batched_generation_matches_transformers_reference(model_and_processor) -> None:
    model, processor = model_and_processor
    items = _items()
    gen = Generator(processor, GenerationConfig(max_new_tokens=MAX_NEW, batch_size=len(items)))
    got = gen.generate(model, items)
    (batch,) = gen.batches(items)
    # independent reference: the processor batches and pads the same prompts itself, then plain generate
    texts = [
        processor.apply_chat_template(build_messages(items[i]), add_generation_prompt=True, tokenize=False)
        for i in batch
    ]
    images = [items[i].image for i in batch if items[i].image_b64]
    ref_inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    from objectives.generation import left_pad_collate

    ours = left_pad_collate([gen.encode(items[i]) for i in batch], gen.pad_id)
    assert set(ours) == set(ref_inputs)
    for key in ours:
        assert torch.equal(ours[key], ref_inputs[key]), key
    with torch.no_grad():
        out = model.generate(**ref_inputs, do_sample=False, max_new_tokens=MAX_NEW)
    ref = processor.batch_decode(out[:, ref_inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [got[i] for i in batch] == [r.strip() for r in ref]
    # left padding is handled: one item at a time gives the same greedy text
    single = Generator(processor, GenerationConfig(max_new_tokens=MAX_NEW, batch_size=1)).generate(
        model, items
    )
    assert single == got
    # deterministic, and the processor output is cached per item
    cached = gen.encode(items[1])
    assert gen.generate(model, items) == got and gen.encode(items[1]) is cached


def test_batches_group_similar_lengths(model_and_processor) -> None:
    _, processor = model_and_processor
    items = _items()
    gen = Generator(processor, GenerationConfig(batch_size=2))
    lengths = [gen.encode(it)["input_ids"].shape[-1] for it in items]
    batches = gen.batches(items)
    assert sorted(i for b in batches for i in b) == list(range(len(items)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)


def test_instruction_lookup_order() -> None:
    cfg = GenerationConfig(instructions={"*": "ANY", "mathvision": "KIND", "MathVision_T": "NAME"})
    item = _items()[0]
    assert cfg.instruction_for(item, "MathVision_T") == "NAME"
    assert cfg.instruction_for(item, "Other") == "KIND"
    assert cfg.instruction_for(Item(index="1", question="q", answer="1", kind="mathvista")) == "ANY"
    msg = build_messages(item, "Put the final answer in \\boxed{}.")
    assert msg[0]["content"][-1]["text"] == "What is 3 plus 4?\nPut the final answer in \\boxed{}."


def _datasets(tmp_path: Path):
    vista = load_dataset(write_tsv(mathvista_rows(), tmp_path / "MathVista_T.tsv"))
    vision = load_dataset(write_tsv(mathvision_rows(), tmp_path / "MathVision_T.tsv"))
    return vista, vision


def test_proxy_scorer_end_to_end(tmp_path: Path, model_and_processor) -> None:
    model, processor = model_and_processor
    vista, vision = _datasets(tmp_path)
    config = GenerationConfig(max_new_tokens=MAX_NEW, batch_size=4)
    scorer = ProxyScorer(model, processor, [vista, vision], chunk_size=2, generation=config)
    chunks = scorer.chunks()
    assert [c.dataset for c in chunks] == [
        "MathVista_T",
        "MathVision_T",
        "MathVista_T",
        "MathVision_T",
        "MathVista_T",
    ]
    assert sorted(i for c in chunks if c.dataset == "MathVista_T" for i in c.indices) == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]
    assert [
        c.indices
        for c in ProxyScorer(model, processor, [vista, vision], chunk_size=2, generation=config).chunks()
    ] == [c.indices for c in chunks]
    running = list(scorer.iter_scores())
    assert len(running) == len(chunks)
    assert [sum(s.n for s in r.per_dataset.values()) for r in running] == [2, 4, 6, 7, 8]
    final = running[-1]
    # independent reference: greedy text per item straight from transformers, judged, then averaged here
    ref_correct: dict[str, list[bool]] = {}
    for ds in (vista, vision):
        for item in ds.items:
            msgs = build_messages(item)
            text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            inputs = processor(
                text=[text], images=[item.image] if item.image_b64 else None, return_tensors="pt"
            )
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
            response = processor.batch_decode(
                out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )[0].strip()
            record = next(r for r in final.records if r.dataset == ds.name and r.index == item.index)
            assert record.response == response
            assert record.correct == judge(response, item).correct
            ref_correct.setdefault(ds.name, []).append(record.correct)
    for name, flags in ref_correct.items():
        assert final.per_dataset[name].accuracy == sum(flags) / len(flags)
        assert final.per_dataset[name].n == len(flags)
    assert final.mean_accuracy == pytest.approx(sum(sum(f) / len(f) for f in ref_correct.values()) / 2)
    again = ScoreResult.from_records(final.records, [vista, vision])
    assert again.to_dict() == final.to_dict()


def test_running_score_and_categories_from_records() -> None:
    from objectives.scorer import ItemRecord

    recs = [ItemRecord("A", str(i), "x" if i < 3 else "y", "r", "e", i % 2 == 0, "w") for i in range(5)]
    res = ScoreResult.from_records(recs, ["A", "B"])
    assert res.per_dataset["A"].accuracy == 3 / 5 and res.per_dataset["B"].n == 0
    assert res.per_dataset["A"].per_category == {
        "x": {"n": 3, "correct": 2, "accuracy": 2 / 3}, "y": {"n": 2, "correct": 1, "accuracy": 0.5}}  # fmt: skip
    assert res.mean_accuracy == 3 / 5 and res.scores == {"A": 0.6, "B": 0.0}


def test_bf16_model_generates_on_its_dtype(model_and_processor, tiny_vlm: Path) -> None:
    _, processor = model_and_processor
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_vlm), dtype=torch.bfloat16).eval()
    gen = Generator(processor, GenerationConfig(max_new_tokens=3), cache_dtype=torch.bfloat16)
    out = gen.generate(model, _items()[:2])
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert gen.encode(_items()[0])["pixel_values"].dtype == torch.bfloat16


def test_bad_image_fails_before_generation(tmp_path: Path, model_and_processor) -> None:
    model, processor = model_and_processor
    rows = mathvision_rows()
    rows[1]["image"] = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQ="
    ds = load_dataset(write_tsv(rows, tmp_path / "MathVision_B.tsv"))
    with pytest.raises(DatasetError, match="row index 11"):
        ProxyScorer(model, processor, [ds], chunk_size=2)
