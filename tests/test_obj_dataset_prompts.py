"""VLMEvalKit's dataset-specific prompts (objectives.dataset_prompts): the exact text per family and dataset.

The expected strings are written out by hand from VLMEvalKit's wrappers (cited in the module under test):
Qwen2-VL appends its VQA sentence, Qwen2.5-VL / LLaVA(-Next) send the TSV question, Idefics2 rewrites a
MathVista question's options and starts the answer with " Answer:".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from objectives.dataset_prompts import DatasetPromptError, dataset_prompt
from objectives.datasets import Item
from objectives.generation import GenerationConfig, Generator
from objectives.generation_defaults import GenerationSettingsError, resolve_generation
from search.study.spec import StudySpecError, spec_from_dict
from tests.tiny.models import build_trio
from tests.tiny.vlm_processing import add_processor

# a MathVista_MINI multiple-choice row as VLMEvalKit's TSV holds it (hint, question and options in `question`)
MATHVISTA_MC = Item(
    index="7",
    question=(
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
        "Question: Is the number of red cars less than the number of blue buses?\n"
        "Choices:\n(A) Yes\n(B) No"
    ),
    answer="No",
    kind="mathvista",
    choices=["Yes", "No"],
    question_type="multi_choice",
)
MATHVISTA_FREE = Item(
    index="8",
    question=(
        "Hint: Please answer the question requiring an integer answer and provide the final value, "
        "e.g., 1, 2, 3, at the end.\nQuestion: How many bars have values above 40? "
    ),
    answer="3",
    kind="mathvista",
)
MATHVISION = Item(
    index="11",
    question=" Which of the shapes can be folded into a cube?\n<image1> ",
    answer="C",
    kind="mathvision",
    choices=["A", "B", "C", "D", "E"],
)

QWEN_SUFFIX = "\nPlease try to answer the question with short words or phrases if possible."


def test_qwen2_vl_appends_its_vqa_sentence_to_every_dataset() -> None:
    for item in (MATHVISTA_MC, MATHVISTA_FREE, MATHVISION):
        got = dataset_prompt("qwen2_vl", item)
        assert got.text == item.question + QWEN_SUFFIX and got.assistant_prefix == ""


def test_plain_style_sends_the_question_unchanged() -> None:
    for item in (MATHVISTA_MC, MATHVISTA_FREE, MATHVISION):
        assert dataset_prompt("none", item).text == item.question
        assert dataset_prompt("none", item).assistant_prefix == ""


def test_idefics2_rewrites_mathvista_options_and_starts_the_answer() -> None:
    mc = dataset_prompt("idefics2", MATHVISTA_MC)
    assert mc.text == (
        "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
        "Question: Is the number of red cars less than the number of blue buses?\n"
        "Choices:\nA. Yes\nB. No\nAnswer with the letter."
    )
    assert mc.assistant_prefix == " Answer:"
    free = dataset_prompt("idefics2", MATHVISTA_FREE)
    assert free.text == (
        "Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
        "at the end.\nQuestion: How many bars have values above 40?"
    )  # hint prefix gone, trailing space stripped, no letter instruction
    assert free.assistant_prefix == ""
    # MATH-V goes through build_prompt_default: stripped, nothing else
    mv = dataset_prompt("idefics2", MATHVISION)
    assert mv.text == "Which of the shapes can be folded into a cube?\n<image1>" and mv.assistant_prefix == ""
    options = Item(index="9", question="Which is larger?\nOptions:\n(A) 3\n(B) 5", answer="5", kind="mathvista")
    assert dataset_prompt("idefics2", options).text == (
        "Which is larger?\nChoices:\nA. 3\nB. 5\nAnswer with the letter."
    )
    with pytest.raises(DatasetPromptError, match="'qwen3' is unknown"):
        dataset_prompt("qwen3", MATHVISION)


def test_the_preset_picks_the_familys_style_and_a_study_can_turn_it_off() -> None:
    assert resolve_generation("qwen2_vl").dataset_prompts == "qwen2_vl"
    assert resolve_generation("qwen2_5_vl").dataset_prompts == "none"  # use_custom_prompt=False in VLMEvalKit
    assert resolve_generation("llava_next").dataset_prompts == "none"
    assert resolve_generation("idefics2").dataset_prompts == "idefics2"
    assert resolve_generation("qwen2_vl", {"dataset_prompts": "none"}).dataset_prompts == "none"
    assert resolve_generation("qwen2_vl", {"preset": "none"}).dataset_prompts == "none"
    assert resolve_generation("idefics2", {"preset": "none", "dataset_prompts": "vlmeval"}).dataset_prompts == (
        "idefics2"
    )
    with pytest.raises(GenerationSettingsError, match="dataset_prompts 'x' is unknown"):
        resolve_generation("qwen2_vl", {"dataset_prompts": "x"})
    study = {"name": "p", "n_trials": 1, "models": {"vlm": "o/v", "llm": "o/l", "base": "o/b"}}
    spec = spec_from_dict({**study, "objectives": {"datasets": ["A"], "generation": {"dataset_prompts": "none"}}})
    assert spec.objectives.generation == {"preset": "vlmeval", "dataset_prompts": "none"}
    with pytest.raises(StudySpecError, match="dataset_prompts` is 'all'; allowed: vlmeval, none"):
        spec_from_dict({**study, "objectives": {"datasets": ["A"], "generation": {"dataset_prompts": "all"}}})


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics2"])
def test_the_generator_sends_the_dataset_prompt_through_the_chat_template(family: str, tmp_path: Path) -> None:
    trio = build_trio(family, tmp_path / "trio", seed=1)
    processor = add_processor(trio.vlm)
    item = Item(index="7", question=MATHVISTA_MC.question, answer="No", kind="mathvista")  # text-only row
    cfg = resolve_generation(family, {"instructions": {"*": "Think."}}, tokenizer=processor.tokenizer)
    got = Generator(processor, cfg).prompt(item)
    plain = Generator(processor, GenerationConfig(instructions={"*": "Think."})).prompt(item)
    built = dataset_prompt(family, item)
    # the template around the text is the processor's own: the plain prompt with the question replaced
    expected = plain.replace(item.question, built.text) + built.assistant_prefix
    assert got == expected and built.text + "\nThink." in got
    if family == "idefics2":
        assert got.endswith("Answer with the letter.\nThink.<end_of_utterance>\nAssistant: Answer:")
    else:
        assert QWEN_SUFFIX + "\nThink." in got
