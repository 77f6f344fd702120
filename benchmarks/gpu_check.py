"""One check of the GPU path on a Qwen2.5-VL-7B-shaped trio: load, apply per tier, memory, decode, DARE.

    python3 benchmarks/gpu_check.py [--device cuda] [--layers 4] [--batch-size 16] [--out DIR]
    python3 benchmarks/gpu_check.py --device cpu --layers 1 --tiny      # the CPU mode tests/ runs

Needs python3 with torch, transformers and safetensors (the repository on sys.path; no Optuna, no Ray).
Builds a VLM (Qwen2.5-VL-7B-Instruct's config: every width and the vision tower at full size, ``--layers``
decoder layers, default 4 of 28, so that build and write stay within the time), a Qwen2.5-Math-7B-shaped
LLM and a base with random bf16 weights (LLM and VLM = base + small noise), writes them as safetensors with
a tokenizer and processor, then prints:

- the load time of a ResidentMerger per tier (``device`` and ``host``);
- the apply time per tier for linear, TIES and DARE-TIES recipes, and whether both tiers give the same
  weights bit for bit;
- the memory plan against the measured peak (``torch.cuda.max_memory_allocated`` on CUDA; the peak RSS
  growth on the CPU, which is not judged there);
- one proxy step's decode throughput (tokens/s, items/s) at the study's batch size through
  ``objectives.generation.Generator``, then again with ``model.generate`` wrapped by a stand-in raising
  ``torch.OutOfMemoryError`` for batches above half that size (skipped, with the reason, if the tree has
  no out-of-memory splitting: the error then reaches this script);
- the DARE mask cost: ``merge_tensor`` of dare_ties / dare_linear against linear / task_arithmetic / ties
  on the same (largest MLP) tensors.

Exit status 1 on any mismatch: tiers that differ, or (CUDA) a peak above the plan.  ``--tiny``: widths of
64 (the vocabulary and layout stay), for the CPU test.  Must finish within 8 minutes on one H100.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

FAMILY = "qwen2_5_vl"
NOISE = 0.002
GB = 1e9
RECIPES = {
    "linear": {"method": "linear", "weight": 0.3},
    "ties": {"method": "ties", "density": 0.5, "vlm_weight": 1.0, "llm_weight": 0.7},
    "dare_ties": {"method": "dare_ties", "density": 0.5, "vlm_weight": 1.0, "llm_weight": 0.7, "seed": 3},
}


def say(text: str) -> None:
    print(text, flush=True)


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "little") >> 1


def _random(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)


def _canonical(name: str) -> str | None:
    """The LLM-side name of a VLM language-model parameter (in-memory names), None for vision."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    return name if name == "lm_head.weight" else None


