"""The ``vllm`` engine: ``vllm.LLM`` inside the worker process, weights updated in place per recipe.

Start-up: in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: one process, ~2 s to start; the multiprocess
engine takes 12-18 s and cannot receive tensors through ``collective_rpc``), ``enforce_eager`` (no graph
capture: the weights change between trials), the VLM's own directory as the model. Memory: on a GPU
``gpu_memory_utilization`` (weights + KV cache); elsewhere ``kv_cache_memory_bytes`` (vLLM's CPU backend
otherwise reserves 90% of the RAM). ``max_model_len``: the option, else the longest prompt plus
``max_new_tokens`` — checked against the prompts before vLLM loads.

Updates: ``merge_core.updates.WeightUpdates`` yields the tensors that differ from what the engine holds
(every tensor of a fused vLLM module together: :mod:`objectives.engines.families`), merged on the engine's
device in its dtype as the reload consumes them (the merged language model is never all in memory at
once); they go through ``collective_rpc("reload_weights", weights_iterator=...)``, the model runner's
layerwise in-place reload. A fused module that gets only some of its tensors is rebuilt from garbage
(measured: outputs all token 0), hence the module grouping. Why this path and not the weight-transfer API
(``init_weight_transfer_engine`` / ``update_weights``): the reload is the one public path that works on
every backend vLLM 0.32 has, the CPU one included (the transfer API's backends are IPC and NCCL, GPU
only), and in one process it passes the tensors by reference. Then the prefix cache (KV blocks computed
with the old weights) and the encoder cache (image embeddings) are reset, or the next request reuses
stale state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .choice import EngineError, VllmOptions, check_context, model_type_of, unserved_message
from .families import vllm_family
from .settings import model_repetition_penalty, processor_kwargs, sampling_kwargs

if TYPE_CHECKING:
    from merge_core import Recipe
    from merge_core.memory_plan import VllmMemoryPlan
    from objectives.datasets import Item
    from objectives.generation import Generation, Generator


def llm_kwargs(
    vlm: str, device: str, dtype: str | None, max_model_len: int, options: VllmOptions, seed: int = 0
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for this engine (see the module docstring)."""
    kwargs: dict[str, Any] = {
        "model": vlm,
        "tokenizer": vlm,
        "enforce_eager": True,
        "max_model_len": max_model_len,
        "dtype": dtype or "auto",
        "seed": seed,
        "limit_mm_per_prompt": {"image": 1, "video": 0},
        "trust_remote_code": False,
    }
    if device.startswith("cuda"):
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
    else:
        kwargs["kv_cache_memory_bytes"] = options.kv_cache_mb << 20
    return kwargs


