"""The toy world's vocabulary, word-level tokenizer and chat template (Qwen2-VL's special tokens).

Numbers 0..27 are whole words (the largest toy quantity is 9 + 9 + 9), so a decoded answer reads "23", as a
real model's would, and generic answer extraction needs no toy-only rule. The chat template is Qwen2-VL's
without the default system prompt (its words are not in the vocabulary) and without the
``<|vision_start|>``/``<|vision_end|>`` markers around an image: an image is its ``<|image_pad|>`` token(s)
alone, so a 28x28 picture of a digit takes exactly the place of the digit's word (position-preserving, which
is what lets text skills and image reading meet in a merge). Whitespace, including the template's newlines,
only separates words.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIALS: tuple[str, ...] = (PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
MAX_NUMBER = 27
NUMBERS: tuple[str, ...] = tuple(str(i) for i in range(MAX_NUMBER + 1))
WORDS: tuple[str, ...] = (
    "plus",
    "minus",
    "what",
    "number",
    "?",
    "=",
    "count",
    "copy",
    ";",
    "next",
    "is",
    "odd",
    "even",
)
ROLES: tuple[str, ...] = ("user", "assistant", "system")
TOKENS: tuple[str, ...] = SPECIALS + NUMBERS + WORDS + ROLES
TOKEN_ID: dict[str, int] = {tok: i for i, tok in enumerate(TOKENS)}
VOCAB_SIZE = len(TOKENS)

# Qwen2-VL's template minus the default system prompt and the vision markers; images go where the message lists them.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or c['type'] == 'image_url' or 'image' in c %}"
    "<|image_pad|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over :data:`TOKENS` with the chat template; ids are positions in TOKENS."""
    core = Tokenizer(models.WordLevel(dict(TOKEN_ID), unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in SPECIALS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=PAD,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    return tok


def ids(words: str | Sequence[str]) -> list[int]:
    """Token ids of space-separated words; KeyError names a word outside the vocabulary (a generator bug)."""
    parts = words.split() if isinstance(words, str) else list(words)
    return [TOKEN_ID[w] for w in parts]


def prompt_ids(question: str, *, image: bool) -> list[int]:
    """Ids of the templated user turn plus the generation prompt, what ``apply_chat_template`` +
    the processor produce for ``[{"role": "user", "content": [image?, text]}]`` (checked at build time)::

        <|im_start|> user [<|image_pad|>] question <|im_end|> <|im_start|> assistant
    """
    vision = [TOKEN_ID[IMAGE_PAD]] if image else []
    return (
        [TOKEN_ID[IM_START], TOKEN_ID["user"]]
        + vision
        + ids(question)
        + [TOKEN_ID[IM_END], TOKEN_ID[IM_START], TOKEN_ID["assistant"]]
    )


def answer_ids(answer: str) -> list[int]:
    """Ids of the assistant turn's content plus the closing ``<|im_end|>`` (the generation stop token)."""
    return ids(answer) + [TOKEN_ID[IM_END]]
