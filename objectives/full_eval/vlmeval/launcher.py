"""Run VLMEvalKit's own ``run.py`` entry point, after adapting its model wrappers to a machine without a GPU.

This file is executed by VLMEvalKit's interpreter (``<vlmeval python> vlmeval/launcher.py <run.py args>``),
not imported by mergesearch: it may only use the stdlib and what that environment has (vlmeval, torch,
transformers). The arguments are VLMEvalKit's ``run.py`` arguments, passed through unchanged.

Attention, on any machine: VLMEvalKit's Qwen2-VL and Idefics2 wrappers always load with
``attn_implementation="flash_attention_2"``, which needs the ``flash_attn`` package. Whenever ``flash_attn``
cannot be imported (not installed, or built for another torch/CUDA), or the CPU patches apply,
``from_pretrained`` is wrapped to load with ``sdpa`` instead, and the launcher logs it.

Why each CPU patch (only applied when ``torch.cuda.is_available()`` is False, or MERGESEARCH_VLMEVAL_CPU=1):
- ``Qwen2VLChat.__init__`` asserts ``max(get_gpu_memory()) > 0``; the wrappers' modules get a
  ``get_gpu_memory`` that reports one device.
- the wrappers load with ``device_map="auto"``; ``from_pretrained`` is wrapped to use the CPU.
- they move inputs and models with ``.cuda()`` / ``.to("cuda")``; those become CPU no-ops.
Inference is otherwise VLMEvalKit's own (prompts, generation settings, evaluation, score files).
"""

from __future__ import annotations

import functools
import os
import sys

# Run as a script, this file's folder is sys.path[0], and it holds our own ``vlmeval.py`` (the backend),
# which would shadow VLMEvalKit's ``vlmeval`` package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _is_cuda(device: object) -> bool:
    if device is None:
        return False
    text = str(device)
    return text == "cuda" or text.startswith("cuda:")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def flash_attn_importable() -> str | None:
    """None when ``import flash_attn`` works; else why not (``ImportError: ...``), for the log."""
    try:
        import flash_attn  # noqa: F401
    except Exception as err:  # a wheel built for another torch raises more than ImportError
        return f"{type(err).__name__}: {err}"
    return None


def patch_attention_to_sdpa() -> list[str]:
    """Wrap ``PreTrainedModel.from_pretrained`` so that a request for ``flash_attention_2`` (either keyword,
    or the legacy ``use_flash_attention_2=True``) loads with ``sdpa``; other requests pass unchanged."""
    import transformers

    original_from_pretrained = transformers.PreTrainedModel.from_pretrained.__func__

    @classmethod  # type: ignore[misc]
    @functools.wraps(original_from_pretrained)
    def from_pretrained(cls, *args, **kwargs):
        if (
            kwargs.get("attn_implementation") == "flash_attention_2"
            or kwargs.get("_attn_implementation") == "flash_attention_2"
            or kwargs.get("use_flash_attention_2")
        ):
            kwargs.pop("_attn_implementation", None)
            kwargs["attn_implementation"] = "sdpa"
        kwargs.pop("use_flash_attention_2", None)
        # an Auto class (IDEFICS2 loads through AutoModelForVision2Seq) has already put the request into
        # the config it passes on; the setter carries the change into the sub-configs
        config = kwargs.get("config")
        if getattr(config, "_attn_implementation", None) == "flash_attention_2":
            config._attn_implementation = "sdpa"
        return original_from_pretrained(cls, *args, **kwargs)

    transformers.PreTrainedModel.from_pretrained = from_pretrained
    return ["PreTrainedModel.from_pretrained: flash_attention_2 -> sdpa"]


