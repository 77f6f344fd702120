"""Give a tiny saved VLM a real tokenizer and processor, so it generates through AutoProcessor + chat template.

Nothing comes from the Hub: a byte-level BPE is trained in memory with ``tokenizers`` over a small math
corpus, the family's special tokens are placed at exactly the ids the checkpoint's config names (image,
video, vision start/end, bos/eos/pad), the remaining ids hold printable-ASCII bytes and learned merges, and
the result is wrapped in ``PreTrainedTokenizerFast`` with the family's chat template. The processor is the
image-only one of :mod:`objectives.processing` with small pixel bounds for Qwen2-VL / Qwen2.5-VL (a 28x28
image is one LM token), and transformers' own processors (PIL image processors) for LLaVA-Next, LLaVA and
Idefics2 (whose images keep their aspect ratio: a 28-pixel shortest edge, a 56-pixel longest).
The checkpoint's weights and config are not modified; only tokenizer/processor files are added.

Usage::

    from tests.tiny.models import build_trio
    from tests.tiny.vlm_processing import add_processor
    trio = build_trio("qwen2_vl", tmp_path)
    processor = add_processor(trio.vlm)       # AutoProcessor.from_pretrained(trio.vlm) works afterwards
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoProcessor, PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from objectives.processing import register_image_only_processors, save_image_only_processor

# Qwen2-VL's chat template (the one shipped with Qwen2-VL-7B-Instruct; Qwen2.5-VL's is the same).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# family -> chat template, special tokens, and which config id each special token must sit at.
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2_vl": {
        "template": QWEN2_VL_CHAT_TEMPLATE,
        "specials": (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),  # fmt: skip
        "config_ids": {  # config key -> token; earlier keys win when two keys share an id
            "image_token_id": "<|image_pad|>",
            "video_token_id": "<|video_pad|>",
            "vision_start_token_id": "<|vision_start|>",
            "vision_end_token_id": "<|vision_end|>",
            "eos_token_id": "<|im_end|>",
            "pad_token_id": "<|endoftext|>",
            "bos_token_id": "<|im_start|>",
        },
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
    },
}
FAMILIES["qwen2_5_vl"] = FAMILIES["qwen2_vl"]

# A Llama-3 style template with LLaVA-Next's "<image>" placeholder (as in llama3-llava-next-8b).
LLAVA_LLAMA3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
FAMILIES["llava_next"] = {
    "template": LLAVA_LLAMA3_CHAT_TEMPLATE,
    "specials": (
        "<pad>",
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<image>",
    ),
    "config_ids": {
        "image_token_index": "<image>",
        "eos_token_id": "<|eot_id|>",
        "pad_token_id": "<pad>",
        "bos_token_id": "<|begin_of_text|>",
    },
    "eos": "<|eot_id|>",
    "pad": "<pad>",
    "extra_special_tokens": {"image_token": "<image>"},
}

# LLaVA-1.5's template (llava-hf/llava-1.5-7b-hf): "USER: <image>\n{text} ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if message['role'] == 'user' %} {% else %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
FAMILIES["llava"] = {
    "template": LLAVA_CHAT_TEMPLATE,
    "specials": ("<pad>", "<s>", "</s>", "<image>"),
    "config_ids": {
        "image_token_index": "<image>",
        "eos_token_id": "</s>",
        "pad_token_id": "<pad>",
        "bos_token_id": "<s>",
    },
    "eos": "</s>",
    "pad": "<pad>",
    "extra_special_tokens": {"image_token": "<image>"},
}

# Idefics2's template (HuggingFaceM4/idefics2-8b): "User:<image>{text}<end_of_utterance>\nAssistant:".
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].capitalize() }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
FAMILIES["idefics2"] = {
    "template": IDEFICS2_CHAT_TEMPLATE,
    "specials": ("<unk>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<end_of_utterance>"),
    "config_ids": {
        "image_token_id": "<image>",
        "eos_token_id": "</s>",
        "pad_token_id": "<unk>",
        "bos_token_id": "<s>",
    },
    "eos": "</s>",
    "pad": "<unk>",
    "extra_special_tokens": {"image_token": "<image>", "image_boundary_token": "<fake_token_around_image>"},
}

_CORPUS = [
    "What is the value of x? The answer is 42.",
    "Hint: Please answer the question and provide the final answer at the end.",
    "Question: Which option is correct? Choices: (A) 3 (B) 5 (C) 7 (D) 9",
    "Let us think step by step. 3 plus 4 = 7 ; 7 plus 2 = 9 . So the answer is \\boxed{9}.",
    "The area of the triangle is \\frac{1}{2} b h = 12.5 cm^2, rounded to 1 decimal place.",
    "minus count copy next is odd even what number ? = ;",
] * 4


def _byte_chars(byte_values: list[int]) -> list[str]:
    """GPT-2's byte -> printable-char table (what ByteLevel pre-tokenization emits), for ``byte_values``."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in byte_values]


def _config_ids(config: dict[str, Any], keys: list[str]) -> dict[str, int]:
    out = {}
    text = config.get("text_config") or {}
    for key in keys:
        value = config.get(key, text.get(key))
        if isinstance(value, list):
            value = value[0]
        if value is not None:
            out[key] = int(value)
    return out


