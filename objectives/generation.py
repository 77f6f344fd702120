"""Batched greedy generation through the model's own processor and chat template.

The prompt of an item is what VLMEvalKit sends — the image, then the question — plus an optional
answer-format instruction looked up by dataset name, then kind, then ``"*"`` in
:attr:`GenerationConfig.instructions` (none by default, which keeps proxy prompts identical to VLMEvalKit's).

A :class:`Generator` caches each item's processor output (token ids, pixel values, grid sizes) the first
time it sees the item, so a resident worker scoring hundreds of recipes on the same items preprocesses each
image once. Batches are formed from items of similar prompt length (sorted by length, then by position —
deterministic), collated with left padding, and moved to the model's device; pixel values take the model's
floating dtype (bf16 on GPU when the model is bf16). Decoding is greedy (``do_sample=False``, one beam).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from merge_core.errors import MergesearchError

from .datasets import Item

# Processor outputs laid out (batch, sequence): left-padded when collated. Everything else is concatenated
# along its first dimension (Qwen2-VL's pixel_values are (patches, dim) and image_grid_thw (images, 3)).
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


class GenerationError(MergesearchError):
    """An item cannot be turned into model inputs (for example an image the processor rejects)."""


@dataclass
class GenerationConfig:
    """Decoding settings. ``instructions`` maps a dataset name, a kind (``mathvista``/``mathvision``) or ``"*"``
    to text appended to the question on a new line, e.g. ``{"*": "Put the final answer in \\\\boxed{}."}``.
    ``min_pixels``/``max_pixels`` narrow the image processor's own bounds (never widen them)."""

    max_new_tokens: int = 512
    batch_size: int = 8
    instructions: dict[str, str] = field(default_factory=dict)
    min_pixels: int | None = None
    max_pixels: int | None = None
    system_prompt: str | None = None

    def instruction_for(self, item: Item, dataset_name: str | None = None) -> str:
        """The instruction for an item: by dataset name, then by kind, then ``"*"``; '' when none."""
        for key in (dataset_name, item.kind, "*"):
            if key and key in self.instructions:
                return self.instructions[key]
        return ""


