"""VLMEvalKit's dataset-specific prompt text for MathVista / MATH-Vision items, per VLM family.

How VLMEvalKit builds an item's prompt (``vlmeval/inference.py``, ``infer_data``): when the model wrapper's
``use_custom_prompt(dataset)`` is true it calls the wrapper's ``build_prompt(line, dataset)``, otherwise the
dataset's ``build_prompt(line)``. Read in open-compass/VLMEvalKit (the ``main`` snapshot stored in the
search index, commit e8e78f05):

- the datasets: ``MathVista`` and ``MathVision`` in ``vlmeval/dataset/image_vqa.py`` do not override
  ``build_prompt``; ``ImageBaseDataset.build_prompt`` (``image_base.py``) sends the image(s), then the TSV's
  ``question`` cell unchanged. Both classes are ``TYPE = 'VQA'``. (``MathVerse.build_prompt`` differs only by
  reading ``query_cot`` for its ``*_cot`` variants; this package does not score MathVerse.)
- Qwen2-VL (``vlmeval/vlm/qwen2_vl/prompt.py``, ``Qwen2VLPromptMixin``): ``use_custom_prompt`` is true for
  every ``VQA`` dataset but MMVet / ChartQAPro / ChartMuseum, and ``_build_vqa_prompt`` appends
  ``"\\nPlease try to answer the question with short words or phrases if possible."`` to the question.
  ``vlmeval/config.py`` builds ``Qwen2-VL-7B-Instruct`` with the mixin's default (on) and
  ``Qwen2.5-VL-7B-Instruct`` with ``use_custom_prompt=False``, which our VLMEvalKit launcher passes too
  (``objectives/full_eval/tables.py``): Qwen2.5-VL sends the plain question.
- LLaVA / LLaVA-Next (``vlmeval/vlm/llava/llava.py``): ``use_custom_prompt`` only for ``MCQ`` datasets, so
  MathVista and MATH-V send the plain question.
- Idefics2 (``vlmeval/vlm/idefics.py``, ``IDEFICS2.generate_inner``): the prompt is built from the message
  in the wrapper. For ``MathVista_MINI``, ``build_prompt_mathvista``: the question is stripped, each of
  ``"(A) "``…``"(H) "`` becomes ``"A. "``…``"H. "``, ``"\\nOptions:"`` becomes ``"\\nChoices:"``, ``"Hint: "``
  is removed, the result stripped again; when the text then contains both ``"A."`` and ``"B."`` it gets
  ``"\\nAnswer with the letter."`` and the assistant turn starts with ``" Answer:"``. Every other dataset
  (MATH-V included) goes through ``build_prompt_default``: the question stripped.
  VLMEvalKit writes Idefics2's ``User:<image>…<end_of_utterance>\\nAssistant:`` by hand; the checkpoint's
  chat template writes the same string, so only the text and the assistant prefix are reproduced here.

A style names one of those rules (:data:`STYLES`); :data:`FAMILY_STYLE` maps a config ``model_type`` to its
style, and :func:`objectives.generation_defaults.resolve_generation` stores the style in
``GenerationConfig.dataset_prompts`` (study setting ``dataset_prompts = "vlmeval" | "none"``).
A proxy subset of MathVista_MINI gets MathVista_MINI's rule: rules are chosen by the item's kind
(``mathvista`` / ``mathvision``), not by the dataset's file name.
"""

from __future__ import annotations

from dataclasses import dataclass

from merge_core.errors import MergesearchError

from .datasets import Item

STYLES: tuple[str, ...] = ("none", "qwen2_vl", "idefics2")

# config.json model_type -> the style VLMEvalKit's wrapper (as configured for the 7B checkpoints) applies
FAMILY_STYLE: dict[str, str] = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "none",  # vlmeval/config.py: Qwen2.5-VL-7B-Instruct has use_custom_prompt=False
    "llava_next": "none",
    "llava": "none",
    "idefics2": "idefics2",
}

QWEN2_VL_VQA_SUFFIX = "\nPlease try to answer the question with short words or phrases if possible."
IDEFICS2_MATHVISTA_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    *((f"({c}) ", f"{c}. ") for c in "ABCDEFGH"),
    ("\nOptions:", "\nChoices:"),
    ("Hint: ", ""),
)  # applied in this order, as the wrapper's dict is iterated
IDEFICS2_LETTER_INSTRUCTION = "\nAnswer with the letter."
IDEFICS2_LETTER_PREFIX = " Answer:"


class DatasetPromptError(MergesearchError):
    """An unknown dataset-prompt style."""


@dataclass(frozen=True)
class DatasetPrompt:
    """The user text of an item and the text its assistant turn starts with ('' for none)."""

    text: str
    assistant_prefix: str = ""


def dataset_prompt(style: str, item: Item) -> DatasetPrompt:
    """The prompt VLMEvalKit's wrapper of ``style`` builds for ``item`` (rules in the module docstring).

    ``"none"``: the question unchanged (``ImageBaseDataset.build_prompt``)."""
    if style == "none":
        return DatasetPrompt(item.question)
    if style == "qwen2_vl":  # every dataset scored here is of VLMEvalKit's type VQA
        return DatasetPrompt(item.question + QWEN2_VL_VQA_SUFFIX)
    if style == "idefics2":
        text = item.question.strip()
        if item.kind != "mathvista":
            return DatasetPrompt(text)
        for old, new in IDEFICS2_MATHVISTA_REPLACEMENTS:
            text = text.replace(old, new)
        text = text.strip()
        if "A." in text and "B." in text:
            return DatasetPrompt(text + IDEFICS2_LETTER_INSTRUCTION, IDEFICS2_LETTER_PREFIX)
        return DatasetPrompt(text)
    raise DatasetPromptError(f"dataset prompt style {style!r} is unknown; known: {', '.join(STYLES)}")


def family_style(model_type: str) -> str:
    """The style of ``model_type`` ("none" for a family VLMEvalKit gives no custom prompt or we do not know)."""
    return FAMILY_STYLE.get(model_type, "none")