def build_tokenizer(config: dict[str, Any]) -> PreTrainedTokenizerFast:
    """A byte-level BPE fitting the checkpoint's vocabulary, specials at the config's ids, with chat template.

    Regular ids hold printable ASCII + newline as bytes and BPE merges learned on a small corpus; bytes
    outside that alphabet are dropped when encoding (tiny models only need ASCII prompts).
    """
    family = config["model_type"]
    spec = FAMILIES[family]
    vocab_size = int(config.get("vocab_size") or (config.get("text_config") or {})["vocab_size"])
    placed: dict[str, int] = {}
    for key, token_id in _config_ids(config, list(spec["config_ids"])).items():
        token = spec["config_ids"][key]
        if token not in placed and token_id not in placed.values():
            placed[token] = token_id
    free = [i for i in range(vocab_size) if i not in placed.values()]
    for token in spec["specials"]:
        if token not in placed:
            placed[token] = free.pop()  # unplaced specials take the highest free ids
    alphabet = _byte_chars([10, *range(32, 127)])
    if len(free) < len(alphabet):
        raise ValueError(f"vocabulary of {vocab_size} ids is too small for a byte-level tokenizer")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=len(free), initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    # Re-number the trained vocabulary onto the free ids, keeping its order.
    data = json.loads(bpe.to_str())
    trained = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    data["model"]["vocab"] = {tok: free[i] for i, (tok, _) in enumerate(trained)}
    # Specials sit in the model vocabulary too: `tokenizers` numbers added tokens that are absent from it
    # sequentially after the vocabulary, ignoring the ids written here.
    data["model"]["vocab"].update(placed)
    data["added_tokens"] = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in sorted(placed.items(), key=lambda kv: kv[1])
    ]
    data["decoder"] = json.loads(Tokenizer(models.BPE()).to_str())["decoder"]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        padding_side="left",
        extra_special_tokens=spec.get(
            "extra_special_tokens", {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
        ),
    )
    fast.chat_template = spec["template"]
    return fast


def add_processor(model_dir: str | Path, *, min_pixels: int = 28 * 28, max_pixels: int = 56 * 56) -> Any:
    """Save a tokenizer + image-only processor into a tiny saved VLM dir; return ``AutoProcessor.from_pretrained``.

    ``min_pixels``/``max_pixels`` bound the image processor's resize (28x28 = one merged 2x2 patch grid).
    """
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    family = config["model_type"]
    if family not in FAMILIES:
        raise ValueError(f"no tiny processor recipe for model_type {family!r}; known: {sorted(FAMILIES)}")
    tokenizer = build_tokenizer(config)
    vision = config.get("vision_config", {})
    tokenizer.save_pretrained(str(model_dir))
    if family == "llava_next":
        from transformers import LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        side = int(vision.get("image_size", 28))
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": side},
            crop_size={"height": side, "width": side},
            image_grid_pinpoints=config["image_grid_pinpoints"],
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=int(vision.get("patch_size", 14)),
            vision_feature_select_strategy=config.get("vision_feature_select_strategy", "default"),
            chat_template=tokenizer.chat_template,
            num_additional_image_tokens=1,  # CLIP's CLS token
        )
        processor.save_pretrained(str(model_dir))
    elif family == "llava":
        from transformers import LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        side = int(vision.get("image_size", 28))
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessorPil(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side}
            ),
            tokenizer=tokenizer,
            patch_size=int(vision.get("patch_size", 14)),
            vision_feature_select_strategy=config.get("vision_feature_select_strategy", "default"),
            chat_template=tokenizer.chat_template,
            num_additional_image_tokens=1,  # CLIP's CLS token
        )
        processor.save_pretrained(str(model_dir))
    elif family == "idefics2":
        from transformers import Idefics2Processor
        from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

        # a 28-pixel shortest edge and a 56-pixel longest: images keep their aspect ratio, so a batch has
        # pixel values of several H x W (the case Idefics2 batching must pad)
        image_processor = Idefics2ImageProcessorPil(
            size={"shortest_edge": 28, "longest_edge": 56}, do_image_splitting=False
        )
        processor = Idefics2Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_len=int(config["perceiver_config"]["resampler_n_latents"]),
            chat_template=tokenizer.chat_template,
        )
        processor.save_pretrained(str(model_dir))
    else:
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            patch_size=vision.get("patch_size", 14),
            temporal_patch_size=vision.get("temporal_patch_size", 2),
            merge_size=vision.get("spatial_merge_size", 2),
        )
        save_image_only_processor(image_processor, tokenizer, model_dir, family)
    register_image_only_processors()
    return AutoProcessor.from_pretrained(str(model_dir))


def build_tiny_vlm(root: str | Path, *, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """The VLM of ``tests.tiny.models.build_trio(family, root, seed)`` with its processor added."""
    from tests.tiny.models import build_trio

    vlm = build_trio(family, Path(root), seed).vlm
    add_processor(vlm)
    return vlm
