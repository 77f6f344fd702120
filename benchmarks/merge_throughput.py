"""Merge throughput on a Qwen2-0.5B-shaped bf16 trio: streamed merge vs its I/O floor, DARE mask cost, resident apply.

    .venv/bin/python benchmarks/merge_throughput.py [--cache DIR] [--rebuild] [--skip-mergekit]

Builds once (then reuses) a Qwen2-VL-architecture VLM (Qwen2-0.5B text tower, a small vision tower), a
Qwen2 LLM and a base in ``~/.cache/mergesearch/bench`` (random weights; LLM and VLM = base + small noise).
Then prints, in one run with a warm page cache, for linear, TIES and DARE (density 0.5):

- whole process: wall time of the ``mergesearch merge`` command (interpreter start-up and imports
  included) against ``cp`` of the same bytes (``cat`` of the other sources, ``cp`` + ``sync`` of the VLM's
  weights: the bytes a merge reads and writes, through real processes) — the targets are judged here;
- in process: ``merge_to_disk`` alone (imports done) against ``cat`` of the sources + writing and fsyncing
  one output-sized file;
- each merge's own peak RSS (``VmHWM`` of its process: ``ru_maxrss`` would report the largest of the
  parent's peak and the child's, since Linux carries it across fork and exec);
- best of 2 for the merges, best of 3 for the floors, rounds interleaved: the machine is shared;
- the DARE mask cost: per tensor, the two masks (``splitmix64``, and v1's CPU generator beside it) against
  the DARE apply of that tensor (masks included), and over the whole model;
- mergekit on the same LM tensors when ``.venv-mergekit`` exists, and the ResidentMerger's in-place apply
  bandwidth vs a torch copy of the same bytes.

Targets: linear <= 2x, TIES <= 4x the whole-process floor, peak RSS <= 1.5 GB; DARE masks <= 10% of the
DARE apply; apply >= 50% of copy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MERGEKIT_VENV = ROOT / ".venv-mergekit"
TEXT = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
    rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645,
)  # fmt: skip
NOISE = 0.002


# ------------------------------------------------------------------------------------------- build
def _specs(model_cls, config) -> dict:
    import torch

    with torch.device("meta"):
        model = model_cls._from_config(config)
    return {k: (tuple(v.shape), k) for k, v in model.state_dict().items()}


def build(cache: Path) -> dict[str, Path]:
    """Write base / llm / vlm (+ vlm_lm, the VLM's LM as a Qwen2 checkpoint for mergekit) into ``cache``."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    paths = {k: cache / k for k in ("base", "llm", "vlm", "vlm_lm")}
    if all((p / "model.safetensors").exists() for p in paths.values()):
        return paths
    shutil.rmtree(cache, ignore_errors=True)
    for p in paths.values():
        p.mkdir(parents=True)
    cfg = Qwen2Config(**TEXT, dtype="bfloat16")
    text = {k: v for k, v in TEXT.items() if k not in ("rope_theta",)}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}
    vision = dict(
        depth=2, embed_dim=128, hidden_size=896, num_heads=4, mlp_ratio=2, patch_size=14, spatial_merge_size=2
    )
    vcfg = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, dtype="bfloat16")
    gen = torch.Generator().manual_seed(0)
    base, llm, vlm_lm = {}, {}, {}
    for name, (shape, _) in _specs(Qwen2ForCausalLM, cfg).items():
        if name == "lm_head.weight":
            continue  # tied
        if name.endswith("norm.weight"):
            t = torch.ones(shape)
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        base[name] = t.bfloat16()
        llm[name] = (t + NOISE * torch.randn(shape, generator=gen)).bfloat16()
        vlm_lm[name] = (t + NOISE * torch.randn(shape, generator=gen)).bfloat16()
        del t
    vlm = {}
    for name, (shape, _) in _specs(Qwen2VLForConditionalGeneration, vcfg).items():
        if name.startswith("model.visual."):
            disk = "visual." + name[len("model.visual.") :]
            vlm[disk] = (torch.randn(shape, generator=gen) * 0.02).bfloat16()
        elif name.startswith("model.language_model."):
            disk = "model." + name[len("model.language_model.") :]
            vlm[disk] = vlm_lm[disk]
    meta = {"format": "pt"}
    save_file(base, paths["base"] / "model.safetensors", metadata=meta)
    save_file(llm, paths["llm"] / "model.safetensors", metadata=meta)
    save_file(vlm_lm, paths["vlm_lm"] / "model.safetensors", metadata=meta)
    save_file(vlm, paths["vlm"] / "model.safetensors", metadata=meta)
    for k in ("base", "llm", "vlm_lm"):
        cfg.architectures = ["Qwen2ForCausalLM"]
        cfg.save_pretrained(paths[k])
    vcfg.architectures = ["Qwen2VLForConditionalGeneration"]
    vcfg.save_pretrained(paths["vlm"])
    return paths


