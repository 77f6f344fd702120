"""Image-only processors for Qwen2-VL / Qwen2.5-VL, loadable through ``AutoProcessor`` without torchvision.

transformers' ``Qwen2VLProcessor`` and ``Qwen2_5_VLProcessor`` take a video processor, and every video
processor imports torchvision, which does not install beside a CPU torch wheel of another release. The
scorer only ever feeds images, so these subclasses drop the video slot: their sub-processors are the image
processor (``Qwen2VLImageProcessorPil`` is chosen by ``AutoImageProcessor`` when torchvision is absent) and
the tokenizer; prompts, image-token expansion and chat templates are the parent's.

How to use it::

    from objectives.processing import register_image_only_processors, save_image_only_processor
    register_image_only_processors()            # idempotent; call before AutoProcessor.from_pretrained
    processor = AutoProcessor.from_pretrained(model_dir)

A checkpoint loads this way when its ``processor_config.json`` names ``Qwen2VLImageOnlyProcessor`` or
``Qwen2_5_VLImageOnlyProcessor`` as ``processor_class`` (what :func:`save_image_only_processor` writes).
:func:`load_processor` also handles checkpoints saved with the stock class names: it builds the image-only
processor from the same files (image processor config + tokenizer + chat template).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, PretrainedConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

from merge_core.errors import MergesearchError


class ProcessorLoadError(MergesearchError):
    """A checkpoint's processor files are missing or unusable."""


def _init_image_only(processor: Any, image_processor: Any, tokenizer: Any, chat_template: str | None) -> None:
    # The parents' __init__ forwards a third (video) sub-processor to ProcessorMixin, whose argument count
    # must equal get_attributes(); so set the token fields the parent sets, then call the mixin directly.
    processor.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
    processor.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
    processor.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
        processor.image_token
    )
    processor.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
        processor.video_token
    )
    ProcessorMixin.__init__(processor, image_processor, tokenizer, chat_template=chat_template)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video processor (so without torchvision); images and text only."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        _init_image_only(self, image_processor, tokenizer, chat_template)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (so without torchvision); images and text only."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        _init_image_only(self, image_processor, tokenizer, chat_template)


# model_type -> image-only processor class: the architecture knowledge of this module, as data.
IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
}


class _ImageOnlyMarkerConfig(PretrainedConfig):
    """Registration key only: AutoProcessor resolves a ``processor_class`` name through the classes registered
    under some config class. A private config keeps the stock Qwen2-VL config mapping untouched."""

    model_type = "mergesearch_image_only_marker"


class _ImageOnly25MarkerConfig(PretrainedConfig):
    """The same, for the Qwen2.5-VL image-only processor (one processor class per config key)."""

    model_type = "mergesearch_image_only_marker_25"


_REGISTERED = False


def register_image_only_processors() -> None:
    """Make ``AutoProcessor`` resolve ``processor_class: Qwen2VLImageOnlyProcessor`` / ``Qwen2_5_VLImageOnlyProcessor``.

    Idempotent. After it, ``AutoProcessor.from_pretrained(dir)`` loads a checkpoint whose processor_config.json
    names one of these classes, with no video processor and therefore no torchvision import.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    AutoProcessor.register(_ImageOnlyMarkerConfig, Qwen2VLImageOnlyProcessor, exist_ok=True)
    AutoProcessor.register(_ImageOnly25MarkerConfig, Qwen2_5_VLImageOnlyProcessor, exist_ok=True)
    _REGISTERED = True


def image_only_processor_class(model_type: str) -> type[ProcessorMixin] | None:
    """The image-only processor class for a transformers ``model_type``, or None when the stock one loads."""
    return IMAGE_ONLY_PROCESSORS.get(model_type)


def save_image_only_processor(
    image_processor: Any, tokenizer: Any, out_dir: str | Path, model_type: str
) -> ProcessorMixin:
    """Build the image-only processor for ``model_type`` from its parts and save it to ``out_dir``.

    The saved processor_config.json names the image-only class, so ``AutoProcessor.from_pretrained(out_dir)``
    loads it after :func:`register_image_only_processors`. The tokenizer's chat template is the processor's.
    """
    cls = IMAGE_ONLY_PROCESSORS.get(model_type)
    if cls is None:
        raise ProcessorLoadError(
            f"no image-only processor for model_type {model_type!r}; known: {sorted(IMAGE_ONLY_PROCESSORS)}"
        )
    processor = cls(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    processor.save_pretrained(str(out_dir))
    return processor


def load_processor(model_dir: str | Path, *, trust_remote_code: bool = False) -> ProcessorMixin:
    """Load a checkpoint's processor, image-only for Qwen2(.5)-VL, whatever processor_class it was saved with.

    Qwen2(.5)-VL: image processor (``AutoImageProcessor``, the PIL one without torchvision) + tokenizer
    (``AutoTokenizer``) + the chat template found in the directory, wrapped in the image-only class.
    Other families: ``AutoProcessor.from_pretrained``.
    """
    register_image_only_processors()
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ProcessorLoadError(f"{path}: no config.json; pass a saved transformers checkpoint directory")
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    cls = IMAGE_ONLY_PROCESSORS.get(model_type)
    try:
        if cls is None:
            return AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        image_processor = AutoImageProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ProcessorLoadError(
            f"{path}: cannot load its processor ({err}); the directory needs preprocessor/processor config and "
            "tokenizer files (save them with the model)"
        ) from err
    template = _find_chat_template(path) or getattr(tokenizer, "chat_template", None)
    if template is None:
        raise ProcessorLoadError(
            f"{path}: no chat template (chat_template.jinja or tokenizer_config.json); add one"
        )
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _find_chat_template(path: Path) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    legacy = path / "chat_template.json"
    if legacy.is_file():
        return json.loads(legacy.read_text()).get("chat_template")
    return None