def build(out: Path, layers: int, tiny: bool, device: torch.device) -> dict[str, Path]:
    """VLM / LLM / base checkpoints (random, deterministic) plus the VLM's tokenizer and processor."""
    from tests.real_shapes import llm_config, meta_model, vlm_config, write_checkpoint

    vcfg, lcfg = vlm_config(FAMILY, layers, tiny), llm_config(FAMILY, layers, tiny)

    def base_t(canon: str, shape: tuple[int, ...]) -> torch.Tensor:
        if canon.endswith("norm.weight"):
            return torch.ones(shape, device=device)
        return _random(shape, _seed("base", canon), device).mul_(0.02)

    def tuned(who: str):
        def fill(canon: str, shape: tuple[int, ...]) -> torch.Tensor:
            t = base_t(canon, shape)
            return t.add_(_random(shape, _seed(who, canon), device).mul_(NOISE)).to(torch.bfloat16).cpu()

        return fill

    def vlm_fill(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if not name.startswith("visual."):  # the hub names of Qwen2.5-VL's LM are the LLM's (canonical)
            return tuned("vlm")(name, shape)
        if name.endswith(("norm.weight", "ln_q.weight")):
            return torch.ones(shape)
        return _random(shape, _seed("vision", name), device).mul_(0.02).to(torch.bfloat16).cpu()

    paths = {k: out / k for k in ("vlm", "llm", "base")}
    vm, lm = meta_model(vcfg, True), meta_model(lcfg, False)
    write_checkpoint(paths["vlm"], vcfg, vm, FAMILY, fill=vlm_fill)
    write_checkpoint(paths["llm"], lcfg, lm, None, fill=tuned("llm"))
    write_checkpoint(paths["base"], lcfg, lm, None, fill=lambda n, s: base_t(n, s).to(torch.bfloat16).cpu())
    from tests.tiny.vlm_processing import add_processor

    add_processor(paths["vlm"], min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64)
    return paths


# ------------------------------------------------------------------------------------------- memory
def _rss_peak() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Peak:
    """Peak memory of a section: CUDA's allocator peak, or the process's peak RSS (not resettable: growth)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device) if self.cuda else _rss_peak()

    def bytes(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        return _rss_peak() - self.base

    @property
    def label(self) -> str:
        return "peak GPU memory (max_memory_allocated)" if self.cuda else "peak RSS growth (CPU: not judged)"


def sync(device: torch.device) -> None:
    torch.get_device_module(device.type).synchronize()


# ------------------------------------------------------------------------------------------- sections
def tiers(paths: dict[str, Path], device: torch.device, rounds: int) -> tuple[bool, object]:
    """Load and apply in each tier; True when both tiers give the same weights and peaks fit the plans."""
    from merge_core import Recipe, ResidentMerger

    recipes = {k: Recipe.from_dict({"vlm": str(paths["vlm"]), "llm": str(paths["llm"]), "base": str(paths["base"]), **v})
               for k, v in RECIPES.items()}  # fmt: skip
    ok = True
    reference: dict[str, dict[str, torch.Tensor]] = {}
    peak = Peak(device)
    merger = None
    for tier in ("device", "host"):
        merger = None
        peak.start()
        t0 = time.perf_counter()
        merger = ResidentMerger(str(paths["vlm"]), str(paths["llm"]), str(paths["base"]), device=device,
                                dtype="bfloat16", sources=tier, report=lambda line: say("  " + line))  # fmt: skip
        sync(device)
        say(
            f"[{tier}] load {time.perf_counter() - t0:.1f}s; held besides the model {merger.resident_bytes() / GB:.2f} GB"
        )
        for name, recipe in recipes.items():
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                merger.apply(recipe)
                sync(device)
                times.append(time.perf_counter() - t0)
            live = {k: p.detach() for k, p in merger.model.named_parameters() if _canonical(k)}
            if tier == "device":
                # a copy, on the CPU too (.cpu() of a CPU tensor is the tensor itself)
                reference[name] = {k: v.to("cpu", copy=True) for k, v in live.items()}
                same = ""
            else:
                diff = [k for k, v in live.items() if not torch.equal(v.cpu(), reference[name][k])]
                ok &= not diff
                same = (
                    "  same weights as the device tier"
                    if not diff
                    else f"  MISMATCH in {len(diff)} tensors, e.g. {diff[0]}"
                )
            del live  # the device tier's model must be gone when the host tier's peak is measured
            say(f"  apply {name:9s} {statistics.median(times):7.3f}s (median of {rounds}){same}")
        planned = merger.memory_plan.on_device()
        measured = peak.bytes()
        fits = measured <= planned or not peak.cuda
        ok &= fits
        say(f"  memory plan {planned / GB:.2f} GB on the device vs {peak.label} {measured / GB:.2f} GB"
            + ("" if fits else "  EXCEEDS THE PLAN"))  # fmt: skip
        if tier == "device":
            del merger
            merger = None
    return ok, merger


def _items(n: int, tiny: bool) -> list:
    from objectives.datasets import Item

    try:
        from PIL import Image
    except ImportError:
        say("  PIL is missing: text-only items")
        Image = None
    items = []
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        b64 = None
        if Image is not None:
            side = 112 + 28 * (i % 4)  # mixed sizes, as in a real proxy step
            arr = (torch.rand((side, side, 3), generator=gen) * 255).to(torch.uint8).numpy()
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            b64 = base64.b64encode(buf.getvalue()).decode()
        items.append(Item(index=str(i), question=f"What is {i} + {2 * i}? Describe the image.", answer=str(3 * i),
                          image_b64=b64, source="gpu_check", kind="mathvista"))  # fmt: skip
    return items


class CountingGenerate:
    """Wraps ``model.generate``: counts generated tokens; raises torch.OutOfMemoryError above ``limit``."""

    def __init__(self, model, limit: int | None = None) -> None:
        self.model, self.inner, self.limit = model, model.generate, limit
        self.tokens = self.calls = self.refused = 0

    def __call__(self, *args, **kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        n = int(ids.shape[0])
        if self.limit is not None and n > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError(f"stand-in: batch of {n} > {self.limit}")
        out = self.inner(*args, **kwargs)
        self.calls += 1
        seqs = out if isinstance(out, torch.Tensor) else out.sequences
        self.tokens += int(seqs.shape[0] * (seqs.shape[1] - ids.shape[1]))
        return out


def decode(merger, paths: dict[str, Path], batch_size: int, max_new_tokens: int, tiny: bool, device) -> bool:
    """One proxy step (one batch of ``batch_size`` items) with and without out-of-memory splitting."""
    try:
        import pandas  # noqa: F401  (objectives.datasets reads TSVs with it; Item itself does not need it)
    except ImportError:
        import types

        sys.modules["pandas"] = types.ModuleType("pandas")
        say("  pandas is missing: an empty module stands in (objectives.datasets imports it for TSVs only)")
    from objectives.generation import GenerationConfig, Generator
    from objectives.processing import load_processor

    processor = load_processor(paths["vlm"])
    items = _items(batch_size, tiny)
    model = merger.model
    results = {}
    for label, limit in (("no splitting", None), ("splitting triggered", max(1, batch_size // 2))):
        gen = Generator(processor, GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size))
        gen.prepare(items)
        wrapper = CountingGenerate(model, limit)
        model.generate = wrapper
        try:
            sync(device)
            t0 = time.perf_counter()
            try:
                responses = gen.generate(model, items)
            except torch.OutOfMemoryError as err:
                say(
                    f"  decode, {label}: skipped: objectives.generation has no out-of-memory splitting in this tree ({err})"
                )
                continue
            sync(device)
            dt = time.perf_counter() - t0
        finally:
            del model.generate  # the instance attribute: the class's generate again
        results[label] = responses
        say(f"  decode, {label}: {len(items)} items in {dt:.2f}s, {wrapper.calls} generate call(s) "
            f"({wrapper.refused} refused): {wrapper.tokens / dt:.1f} tokens/s, {len(items) / dt:.2f} items/s")  # fmt: skip
    if len(results) == 2:
        same = sum(a == b for a, b in zip(*results.values(), strict=True))
        say(
            f"  responses equal with and without splitting: {same}/{len(items)} (padding changes bf16 numerics)"
        )
    return True


def dare_cost(merger, device: torch.device, rounds: int) -> None:
    """merge_tensor per method on the largest held MLP tensor and its partners, on the device."""
    from merge_core.methods import merge_tensor
    from merge_core.plan import TensorOp, mask_seed

    name = max((t for t in merger.tmap.tensors if t.where.component == "mlp"), key=lambda t: t.spec.nbytes)
    files = {k: getattr(merger, f"files_{k}") for k in ("vlm", "llm", "base")}
    vlm = files["vlm"].get(name.name).to(device, torch.bfloat16)
    llm = files["llm"].get(name.llm_name).to(device, torch.bfloat16)
    base = files["base"].get(name.base_name).to(device, torch.bfloat16)
    out = torch.empty_like(vlm)
    seeds = (mask_seed(3, name.where.canonical, 0), mask_seed(3, name.where.canonical, 1))
    tv = dict(compat="mergekit", vlm_weight=1.0, llm_weight=0.7, lambda_=1.0, normalize=True)
    ops = {
        "linear": TensorOp(method="linear", compat="mergekit", weight=0.3),
        "task_arithmetic": TensorOp(method="task_arithmetic", **{**tv, "normalize": False}),
        "ties": TensorOp(method="ties", **tv, density=0.5, rescale="none"),
        "dare_linear": TensorOp(method="dare_linear", **{**tv, "normalize": False}, density=0.5, rescale="l1", seeds=seeds),
        "dare_ties": TensorOp(method="dare_ties", **tv, density=0.5, rescale="l1", seeds=seeds),
    }  # fmt: skip
    times = {}
    for label, op in ops.items():
        ts = []
        for _ in range(rounds):
            sync(device)
            t0 = time.perf_counter()
            merge_tensor(op, vlm, llm, base, out=out)
            sync(device)
            ts.append(time.perf_counter() - t0)
        times[label] = statistics.median(ts)
    n = vlm.numel()
    say(
        f"  on {name.name} ({n / 1e6:.0f}M elements): "
        + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items())
    )
    mask = times["dare_linear"] - times["task_arithmetic"]
    say(f"  DARE mask cost ~ dare_linear - task_arithmetic = {mask * 1e3:.1f} ms per tensor "
        f"({mask / times['dare_linear']:.0%} of dare_linear); dare_ties / linear {times['dare_ties'] / times['linear']:.1f}x")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (Qwen2.5-VL-7B has 28)")
    ap.add_argument("--tiny", action="store_true", help="widths of 64: a smoke run (the CPU test)")
    ap.add_argument("--batch-size", type=int, default=16, help="the study's batch size")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", help="where to write the trio (default: a temporary directory)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    from merge_core.devices import resolve_device

    device = resolve_device(args.device)
    import transformers

    say(f"gpu_check: torch {torch.__version__}, transformers {transformers.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"; Qwen2.5-VL-7B-shaped{' (tiny widths)' if args.tiny else ''}, {args.layers} decoder layers")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        t0 = time.perf_counter()
        paths = build(out, args.layers, args.tiny, device)
        sizes = {k: (p / "model.safetensors").stat().st_size / GB for k, p in paths.items()}
        say(
            f"build + write {time.perf_counter() - t0:.1f}s: "
            + ", ".join(f"{k} {v:.2f} GB" for k, v in sizes.items())
        )
        ok, merger = tiers(paths, device, args.rounds)
        say("[decode] one proxy step at the study's batch size")
        decode(merger, paths, args.batch_size, args.max_new_tokens, args.tiny, device)
        say("[dare] mask cost")
        dare_cost(merger, device, args.rounds)
    say(f"total {time.perf_counter() - t_start:.0f}s; {'OK' if ok else 'MISMATCH'}")
    print(json.dumps({"ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