# ------------------------------------------------------------------------------------------- child
def own_peak_rss() -> int:
    """This process's peak resident set (bytes): the mm's high-water mark, which exec resets."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: the best there is


def child_merge(recipe_path: str, out: str) -> None:
    """Run in a fresh process: merge, then print wall time and this process's peak RSS as JSON."""
    t0 = time.perf_counter()
    from merge_core import load_recipe, merge_to_disk

    t1 = time.perf_counter()
    merge_to_disk(load_recipe(recipe_path), out, overwrite=True, progress=False)
    t2 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "merge_s": t2 - t1, "peak_rss": own_peak_rss()}))


# the `mergesearch` console script's body (search.cli.main:run), printing the process's own peak RSS from
# an atexit handler (run() calls the handlers before its fast exit)
CLI = """import atexit, json, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
atexit.register(lambda: print(json.dumps({"peak_rss": peak()})))
try:
    from search.cli.main import run
except ImportError:  # a revision before the fast exit (benchmarks/compare_revisions.py): its console script
    from search.cli.main import main
    def run():
        sys.exit(main(sys.argv[1:]))
run()
"""


def _env(recipe: dict, hash_cache: bool) -> dict[str, str]:
    env = dict(os.environ)
    if hash_cache:
        from merge_core.hashes import sha256_files

        srcs = [Path(recipe[k]) / "model.safetensors" for k in ("vlm", "llm", "base") if recipe.get(k)]
        sha256_files(srcs, {})  # warm the cache outside the timed merge
    else:
        env["MERGESEARCH_NO_HASH_CACHE"] = "1"  # the model card's source hashes are computed in full
    return env


