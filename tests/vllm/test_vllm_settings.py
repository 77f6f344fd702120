"""Settings parity, end to end: the ``hf`` and ``vllm`` engines give the same responses on the same items
with every generation setting a study has (float32, greedy), on the head_dim-32 world (tests/vllm/world.py).

One configuration sets all of them at once: ``max_new_tokens``, ``min_pixels`` (4 image tokens where the
processor's own bounds give 1), an extra stop token id, a stop string (the world's tokenizer is word-level:
transformers' own stop strings crashed on it), a repetition penalty (the HF engine batches 4 rows with left
padding: transformers 5.19 counted the pad ids as previous tokens) and a system prompt. Each setting is
shown to matter: dropping any one of them changes the ``hf`` responses, so the comparison can fail.
The stop string and the stop id are read off the responses without them, so both actually fire.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from objectives.datasets import load_dataset
from objectives.engines import VllmOptions, make_engine
from objectives.generation import GenerationConfig
from objectives.processing import load_processor
from objectives.toy.vocab import TOKEN_ID
from tests.vllm.world import SIDE, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world32_settings"))


def _engine(name: str, world, config: GenerationConfig, processor):
    engine = make_engine(
        name, vlm=str(world.vlm), llm=str(world.llm), base=str(world.base), processor=processor,
        generation=config, dtype="float32", vllm_options=VllmOptions(kv_cache_mb=16),
    )  # fmt: skip
    assert engine.name == name
    return engine


def _responses(name: str, world, config: GenerationConfig, processor, items) -> list[str]:
    engine = _engine(name, world, config, processor)
    engine.prepare(items)
    engine.start()
    out = engine.generate(items)
    del engine
    return out


def test_every_setting_maps_to_vllm(world):
    items = [it for name in world.datasets for it in load_dataset(name, root=world.data_dir).items[:6]]
    assert sum(1 for it in items if it.image_b64) >= 4
    processor = load_processor(world.vlm)
    base = GenerationConfig(
        max_new_tokens=14, batch_size=4, repetition_penalty=1.6, min_pixels=4 * SIDE * SIDE,
        system_prompt="count next is plus",
    )  # fmt: skip
    # the stop string and the stop id: words the responses without them hold after their first two words
    free = _responses("hf", world, base, processor, items)
    words = [w for r in free for w in r.split()[2:]]
    stop = max(sorted(set(words)), key=words.count)
    eos_word = next(w for w in sorted(set(words), key=words.count, reverse=True) if w != stop)
    full = replace(base, stop_strings=(stop,), eos_token_ids=(TOKEN_ID[eos_word],))

    want = _responses("hf", world, full, processor, items)
    got = _responses("vllm", world, full, processor, items)
    assert got == want

    # each setting matters on these items: without it the hf responses differ
    without = {
        "max_new_tokens": replace(full, max_new_tokens=1),  # stops end most responses within a few tokens
        "min_pixels": replace(full, min_pixels=None),
        "stop_strings": replace(full, stop_strings=()),
        "eos_token_ids": replace(full, eos_token_ids=()),
        "repetition_penalty": replace(full, repetition_penalty=1.0),
        "system_prompt": replace(full, system_prompt=None),
    }
    for field, config in without.items():
        assert _responses("hf", world, config, processor, items) != want, field
    assert any(stop in r for r in free) and not any(stop in r for r in want)  # the stop string fired
    assert any(eos_word in r for r in free)