def patch_for_cpu() -> list[str]:
    """Install the CPU patches; returns the names of what was patched (printed for the log)."""
    import torch
    import transformers

    patched: list[str] = []

    original_from_pretrained = transformers.PreTrainedModel.from_pretrained.__func__

    @classmethod  # type: ignore[misc]
    @functools.wraps(original_from_pretrained)
    def from_pretrained(cls, *args, **kwargs):
        if kwargs.get("device_map") not in (None, "cpu"):
            kwargs["device_map"] = "cpu"
        return original_from_pretrained(cls, *args, **kwargs)

    transformers.PreTrainedModel.from_pretrained = from_pretrained
    patched.append("PreTrainedModel.from_pretrained: device_map -> cpu")

    def module_cuda(self, device=None):
        return self

    torch.nn.Module.cuda = module_cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    patched.append("Module.cuda / Tensor.cuda: no-op")

    original_tensor_to = torch.Tensor.to

    def tensor_to(self, *args, **kwargs):
        args = tuple("cpu" if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return original_tensor_to(self, *args, **kwargs)

    torch.Tensor.to = tensor_to

    original_module_to = torch.nn.Module.to

    def module_to(self, *args, **kwargs):
        args = tuple("cpu" if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return original_module_to(self, *args, **kwargs)

    torch.nn.Module.to = module_to
    patched.append("Tensor.to / Module.to: cuda -> cpu")

    from transformers.feature_extraction_utils import BatchFeature
    from transformers.tokenization_utils_base import BatchEncoding

    for cls in (BatchFeature, BatchEncoding):
        original = cls.to

        def batch_to(self, *args, _original=original, **kwargs):
            args = tuple("cpu" if _is_cuda(a) else a for a in args)
            if _is_cuda(kwargs.get("device")):
                kwargs["device"] = "cpu"
            return _original(self, *args, **kwargs)

        cls.to = batch_to
    patched.append("BatchFeature.to / BatchEncoding.to: cuda -> cpu")

    torch.cuda.empty_cache = lambda: None
    torch.cuda.set_device = lambda *a, **k: None

    import importlib

    import vlmeval.smp

    def one_device() -> list[int]:
        return [1 << 20]

    for module_name in (
        "vlmeval.smp",
        "vlmeval.smp.misc",
        "vlmeval.vlm.qwen2_vl.model",
        "vlmeval.vlm.llava.llava",
        "vlmeval.vlm.idefics",
    ):
        try:
            module = importlib.import_module(module_name)
        except Exception:  # a wrapper whose own optional deps are missing: nothing to patch there
            continue
        if hasattr(module, "get_gpu_memory"):
            module.get_gpu_memory = one_device
            patched.append(f"{module_name}.get_gpu_memory: one device")
    del vlmeval
    return patched


def patch_image_only_processors() -> list[str]:
    """Let VLMEvalKit's wrappers load mergesearch checkpoints whose processor is image-only.

    mergesearch saves Qwen2(.5)-VL processors as ``Qwen2VLImageOnlyProcessor`` / ``Qwen2_5_VLImageOnlyProcessor``
    (no video processor: the core environment has no torchvision). VLMEvalKit calls
    ``Qwen2VLProcessor.from_pretrained`` / ``AutoProcessor.from_pretrained``, which want the stock class and a
    video processor config. For such a directory the stock processor is built from the same files (image
    processor settings in processor_config.json, tokenizer, chat template) plus a default video processor,
    which image benchmarks never use. Any other directory loads unchanged.
    """
    import json

    import transformers
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    stock = {
        "Qwen2VLImageOnlyProcessor": transformers.Qwen2VLProcessor,
        "Qwen2_5_VLImageOnlyProcessor": transformers.Qwen2_5_VLProcessor,
    }

    def stock_processor(path: object) -> object | None:
        if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
            return None
        cfg_path = os.path.join(path, "processor_config.json")
        if not os.path.isfile(cfg_path):
            return None
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        cls = stock.get(cfg.get("processor_class"))
        if cls is None:
            return None
        image_cfg = {k: v for k, v in cfg.get("image_processor", {}).items() if k != "image_processor_type"}
        template_path = os.path.join(path, "chat_template.jinja")
        template = open(template_path, encoding="utf-8").read() if os.path.isfile(template_path) else None
        return cls(
            image_processor=Qwen2VLImageProcessor(**image_cfg),
            tokenizer=transformers.AutoTokenizer.from_pretrained(path),
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=template,
        )

    patched = []
    for owner in (transformers.AutoProcessor, *stock.values()):
        original = owner.from_pretrained

        def from_pretrained(path, *args, _original=original, **kwargs):
            built = stock_processor(path)
            return built if built is not None else _original(path, *args, **kwargs)

        owner.from_pretrained = staticmethod(from_pretrained)
        patched.append(f"{owner.__name__}.from_pretrained: image-only mergesearch processors -> stock class")
    return patched


def patch_processor_argument_order() -> list[str]:
    """VLMEvalKit's ``LLaVA_Next.generate_inner`` calls ``processor(prompt, images)``, the transformers 4
    order; transformers 5 processors take ``(images, text)``, so the prompt string arrives as an image.
    A call whose first positional argument is text is rebound by keyword; other calls pass unchanged."""
    import transformers

    def is_text(x: object) -> bool:
        return isinstance(x, str) or (isinstance(x, list) and bool(x) and all(isinstance(t, str) for t in x))

    patched = []
    for cls in (transformers.LlavaNextProcessor, transformers.LlavaProcessor):
        original = cls.__call__

        def call(self, *args, _original=original, **kwargs):
            if len(args) >= 1 and is_text(args[0]) and "text" not in kwargs:
                kwargs["text"] = args[0]
                if len(args) >= 2 and "images" not in kwargs:
                    kwargs["images"] = args[1]
                args = args[2:]
            return _original(self, *args, **kwargs)

        cls.__call__ = call
        patched.append(f"{cls.__name__}.__call__: (text, images) positional order -> keywords")
    return patched


def adapt(force: str) -> list[str]:
    """Install the patches this machine needs (module docstring); the log lines saying which and why.

    ``force``: MERGESEARCH_VLMEVAL_CPU — "0" patches nothing, "1" the CPU patches, "auto" the CPU patches
    when there is no CUDA. Unless "0": sdpa for flash_attention_2 whenever ``flash_attn`` does not import
    (or the CPU patches apply), and the processor patches."""
    lines: list[str] = []
    if force == "0":
        return lines
    cpu = force == "1" or not _cuda_available()
    if cpu:
        import torch

        torch.set_num_threads(int(os.environ.get("MERGESEARCH_VLMEVAL_THREADS", "1")))
        lines += [f"[mergesearch cpu adapter] {line}" for line in patch_for_cpu()]
    why = "the CPU patches apply" if cpu else flash_attn_importable()
    if why is not None:
        for line in patch_attention_to_sdpa():
            lines.append(f"[mergesearch adapter] flash_attn is not usable ({why}): {line}")
    for line in patch_image_only_processors() + patch_processor_argument_order():
        lines.append(f"[mergesearch adapter] {line}")
    return lines


def main(argv: list[str]) -> int:
    for line in adapt(os.environ.get("MERGESEARCH_VLMEVAL_CPU", "auto")):
        print(line, flush=True)

    from vlmeval import run as vlmeval_run

    sys.argv = ["vlmeval.run", *argv]
    vlmeval_run.load_env()
    vlmeval_run.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