class VLLMEngine:
    """``vllm.LLM`` + :class:`merge_core.updates.WeightUpdates` (see the module docstring)."""

    name = "vllm"

    def __init__(
        self,
        vlm: str,
        llm: str,
        base: str | None,
        generator: Generator,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        options: VllmOptions | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from merge_core.updates import WeightUpdates

        if trust_remote_code:
            raise EngineError(
                "engine 'vllm' runs stock model classes only; use engine = 'hf' for remote code"
            )
        model_type = model_type_of(vlm)
        family = vllm_family(model_type)
        if family is None:
            raise EngineError(unserved_message(vlm, model_type))
        self.family = family
        self.vlm = vlm
        self.generator = generator
        self.device = device
        self.options = options or VllmOptions()
        self.updates = WeightUpdates(vlm, llm, base, dtype=dtype, device=device)
        self.dtype = str(self.updates.dtype).removeprefix("torch.")
        self.memory_plan = self._plan()  # MemoryPlanError (one line) here, before vLLM loads anything
        self.longest_prompt = 0
        self.llm: Any = None
        self.last_update: dict[str, float] = {}

    def _plan(self) -> VllmMemoryPlan:
        """vLLM's weights and KV cache plus the update sources of every language-model component, on this
        worker's device (:func:`merge_core.memory_plan.plan_vllm_memory`)."""
        import torch

        from merge_core.devices import free_per_worker
        from merge_core.memory_plan import plan_vllm_memory, total_memory
        from merge_core.recipe import COMPONENTS

        device = torch.device(self.device)
        return plan_vllm_memory(
            self.updates.tmap, self.updates.dtype, COMPONENTS, device=device,
            free=free_per_worker(device, 1), total=total_memory(device),
            gpu_memory_utilization=self.options.gpu_memory_utilization,
            kv_cache_bytes=self.options.kv_cache_mb << 20,
        )  # fmt: skip

    def prepare(self, items: Sequence[Item], dataset_name: str | None = None) -> None:
        """Run the processor over ``items`` (the HF generator's cache) and note the longest prompt."""
        for item in items:
            n = int(self.generator.encode(item, dataset_name)["input_ids"].shape[-1])
            self.longest_prompt = max(self.longest_prompt, n)

    def start(self) -> None:
        """Check the context length against the prepared prompts, then start vLLM (once)."""
        if self.llm is not None:
            return
        max_new = int(self.generator.config.max_new_tokens)
        mml = self.options.max_model_len or self.longest_prompt + max_new
        check_context(mml, self.longest_prompt, max_new, "the proxy's longest prompt")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not self.device.startswith("cuda"):
            # the worker sets its own torch threads; vLLM's CPU binding would pin every worker to all cores
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        from vllm import LLM, SamplingParams

        from objectives.processing import register_image_only_processors

        register_image_only_processors()  # toy-style checkpoints name the image-only processor class
        kwargs = llm_kwargs(self.vlm, self.device, self.dtype, mml, self.options)
        mm = processor_kwargs(self.generator.processor, self.generator.config)
        if mm:
            kwargs["mm_processor_kwargs"] = mm
        self.llm = LLM(**kwargs)
        self.sampling = SamplingParams(
            **sampling_kwargs(self.generator.config, model_repetition_penalty(self.vlm))
        )

    def _request(self, item: Item, dataset_name: str | None) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt": self.generator.prompt(item, dataset_name)}
        if item.image_b64:
            prompt["multi_modal_data"] = {"image": item.image}
        return prompt

    def generate(self, items: Sequence[Item], dataset_name: str | None = None) -> list[str]:
        """Greedy responses of ``items`` in order: the HF tokenizer's decoding of vLLM's token ids."""
        self.start()
        outs = self.llm.generate(
            [self._request(it, dataset_name) for it in items], self.sampling, use_tqdm=False
        )
        # the HF generator's own decoding (special tokens skipped, cut before a stop string, stripped), so
        # equal token ids give equal responses in both engines
        return [self.generator._text(self._before_eos(list(o.outputs[0].token_ids))) for o in outs]

    def _before_eos(self, ids: list[int]) -> list[int]:
        """``ids`` up to the first of the config's ``eos_token_ids`` (excluded), as the HF generator keeps
        them: vLLM's output holds the stop token, and an added eos id need not be a special token that
        decoding skips."""
        eos = set(getattr(self.generator.config, "eos_token_ids", ()) or ())
        end = next((j for j, t in enumerate(ids) if t in eos), len(ids))
        return ids[:end]

    def generate_results(self, items: Sequence[Item], dataset_name: str | None = None) -> list[Generation]:
        """:meth:`generate` as :class:`~objectives.generation.Generation` records (vLLM schedules its own
        memory: preemption, not failure, when the KV cache is full)."""
        from objectives.generation import Generation

        return [Generation(text) for text in self.generate(items, dataset_name)]

    def apply(self, recipe: Recipe) -> None:
        """Stream the tensors that change for ``recipe`` into vLLM, then reset its prefix and encoder caches.

        The tensors are merged as vLLM consumes them (one module's worth is alive at a time, not the whole
        language model). ``last_update``: tensors sent, seconds spent merging them, seconds in all.
        """
        self.start()
        t0 = time.perf_counter()
        merge = [0.0, 0]
        if self.updates.pending(recipe, module_of=self.family.module_of):
            try:
                self.llm.collective_rpc(
                    "reload_weights", kwargs={"weights_iterator": self._timed(recipe, merge)}
                )
            except BaseException:
                self.updates.invalidate()  # vLLM may hold part of the update: send everything next time
                raise
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        total = time.perf_counter() - t0
        self.last_update = {"tensors": float(merge[1]), "merge_s": merge[0], "load_s": total - merge[0]}

    def _timed(self, recipe: Recipe, tally: list) -> Iterator[tuple[str, Any]]:
        updates = self.updates.updates(recipe, module_of=self.family.module_of)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(updates)
            except StopIteration:
                return
            finally:
                tally[0] += time.perf_counter() - t0
            tally[1] += 1
            yield item
