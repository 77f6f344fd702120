"""The toy world: a tiny base LM, a reasoning LLM and a Qwen2-VL fine-tuned from it, and VLMEvalKit-format
benchmarks, built on the CPU in minutes so the whole product runs (and is measured) anywhere.

``build_toy_world(seed, size="full" | "ci" | "smoke", cache_dir=None, force=False) -> ToyWorld`` trains (fixed
thread counts, deterministic) and caches under ``$MERGESEARCH_CACHE/toy/<version>-<size>-seed<seed>``
(default ``~/.cache/mergesearch``). The checkpoints are ordinary Hugging Face directories: ``base`` and
``llm`` load with ``AutoModelForCausalLM``, ``vlm`` with ``AutoModelForImageTextToText`` and its processor
with ``AutoProcessor`` after ``objectives.processing.register_image_only_processors()``; nothing downstream
(merging, generation, answer extraction, scoring) has a toy-specific path.

Modules: ``vocab`` (word-level tokenizer, chat template), ``tasks`` (item generators), ``render`` (digit
images), ``models`` (architectures as data), ``train`` (loops), ``build`` (stages, save, cache),
``bench_data`` (TSVs and their proxies through ``objectives.proxy``), ``cli``.
"""

from typing import Any

__all__ = ["SIZES", "TOY_VERSION", "ToyBuildError", "ToyWorld", "build_into", "build_toy_world", "world_dir"]


def __getattr__(name: str) -> Any:
    # lazy: `mergesearch --help` must not pay for torch/transformers through this package
    if name in __all__:
        from objectives.toy import build

        return getattr(build, name)
    raise AttributeError(f"module 'objectives.toy' has no attribute {name!r}")