def build_messages(
    item: Item, instruction: str = "", system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages for one item: (system,) user = [image, question (+ newline + instruction)]."""
    text = item.question if not instruction else f"{item.question}\n{instruction}"
    content: list[dict[str, Any]] = []
    if item.image_b64:
        content.append({"type": "image"})
    content.append({"type": "text", "text": text})
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": content})
    return messages


def _pixel_kwargs(processor: Any, config: GenerationConfig) -> dict[str, Any]:
    if config.min_pixels is None and config.max_pixels is None:
        return {}
    image_processor = getattr(processor, "image_processor", None)
    size = dict(getattr(image_processor, "size", None) or {})
    if "shortest_edge" not in size or "longest_edge" not in size:
        return {}  # not a pixel-bounded processor: its own resize rule applies
    lo, hi = int(size["shortest_edge"]), int(size["longest_edge"])
    if config.min_pixels is not None:
        lo = min(max(lo, config.min_pixels), hi)
    if config.max_pixels is not None:
        hi = max(min(hi, config.max_pixels), lo)
    return {"size": {"shortest_edge": lo, "longest_edge": hi}}


def left_pad_collate(encodings: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Collate single-item processor outputs into one batch: sequence keys left-padded, others concatenated.

    Padding: ``input_ids`` with ``pad_id``, masks / token types with 0 — what the processor does for a batch
    with ``padding_side="left"``.
    """
    width = max(int(e["input_ids"].shape[-1]) for e in encodings)
    out: dict[str, torch.Tensor] = {}
    keys = list(dict.fromkeys(k for e in encodings for k in e))  # text-only items have no pixel tensors
    for key in keys:
        parts = [e[key] for e in encodings if key in e]
        if key in SEQUENCE_KEYS:
            fill = pad_id if key == "input_ids" else 0
            padded = []
            for t in parts:
                t = t.reshape(1, -1)
                gap = width - t.shape[1]
                if gap:
                    t = torch.cat([torch.full((1, gap), fill, dtype=t.dtype), t], dim=1)
                padded.append(t)
            out[key] = torch.cat(padded, dim=0)
        else:
            out[key] = torch.cat(_pad_dim1(parts), dim=0)
    return out


def _pad_dim1(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    # LLaVA-Next's pixel_values are (1, patches, C, H, W) with a per-image patch count; its processor zero-pads
    # the patch dimension to the batch maximum, and so do we.
    if len({t.shape[1:] for t in parts}) <= 1 or any(t.dim() < 3 for t in parts):
        return parts
    most = max(t.shape[1] for t in parts)
    return [torch.cat([t, t.new_zeros((t.shape[0], most - t.shape[1], *t.shape[2:]))], dim=1) for t in parts]


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's parameters."""
    param = next(model.parameters())
    return param.device, param.dtype


class Generator:
    """Greedy generation for items with one processor; caches each item's processor output.

    ``generate(model, items, dataset_name=None) -> list[str]`` returns the decoded continuations in item order.
    The cache key is (item source, index, prompt text), so changing an instruction re-processes.
    """

    def __init__(
        self,
        processor: Any,
        config: GenerationConfig | None = None,
        *,
        cache_dtype: torch.dtype | None = None,
    ):
        self.processor = processor
        self.config = config or GenerationConfig()
        # Cached pixel values dominate memory (a 1-megapixel image is ~5 MB in fp32): keep them in the
        # model's dtype when it is known, so a bf16 model's cache is half the size and needs no cast.
        self.cache_dtype = cache_dtype
        tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)
        self._cache: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
        self._pixel_kwargs = _pixel_kwargs(processor, self.config)

    def prompt(self, item: Item, dataset_name: str | None = None) -> str:
        """The chat-templated prompt text of an item (generation prompt appended)."""
        messages = build_messages(
            item, self.config.instruction_for(item, dataset_name), self.config.system_prompt
        )
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, item: Item, dataset_name: str | None = None) -> dict[str, torch.Tensor]:
        """The processor's tensors for one item (cached)."""
        text = self.prompt(item, dataset_name)
        key = (item.source, item.index, text)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if item.image_b64:
            kwargs["images"] = [item.image]
            kwargs.update(self._pixel_kwargs)
        try:
            enc = dict(self.processor(**kwargs))
        except ValueError as err:
            raise GenerationError(
                f"{item.source} row index {item.index}: the processor rejects this item ({err})"
            ) from err
        if self.cache_dtype is not None:
            enc = {k: v.to(self.cache_dtype) if v.is_floating_point() else v for k, v in enc.items()}
        self._cache[key] = enc
        return enc

    def prepare(self, items: Sequence[Item], dataset_name: str | None = None) -> None:
        """Encode (and cache) every item now, so bad items fail before any generation starts."""
        for item in items:
            self.encode(item, dataset_name)

    def batches(self, items: Sequence[Item], dataset_name: str | None = None) -> list[list[int]]:
        """Positions of ``items`` grouped into batches of similar prompt length (deterministic)."""
        lengths = [int(self.encode(it, dataset_name)["input_ids"].shape[-1]) for it in items]
        order = sorted(range(len(items)), key=lambda i: (lengths[i], i))
        size = max(1, self.config.batch_size)
        return [order[i : i + size] for i in range(0, len(order), size)]

    @torch.inference_mode()
    def generate(
        self, model: torch.nn.Module, items: Sequence[Item], dataset_name: str | None = None
    ) -> list[str]:
        """Greedy continuations of ``items`` (in their order), decoded without special tokens."""
        device, dtype = model_device_dtype(model)
        responses: list[str] = [""] * len(items)
        for batch in self.batches(items, dataset_name):
            inputs = left_pad_collate([self.encode(items[i], dataset_name) for i in batch], self.pad_id)
            inputs = {
                k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                for k, v in inputs.items()
            }
            out = model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.config.max_new_tokens,
                pad_token_id=self.pad_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            new = out[:, inputs["input_ids"].shape[1] :].cpu()
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                responses[i] = text.strip()
        return responses


def generate_responses(
    model: torch.nn.Module, processor: Any, items: Sequence[Item], config: GenerationConfig | None = None
) -> list[str]:
    """One-shot :meth:`Generator.generate` (no cache kept between calls); see :class:`Generator`."""
    return Generator(processor, config).generate(model, items)
