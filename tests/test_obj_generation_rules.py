"""The HF generator's repetition penalty and stop strings follow the rules the vLLM engine follows.

- One repetition-penalty rule for both engines (``objectives.engines.settings.resolve_repetition_penalty``):
  the study's value, else the model's generation_config.json value, else 1.0; the preset "none" records 1.0.
- The penalty never counts a row's left padding: a batched row's response equals the same item alone.
  (transformers 5.19, the vLLM venv's, counted pad ids as previous tokens; 5.25 no longer does. The test
  shows that the counting rule changes these responses, so the comparison can fail.)
- Stop strings work with a word-level tokenizer (the toy world's; transformers' own ``stop_strings``
  raised ``ValueError: substring not found`` building its token tables) and match generated text only.

A tiny untrained Qwen2 on the toy world's word-level vocabulary, float32, greedy.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, RepetitionPenaltyLogitsProcessor

from objectives.datasets import Item
from objectives.engines.settings import model_repetition_penalty, resolve_repetition_penalty, sampling_kwargs
from objectives.generation import GenerationConfig, Generator, RowRepetitionPenalty, left_pad_collate
from objectives.generation_defaults import resolve_generation
from objectives.toy.vocab import IM_END, PAD, TOKEN_ID, VOCAB_SIZE, build_tokenizer

NEW = 8


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, eos_token_id=TOKEN_ID[IM_END], pad_token_id=TOKEN_ID[PAD],
    )  # fmt: skip
    model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = TOKEN_ID[IM_END]
    return model, build_tokenizer()


def _items() -> list[Item]:
    questions = ["3 plus 4 ?", "what number is 3 plus 4 plus 5 plus 6 minus 2 ?", "count 1 2 3 next is ?"]
    return [Item(index=str(i), question=q, answer="7", source="mem") for i, q in enumerate(questions)]


def test_one_rule_for_the_penalty(tmp_path: Path) -> None:
    assert resolve_repetition_penalty(1.3, 1.05) == 1.3  # the study's value wins
    assert resolve_repetition_penalty(None, 1.05) == 1.05  # unset: the model's generation config
    assert resolve_repetition_penalty(None, None) == 1.0  # neither: none
    assert resolve_repetition_penalty(1.0, 1.05) == 1.0  # an explicit 1.0 turns a model's penalty off
    with pytest.raises(ValueError, match="must be > 0"):
        resolve_repetition_penalty(0.0)
    # the vLLM engine reads the model's value from generation_config.json, the HF engine from the model
    (tmp_path / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.05}))
    assert model_repetition_penalty(tmp_path) == 1.05
    assert model_repetition_penalty(tmp_path / "missing") is None
    unset = GenerationConfig(max_new_tokens=4)
    assert sampling_kwargs(unset, model_repetition_penalty(tmp_path))["repetition_penalty"] == 1.05
    assert sampling_kwargs(replace(unset, repetition_penalty=1.0), 1.05)["repetition_penalty"] == 1.0
    # every preset records the value it decodes with
    assert resolve_generation("qwen2_vl", {"preset": "none"}).repetition_penalty == 1.0
    assert resolve_generation("qwen2_vl", {"preset": "vlmeval"}).repetition_penalty == 1.0
    assert resolve_generation("qwen2_vl", {"preset": "none", "repetition_penalty": 1.2}).repetition_penalty == 1.2


def test_hf_generator_applies_the_rule(lm) -> None:
    model, tok = lm
    items = _items()
    plain = Generator(tok, GenerationConfig(max_new_tokens=NEW)).generate(model, items)
    penalised = Generator(tok, GenerationConfig(max_new_tokens=NEW, repetition_penalty=3.0)).generate(model, items)
    assert penalised != plain  # the penalty changes these responses: the comparisons below can fail
    own = Qwen2ForCausalLM(model.config).eval()
    own.load_state_dict(model.state_dict())
    own.generation_config.eos_token_id = TOKEN_ID[IM_END]
    own.generation_config.repetition_penalty = 3.0  # as a checkpoint's generation_config.json may set it
    unset = Generator(tok, GenerationConfig(max_new_tokens=NEW))
    assert unset.repetition_penalty(own) == 3.0
    assert unset.generate(own, items) == penalised
    off = Generator(tok, GenerationConfig(max_new_tokens=NEW, repetition_penalty=1.0))
    assert off.generate(own, items) == plain  # 1.0 overrides the model's own penalty


def test_row_penalty_matches_the_formula_and_skips_padding() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 10, generator=gen)
    ids = torch.tensor([[0, 0, 3, 4, 3], [5, 6, 0, 7, 9]])  # row 0: two pad positions (id 0)
    got = RowRepetitionPenalty(2.0, [2, 0])(ids, scores.clone())
    want = scores.clone()
    for r, start in enumerate([2, 0]):
        for t in set(ids[r, start:].tolist()):  # independent reference: the rule, once per distinct id
            s = float(scores[r, t])
            want[r, t] = s * 2.0 if s < 0 else s / 2.0
    assert torch.equal(got, want)
    assert got[0, 0] == scores[0, 0] and got[1, 0] != scores[1, 0]  # id 0 counts in row 1 only


def test_batched_rows_are_penalised_as_alone(lm) -> None:
    model, tok = lm
    items = _items()
    cfg = GenerationConfig(max_new_tokens=NEW, repetition_penalty=3.0, batch_size=1)
    alone = Generator(tok, cfg).generate(model, items)
    batched = Generator(tok, replace(cfg, batch_size=len(items)))
    assert batched.batches(items) == [[0, 2, 1]]  # one batch: rows 0 and 2 are left-padded
    assert batched.generate(model, items) == alone
    pooled = Generator(tok, replace(cfg, batch_size=2), segment_tokens=3)  # re-encoded, re-padded rows
    assert pooled.generate(model, items) == alone
    # the comparison can fail: counting the pad ids as previous tokens changes a padded row here
    encs = [batched.encode(it) for it in items]
    inputs = left_pad_collate(encs, batched.pad_id)
    width = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(
            **inputs, do_sample=False, max_new_tokens=NEW, pad_token_id=batched.pad_id,
            logits_processor=[RepetitionPenaltyLogitsProcessor(3.0)],
        )  # fmt: skip
    counted = []
    for row in out[:, width:].tolist():
        tokens: list[int] = []
        batched._take(tokens, row, [TOKEN_ID[IM_END]])  # up to the row's eos, as the generator keeps it
        counted.append(batched._text(tokens))
    assert counted != alone


def test_stop_strings_with_a_word_level_tokenizer(lm) -> None:
    model, tok = lm
    items = _items()
    plain = Generator(tok, GenerationConfig(max_new_tokens=NEW, batch_size=1))
    texts = plain.generate(model, items)
    words = texts[1].split()
    stop = words[3]  # a word the second response holds: it stops there
    first = words.index(stop)
    cut = Generator(tok, GenerationConfig(max_new_tokens=NEW, batch_size=1, stop_strings=(stop,)))
    got = cut.generate(model, items)
    assert got == [t.split(stop, 1)[0].strip() for t in texts]  # each response cut before the stop string
    assert got[1] == " ".join(words[:first])
    assert cut.stats.decode_steps < plain.stats.decode_steps  # the row stopped there, not at max_new_tokens
    # batched and pooled alike
    assert Generator(tok, replace(cut.config, batch_size=3)).generate(model, items) == got
    assert Generator(tok, replace(cut.config, batch_size=2), segment_tokens=2).generate(model, items) == got