def run_child(recipe: dict, out: Path, tmp: Path, hash_cache: bool) -> dict:
    """merge_to_disk in a fresh process: its in-process time (imports done first) and its own peak RSS."""
    rp = tmp / f"recipe-{recipe['method']}.json"
    rp.write_text(json.dumps(recipe))
    env = _env(recipe, hash_cache)
    res = subprocess.run(
        [sys.executable, __file__, "--child", str(rp), str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if res.returncode:
        raise SystemExit(f"merge failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_cli(recipe: dict, out: Path, tmp: Path, hash_cache: bool) -> dict:
    """The whole ``mergesearch merge`` command: wall time from the parent (start-up and imports included)."""
    rp = tmp / f"recipe-{recipe['method']}.json"
    rp.write_text(json.dumps(recipe))
    env = _env(recipe, hash_cache)
    cmd = [sys.executable, "-c", CLI, "merge", str(rp), "--out", str(out), "--overwrite", "--quiet"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"mergesearch merge failed:\n{res.stderr[-3000:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["process_s"] = wall
    return info


# ------------------------------------------------------------------------------------------- floors
def cp_time(reads: list[Path], vlm: Path, where: Path) -> float:
    """Whole-process floor: ``cat`` the other sources, ``cp`` the VLM's weights and ``sync`` the copy."""
    out = where / "floor-cp.safetensors"
    others = " ".join(f"'{f}'" for f in reads if f != vlm)
    script = (f"cat {others} > /dev/null && " if others else "") + f"cp '{vlm}' '{out}' && sync '{out}'"
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", script], check=True)
    dt = time.perf_counter() - t0
    out.unlink()
    return dt


def cat_time(files: list[Path]) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def write_time(nbytes: int, where: Path) -> float:
    block = os.urandom(16 * 1024 * 1024)  # not zeros: storage layers may shortcut zero pages
    f = where / "floor.bin"
    t0 = time.perf_counter()
    with open(f, "wb") as fh:
        left = nbytes
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)
        fh.flush()
        os.fsync(fh.fileno())
    dt = time.perf_counter() - t0
    f.unlink()
    return dt


def mergekit(paths: dict[str, Path], method: str, tmp: Path) -> dict | None:
    exe = MERGEKIT_VENV / "bin" / "mergekit-yaml"
    if not exe.exists():
        return None
    if method == "linear":
        yaml = (f"merge_method: linear\nmodels:\n  - model: {paths['vlm_lm']}\n    parameters: {{weight: 0.9}}\n"
                f"  - model: {paths['llm']}\n    parameters: {{weight: 0.1}}\ndtype: bfloat16\n")  # fmt: skip
    else:
        yaml = (f"merge_method: ties\nbase_model: {paths['base']}\nmodels:\n  - model: {paths['vlm_lm']}\n"
                f"    parameters: {{weight: 1.0, density: 0.5}}\n  - model: {paths['llm']}\n"
                f"    parameters: {{weight: 1.0, density: 0.5}}\ndtype: bfloat16\n")  # fmt: skip
    cfg = tmp / f"mk-{method}.yml"
    cfg.write_text(yaml)
    out = tmp / f"mk-{method}"
    code = (
        "import resource, subprocess, sys, time, json; t=time.perf_counter(); "
        "r=subprocess.run(sys.argv[1:]); w=time.perf_counter()-t; "
        "print(json.dumps({'rc': r.returncode, 'wall': w, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024}))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(exe), str(cfg), str(out), "--lazy-unpickle"],
        capture_output=True, text=True,
    )  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"rc": -1, "wall": float("nan"), "rss": 0, "err": res.stderr[-500:]}


# ------------------------------------------------------------------------------------------- DARE masks
def mask_cost(paths: dict[str, Path]) -> dict:
    """Per merged tensor of a dare_ties plan: its two masks (v2 and v1) and its DARE apply, interleaved."""
    import torch

    from merge_core import Recipe
    from merge_core.io import ST_DTYPES, keep_freed_memory
    from merge_core.methods import merge_tensor
    from merge_core.methods.masks import keep_mask
    from merge_core.plan import build_plan
    from merge_core.stream import _read_cast, open_sources
    from merge_core.tensor_map import preflight

    keep_freed_memory()  # as in merge_to_disk
    recipe = Recipe.from_dict({"vlm": str(paths["vlm"]), "llm": str(paths["llm"]), "base": str(paths["base"]),
                               "method": "dare_ties", "density": 0.5})  # fmt: skip
    vlm, llm, base = open_sources(recipe)
    assert base is not None
    plan = build_plan(recipe, preflight(vlm, llm, base))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the merge engine runs its chunk loops on one thread
    kinds: dict[str, dict] = {}
    total = {"mask": 0.0, "apply": 0.0, "v1": 0.0, "numel": 0, "tensors": 0}
    try:
        for entry in plan.merged():
            op = entry.op
            assert op is not None
            v = _read_cast(vlm, entry.source.name, ST_DTYPES[entry.out_spec.dtype])
            lt = _read_cast(llm, entry.source.llm_name, v.dtype)
            b = _read_cast(base, entry.source.base_name, v.dtype)
            t0 = time.perf_counter()
            for seed in op.seeds:
                keep_mask("splitmix64", seed, 0.5, v)
            t1 = time.perf_counter()
            merge_tensor(op, v, lt, b)
            t2 = time.perf_counter()
            for seed in op.seeds:
                keep_mask("torch_cpu", seed, 0.5, v)
            t3 = time.perf_counter()
            kind = ".".join(entry.canonical.split(".")[-2:]) if entry.canonical else entry.source.name
            r = kinds.setdefault(kind, {"n": 0, "mask": 0.0, "apply": 0.0, "v1": 0.0})
            for key, dt in (("mask", t1 - t0), ("apply", t2 - t1), ("v1", t3 - t2)):
                r[key] += dt
                total[key] += dt
            r["n"] += 1
            total["numel"] += v.numel()
            total["tensors"] += 1
    finally:
        torch.set_num_threads(threads)
        for f in (vlm, llm, base):
            f.close()
    return {**total, "kinds": kinds}


# ------------------------------------------------------------------------------------------- resident
def resident(paths: dict[str, Path]) -> dict:
    import torch

    from merge_core import Recipe, ResidentMerger

    merger = ResidentMerger(str(paths["vlm"]), str(paths["llm"]), str(paths["base"]))
    recipe = Recipe.from_dict(
        {"vlm": str(paths["vlm"]), "llm": str(paths["llm"]), "method": "linear", "weight": 0.1}
    )
    plan = merger.plan(recipe)
    slots = [merger._slots[e.canonical] for e in plan.merged()]
    nbytes = sum(s.param.numel() * s.param.element_size() for s in slots)
    applies: list[float] = []
    copies: dict[int, list[float]] = {1: [], torch.get_num_threads(): []}
    default_threads = torch.get_num_threads()
    for _ in range(5):
        t0 = time.perf_counter()
        merger.apply(recipe)
        applies.append(time.perf_counter() - t0)
        for threads, times in copies.items():  # the copy baseline at its best thread count
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            with torch.no_grad():
                for s in slots:
                    s.param.copy_(s.pristine)
            times.append(time.perf_counter() - t0)
        torch.set_num_threads(default_threads)
    merger._dirty.clear()
    ta = statistics.median(applies)
    tc = min(statistics.median(t) for t in copies.values())
    # bytes touched: apply reads pristine + LLM and writes the parameter (3x); copy reads + writes (2x)
    return {"bytes": nbytes, "apply_s": ta, "copy_s": tc, "apply_bw": 3 * nbytes / ta, "copy_bw": 2 * nbytes / tc,
            "threads": torch.get_num_threads()}  # fmt: skip


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cache",
        default=str(Path(os.environ.get("MERGESEARCH_CACHE", "~/.cache/mergesearch")).expanduser() / "bench"),
    )
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--merges-only", action="store_true", help="skip the DARE mask and resident sections")
    ap.add_argument("--child", nargs=2, metavar=("RECIPE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_merge(*args.child)
        return
    cache = Path(args.cache)
    if args.rebuild:
        shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    paths = build(cache)
    print(f"trio in {cache} ({time.perf_counter() - t0:.1f} s to build or find)")
    gb = 1e9
    files = {k: paths[k] / "model.safetensors" for k in paths}
    sizes = {k: f.stat().st_size for k, f in files.items()}
    print("sizes: " + ", ".join(f"{k} {v / gb:.2f} GB" for k, v in sizes.items()))
    cat_time([files["vlm"], files["llm"], files["base"]])  # warm the page cache
    methods = (
        ("linear", {"method": "linear", "weight": 0.1}, ["vlm", "llm"], 2),
        ("ties", {"method": "ties", "density": 0.5}, ["vlm", "llm", "base"], 4),
        ("dare_ties", {"method": "dare_ties", "density": 0.5}, ["vlm", "llm", "base"], None),
    )
    rows = []
    with tempfile.TemporaryDirectory(dir=cache) as td:
        tmp = Path(td)
        for method, recipe, reads, target in methods:
            full = {"vlm": str(paths["vlm"]), "llm": str(paths["llm"]), "base": str(paths["base"]), **recipe}
            read_files = [files[k] for k in reads]
            floor_r, floor_w, floor_cp = [], [], []
            for cached in (False, True):
                child, cli = [], []
                for _ in range(2):  # best of two, interleaved with the floors: the disk and CPUs are shared
                    floor_r.append(cat_time(read_files))
                    floor_w.append(write_time(sizes["vlm"], tmp))
                    floor_cp.append(cp_time(read_files, files["vlm"], tmp))
                    child.append(run_child(full, tmp / f"out-{method}", tmp, cached))
                    cli.append(run_cli(full, tmp / f"out-{method}", tmp, cached))
                    shutil.rmtree(tmp / f"out-{method}", ignore_errors=True)
                mk = None if args.skip_mergekit or cached else mergekit(paths, method, tmp)
                rows.append({
                    "name": method + (" (cached sha)" if cached else ""), "method": method, "target": target,
                    "merge_s": min(r["merge_s"] for r in child), "process_s": min(r["process_s"] for r in cli),
                    "peak_rss": max(r["peak_rss"] for r in cli + child), "mk": mk,
                })  # fmt: skip
            for row in rows[-2:]:  # the floors at their best over the method's runs
                row["floor"] = min(floor_r) + min(floor_w)
                row["floor_rw"] = (min(floor_r), min(floor_w))
                row["floor_cp"] = min(floor_cp)
    print()
    print(
        "each merge writes a model card with the sha256 of its sources: computed in full, or (cached sha) taken"
    )
    print("from the stat-keyed cache that repeated exports of the same sources hit (merge_core/hashes.py)")
    print(
        "whole = the `mergesearch merge` command vs cp of the same bytes; in-process = merge_to_disk vs cat + write"
    )
    print(
        f"{'merge':24} {'whole s':>8} {'cp s':>6} {'ratio':>6} | {'in-proc s':>9} {'floor s':>8} {'(read+write)':>13} "
        f"{'ratio':>6} | {'peak RSS':>8}  target (whole process)"
    )
    for row in rows:
        whole = row["process_s"] / row["floor_cp"]
        inproc = row["merge_s"] / row["floor"]
        rss_ok = row["peak_rss"] <= 1.5 * gb
        if row["target"] is None:
            verdict = f"no time target, <= 1.5 GB: {'ok' if rss_ok else 'MISSED'}"
        else:
            ok = whole <= row["target"] and rss_ok
            verdict = f"<= {row['target']}x, <= 1.5 GB: {'ok' if ok else 'MISSED'}"
        fr, fw = row["floor_rw"]
        print(f"{row['name']:24} {row['process_s']:8.2f} {row['floor_cp']:6.2f} {whole:6.2f} | {row['merge_s']:9.2f} "
              f"{row['floor']:8.2f} {f'({fr:.2f}+{fw:.2f})':>13} {inproc:6.2f} | {row['peak_rss'] / gb:6.2f}GB  {verdict}")  # fmt: skip
    for row in rows:
        mk = row["mk"]
        if "cached" in row["name"]:
            continue
        if mk is None:
            print(f"mergekit {row['method']}: not installed or skipped (python -m venv .venv-mergekit && "
                  ".venv-mergekit/bin/pip install torch==2.13.0 && .venv-mergekit/bin/pip install mergekit)")  # fmt: skip
        elif mk.get("rc"):
            print(f"mergekit {row['method']}: failed rc={mk['rc']} {mk.get('err', '')[-200:]}")
        else:
            print(f"mergekit {row['method']}: {mk['wall']:.2f} s, peak RSS {mk['rss'] / gb:.2f} GB "
                  f"-> mergesearch is {mk['wall'] / row['merge_s']:.1f}x faster")  # fmt: skip
    if args.merges_only:
        return
    masks = mask_cost(paths)
    print(
        f"\nDARE masks (dare_ties, density 0.5, {masks['tensors']} tensors, {masks['numel'] / 1e6:.0f}M entries, "
        f"1 thread): the two masks of a tensor vs its DARE apply (masks included)"
    )
    print(f"{'tensor kind':22} {'n':>3} {'masks ms':>9} {'apply ms':>9} {'share':>6} {'v1 masks ms':>12}")
    for kind, r in sorted(masks["kinds"].items()):
        print(f"{kind:22} {r['n']:3d} {r['mask'] * 1e3 / r['n']:9.2f} {r['apply'] * 1e3 / r['n']:9.2f} "
              f"{r['mask'] / r['apply']:6.1%} {r['v1'] * 1e3 / r['n']:12.2f}")  # fmt: skip
    share = masks["mask"] / masks["apply"]
    print(
        f"{'whole model':22} {masks['tensors']:3d} {masks['mask'] * 1e3:9.0f} {masks['apply'] * 1e3:9.0f} {share:6.1%} "
        f"{masks['v1'] * 1e3:12.0f}   target <= 10%: {'ok' if share <= 0.10 else 'MISSED'} "
        f"(v1's CPU generator: {masks['v1'] / masks['apply']:.0%})"
    )
    res = resident(paths)
    print(
        f"\nresident apply (linear, {res['bytes'] / gb:.2f} GB of merged tensors, {res['threads']} threads): "
        f"{res['apply_s'] * 1000:.0f} ms = {res['apply_bw'] / gb:.2f} GB/s touched; torch copy of the same tensors "
        f"{res['copy_s'] * 1000:.0f} ms = {res['copy_bw'] / gb:.2f} GB/s; apply/copy bandwidth "
        f"{res['apply_bw'] / res['copy_bw']:.0%} (target >= 50%)"
    )


if __name__ == "__main__":
    main()
