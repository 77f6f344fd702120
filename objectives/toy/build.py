"""Build the toy world: train base, reasoning LLM and VLM on the CPU (fixed thread counts), save real Hugging Face
checkpoints and the benchmarks, atomically, in a cache keyed by version, size and seed.

Stages (sizes in :data:`SIZES`; the "full" row is the design in shared/notes/toy-world.md):

1. base LM: chat-formatted mix (10% worked chains on training triples, 12% ``A plus B`` with A in 10..18,
   78% generic skills), loss on every token.
2. reasoning LLM = base fine-tuned on ``X plus Y plus Z =`` -> its chain of thought, training triples only,
   embed_tokens and lm_head frozen, loss on the answer.
3. VLM = Qwen2-VL with the base's language model: (0) vision tower + linear probe on digit classes,
   (1) LM frozen, vision learns ``<img> what number ?``, (2) vision frozen, LM (minus embeddings / lm_head)
   learns generic skills with the first digit as an image, plus text replay.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from merge_core.atomic import replace_dir
from merge_core.errors import MergesearchError
from objectives.toy import bench_data, tasks
from objectives.toy.fingerprint import machine_info, weights_fingerprint
from objectives.toy.models import new_base, new_vlm_from_base
from objectives.toy.render import BLANK, render_many
from objectives.toy.sizes import SIZES, ToySize
from objectives.toy.train import (
    ImagePool,
    Schedule,
    encode,
    image_features,
    lm_loss,
    run_stage,
    set_trainable,
    vlm_logits,
)
from objectives.toy.vocab import build_tokenizer, prompt_ids

TOY_VERSION = "v2"
MANIFEST = "toy_world.json"


class ToyBuildError(MergesearchError):
    """The toy world cannot be built or an existing one is unusable."""


STAGE_LR = {"base": 3e-3, "llm": 1e-3, "vision": 2e-3, "align": 1e-3, "vlm": 1e-3}


@dataclass(frozen=True)
class ToyWorld:
    """A built toy world: checkpoint dirs, the LMUData dir with the benchmarks, and their names."""

    root: Path
    vlm: Path
    llm: Path
    base: Path
    data_dir: Path
    datasets: tuple[str, ...]
    proxy_datasets: tuple[str, ...]
    seed: int = 0
    size: str = "full"
    info: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, root: str | Path) -> ToyWorld:
        """Read a built world's manifest; ToyBuildError when it is missing or from another version."""
        root = Path(root)
        path = root / MANIFEST
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ToyBuildError(
                f"{path}: no readable toy-world manifest ({err}); rebuild with `mergesearch toy build --force`"
            ) from err
        if meta.get("version") != TOY_VERSION:
            raise ToyBuildError(
                f"{path}: toy world version {meta.get('version')!r}, expected {TOY_VERSION!r}; rebuild with --force"
            )
        return cls(
            root=root,
            vlm=root / "vlm",
            llm=root / "llm",
            base=root / "base",
            data_dir=root / "LMUData",
            datasets=tuple(meta["datasets"]),
            proxy_datasets=tuple(meta["proxy_datasets"]),
            seed=int(meta["seed"]),
            size=str(meta["size"]),
            info=meta,
        )


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` or $MERGESEARCH_CACHE or ~/.cache/mergesearch."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MERGESEARCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mergesearch"


def world_dir(seed: int, size: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache root>/toy/<version>-<size>-seed<seed>``."""
    return cache_root(cache_dir) / "toy" / f"{TOY_VERSION}-{size}-seed{seed}"


def build_toy_world(
    seed: int = 0,
    *,
    size: str = "full",
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = False,
) -> ToyWorld:
    """The toy world for ``seed`` and ``size``, built on first use and cached (see :func:`world_dir`).

    Same seed and size -> byte-identical safetensors files. A second call returns the cached world at once.
    """
    return build_into(world_dir(seed, size, cache_dir), seed=seed, size=size, force=force, progress=progress)


def build_into(
    out: str | Path, *, seed: int, size: str, force: bool = False, progress: bool = False
) -> ToyWorld:
    """Build the world into directory ``out`` (temp dir beside it, renamed when complete)."""
    if size not in SIZES:
        raise ToyBuildError(f"unknown toy size {size!r}; use one of {sorted(SIZES)}")
    if not isinstance(seed, int) or seed < 0:
        raise ToyBuildError(f"toy seed must be a non-negative integer, got {seed!r}")
    out = Path(out)
    if out.exists() and not force:
        if (out / MANIFEST).is_file():
            return ToyWorld.load(out)
        raise ToyBuildError(
            f"{out} exists but holds no toy world ({MANIFEST} missing); remove it or pass --force"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _build(tmp, seed, SIZES[size], size, progress)
        try:  # with --force, the old world is replaced only once the new one is complete
            replace_dir(tmp, out, replace=force)
        except OSError:
            if not (out / MANIFEST).is_file():  # another process finished the same world first: use theirs
                raise
        else:
            bench_data.relocate_manifests(out / "LMUData", tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ToyWorld.load(out)


# The text stages (base, LLM) train on 2 threads: their weights came out byte-identical with 1 and 2
# threads (checked on a full seed-0 build), and it cuts the build from ~6.6 to ~5 minutes. The VLM stage's
# weights do depend on the thread count, so it stays on one thread. Fixed numbers, not the machine's core
# count, so a seed gives the same files on any machine of the same CPU kind.
TEXT_STAGE_THREADS = 2
VLM_STAGE_THREADS = 1


@contextlib.contextmanager
def _deterministic_torch(threads: int = 1) -> Iterator[None]:
    before, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(det)


def _streams(seed: int, name: str) -> np.random.Generator:
    # one independent numpy stream per purpose, so changing one stage's length leaves the others unchanged
    return np.random.default_rng([seed, *name.encode()])


def _build(tmp: Path, seed: int, sz: ToySize, size: str, progress: bool) -> None:
    timings: dict[str, float] = {}
    losses: dict[str, float] = {}
    cpu0 = time.process_time()
    say = _reporter(progress)
    tokenizer = build_tokenizer()
    train_triples, held_out = tasks.split_triples(seed, sz.train_triples)
    with _deterministic_torch(TEXT_STAGE_THREADS):
        t0 = time.perf_counter()
        base = new_base(seed * 1000 + 1)
        rng = _streams(seed, "base")
        curve = run_stage(
            base.parameters(),
            Schedule(sz.base_steps, STAGE_LR["base"], batch=sz.batch),
            lambda _: _text_loss(base, [tasks.base_mix(rng, train_triples) for _ in range(sz.batch)], "all"),
            label="base",
            progress=say,
        )
        losses["base"] = curve[-1]
        timings["base"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        llm = new_base(0)
        llm.load_state_dict(base.state_dict())
        set_trainable(llm, True)
        set_trainable(llm.model.embed_tokens, False)
        set_trainable(llm.lm_head, False)
        rng = _streams(seed, "llm")
        curve = run_stage(
            llm.parameters(),
            Schedule(sz.llm_steps, STAGE_LR["llm"], batch=sz.batch),
            lambda _: _text_loss(
                llm,
                [
                    tasks.reasoning(train_triples[int(i)])
                    for i in rng.integers(0, len(train_triples), sz.batch)
                ],
                "answer",
            ),
            label="llm",
            progress=say,
        )
        losses["llm"] = curve[-1]
        timings["llm"] = time.perf_counter() - t0

    with _deterministic_torch(VLM_STAGE_THREADS):
        t0 = time.perf_counter()
        vlm, image_processor = _train_vlm(base, seed, sz, say, losses)
        timings["vlm"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for m in (base, llm, vlm):
            set_trainable(m, True)
            m.eval()
        _save_text_model(base, tokenizer, tmp / "base")
        _save_text_model(llm, tokenizer, tmp / "llm")
        _save_vlm(vlm, tokenizer, image_processor, tmp / "vlm")
        timings["save"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    data_dir = tmp / "LMUData"
    names, proxies = bench_data.write_benchmarks(data_dir, seed, held_out, sz)
    timings["benchmarks"] = time.perf_counter() - t0
    timings["process_cpu"] = time.process_time() - cpu0
    meta = {
        "version": TOY_VERSION,
        "seed": seed,
        "size": size,
        "sizes": asdict(sz),
        "datasets": names,
        "proxy_datasets": proxies,
        "held_out_triples": [list(t) for t in held_out],
        "final_train_loss": losses,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "machine": machine_info(),  # the same seed trains other floats on another CPU (toy.fingerprint)
        "fingerprint": weights_fingerprint(tmp),
    }
    (tmp / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")


def _reporter(progress: bool) -> Callable[[str, int, int, float], None] | None:
    if not progress:
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def report(label: str, step: int, total: int, loss: float) -> None:
        bar = bars.get(label) or bars.setdefault(label, tqdm(total=total, desc=f"toy {label}", leave=True))
        bar.update(1)
        if step % 25 == 0 or step == total:
            bar.set_postfix(loss=f"{loss:.3f}")
        if step == total:
            bar.close()

    return report


def _text_loss(model: nn.Module, examples: list[tasks.Example], loss_on: str) -> torch.Tensor:
    batch = encode(examples, loss_on=loss_on)
    return lm_loss(model(input_ids=batch.input_ids).logits, batch.targets)


def _train_vlm(
    base: nn.Module, seed: int, sz: ToySize, say: Callable | None, losses: dict[str, float]
) -> tuple[nn.Module, object]:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from objectives.toy.render import SIDE

    image_processor = Qwen2VLImageProcessorPil(min_pixels=SIDE * SIDE, max_pixels=SIDE * SIDE)
    vlm = new_vlm_from_base(base, seed * 1000 + 2)
    vlm.train()
    pool_rng = _streams(seed, "pool")
    codes = pool_rng.integers(0, BLANK + 1, size=sz.pool_images)
    images = render_many(codes, pool_rng)
    pool = ImagePool(codes)

    def pixels(indices: list[int]) -> torch.Tensor:
        return image_processor([images[i] for i in indices], return_tensors="pt")["pixel_values"]

    # stage 0: vision tower + linear probe on the 11 image classes (stands in for a CLIP start)
    torch.manual_seed(seed * 1000 + 3)
    probe = nn.Linear(vlm.config.text_config.hidden_size, BLANK + 1)
    set_trainable(vlm, False)
    set_trainable(vlm.model.visual, True)
    rng = _streams(seed, "vision")

    def probe_loss(_: int) -> torch.Tensor:
        idx = [int(i) for i in rng.integers(0, len(images), sz.batch)]
        feats = image_features(vlm, pixels(idx), len(idx))
        return nn.functional.cross_entropy(probe(feats), torch.as_tensor(codes[idx], dtype=torch.long))

    curve = run_stage(
        [*vlm.model.visual.parameters(), *probe.parameters()],
        Schedule(sz.vision_steps, STAGE_LR["vision"], batch=sz.batch),
        probe_loss,
        label="vision",
        progress=say,
    )
    losses["vision"] = curve[-1]

    # stage 1: LM frozen; the vision tower and merger learn to speak the LM's language
    rng = _streams(seed, "align")

    def align_loss(_: int) -> torch.Tensor:
        examples = [tasks.perception(rng) for _ in range(sz.batch)]
        batch = encode(examples, loss_on="answer")
        idx = pool.pick(batch.images, rng)
        feats = image_features(vlm, pixels(idx), len(idx))
        return lm_loss(vlm_logits(vlm, batch.input_ids, feats), batch.targets)

    curve = run_stage(
        vlm.model.visual.parameters(),
        Schedule(sz.align_steps, STAGE_LR["align"], batch=sz.batch),
        align_loss,
        label="align",
        progress=say,
    )
    losses["align"] = curve[-1]

    # stage 2: vision frozen (its features precomputed once); LM minus embeddings / lm_head learns
    set_trainable(vlm, False)
    with torch.no_grad():
        feats_all = torch.cat(
            [
                image_features(
                    vlm, pixels(list(range(i, min(i + 1000, len(images))))), min(1000, len(images) - i)
                )
                for i in range(0, len(images), 1000)
            ]
        )
    lm = vlm.model.language_model
    set_trainable(lm, True)
    set_trainable(lm.embed_tokens, False)
    rng = _streams(seed, "vlm")

    def vlm_loss(_: int) -> torch.Tensor:
        examples = [tasks.vlm_mix(rng) for _ in range(sz.batch)]
        batch = encode(examples, loss_on="answer")
        idx = pool.pick(batch.images, rng)
        feats = feats_all[idx] if idx else None
        return lm_loss(vlm_logits(vlm, batch.input_ids, feats), batch.targets)

    curve = run_stage(
        lm.parameters(),
        Schedule(sz.vlm_steps, STAGE_LR["vlm"], batch=sz.batch),
        vlm_loss,
        label="vlm",
        progress=say,
    )
    losses["vlm"] = curve[-1]
    return vlm, image_processor


def _generation_defaults(model: nn.Module) -> None:
    gc = model.generation_config
    gc.eos_token_id = model.config.get_text_config().eos_token_id
    gc.pad_token_id = model.config.get_text_config().pad_token_id
    gc.bos_token_id = None
    gc.do_sample = False
    gc.max_new_tokens = 24


def _save_text_model(model: nn.Module, tokenizer, out: Path) -> None:
    _generation_defaults(model)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _save_vlm(vlm: nn.Module, tokenizer, image_processor, out: Path) -> None:
    from objectives.processing import save_image_only_processor

    _generation_defaults(vlm)
    vlm.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    processor = save_image_only_processor(image_processor, tokenizer, out, "qwen2_vl")
    _check_template(processor)


def _check_template(processor) -> None:
    """The training token layout must be what the processor's chat template produces for real prompts."""
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "plus 3 plus 4 ="}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    got = processor(text=[text], images=[Image.new("RGB", (28, 28))], return_tensors="pt")["input_ids"][
        0
    ].tolist()
    want = prompt_ids("plus 3 plus 4 =", image=True)
    if got != want:
        raise ToyBuildError(f"toy chat template drifted from the training layout: {got} != {want}")
