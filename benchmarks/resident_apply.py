"""ResidentMerger's apply per memory tier on the Qwen2-0.5B-shaped bf16 trio of merge_throughput.py.

    .venv/bin/python benchmarks/resident_apply.py [--layers N] [--rounds R] [--components attention,mlp,norm]

For each tier (``device``: sources held in memory; ``host``: streamed from the safetensors files through the
page cache) one worker process loads a ResidentMerger and, in R rounds measured side by side, times:
``apply`` of a linear recipe and of a TIES recipe (density 0.5), reading the bytes that apply's host tier
reads (pread from the page cache into one reused buffer: the read floor), and a torch copy of the same
bytes between resident tensors (the memory floor).  Medians over rounds and the ratios are printed.  Then 1
and 2 such workers run at once on the host (2 rounds of the linear apply) and each reports its peak RSS
(VmHWM), its largest PSS (``/proc/self/smaps_rollup``, sampled after every apply) and what it holds for the
sources: that PSS less its mappings of the three shards (the host tier's views: page-cache pages,
``/proc/self/smaps``), less the interpreter's before the merger was built and less the model's bytes.  The
host memory the sources take is that sum over the workers, plus (host tier) the page cache of the three
files (``fincore``), which every worker shares: its 2-workers-vs-1 ratio is the target's.  A worker's own
interpreter, torch heap and model are duplicated by any design of one process per worker (on a GPU host the
model sits on the device); the raw PSS ratio is printed beside.

Targets: host-tier apply <= 2x its read floor (linear; TIES is printed beside: its selection is the
kernels' business), host memory for the sources with 2 workers <= 1.2x that of one (host tier).
This machine has no GPU: the figures are the CPU side (the host tier's reads and the merge on the CPU).
``--layers``: build (once, cached beside merge_throughput's) a trio with fewer decoder layers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import merge_throughput  # noqa: E402  (the trio's builder; its file belongs to the kernels' benchmark)

GB = 1e9


def trio(cache: Path, layers: int | None) -> dict[str, Path]:
    """merge_throughput's trio (its cache), or the same builder with fewer layers in a cache of its own."""
    if layers is None or layers == merge_throughput.TEXT["num_hidden_layers"]:
        return merge_throughput.build(cache)
    merge_throughput.TEXT = {**merge_throughput.TEXT, "num_hidden_layers": layers}
    return merge_throughput.build(cache.with_name(f"{cache.name}-layers{layers}"))


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _pss() -> int:
    with open("/proc/self/smaps_rollup", encoding="ascii") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _mapped_pss(files: set[str]) -> int:
    """PSS of the clean pages of this process's mappings of ``files``: page-cache pages (the host tier's
    views of the shards, and whatever transformers left mapped).  Dirty pages of such a private mapping
    (a loaded parameter written by a merge) are the process's own memory and not counted."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line; the path is field 6
                inside = len(head) == 6 and head[5].strip() in files
            elif inside and head[0] == "Pss:":
                total += int(head[1]) * 1024
            elif inside and head[0] == "Pss_Dirty:":
                total -= int(head[1]) * 1024
    return total


def page_cache(files: list[Path]) -> int:
    """Bytes of ``files`` in the page cache (util-linux ``fincore``), or their size where it is missing."""
    try:
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *map(str, files)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        return sum(int(x) for x in out.split())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return sum(f.stat().st_size for f in files)


def _list(rows: list[dict], key: str) -> str:
    return ", ".join(f"{r[key] / GB:.2f}" for r in rows)


def _sources(rows: list[dict], tier: str, cache: int) -> int:
    """Host memory for the merge sources: what the workers hold (+ the shared page cache, host tier)."""
    return sum(r["own"] for r in rows) + (cache if tier == "host" else 0)


# ------------------------------------------------------------------------------------------- child
def child(
    tier: str, paths: dict[str, str], components: list[str], rounds: int, methods: list[str], go: str | None
) -> None:
    """One worker: load, then R rounds of (apply, read floor, copy floor) per method; JSON on stdout."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from merge_core import Recipe, ResidentMerger
    from merge_core.sources import SourceReader

    pss_start = _pss()  # the interpreter with torch and transformers' config classes, before any model

    merger = ResidentMerger(
        paths["vlm"], paths["llm"], paths["base"], sources=tier, components=components, report=None
    )
    load_s = time.perf_counter() - t0
    base = {"vlm": paths["vlm"], "llm": paths["llm"], "base": paths["base"], "components": components}
    recipes = {
        "linear": Recipe.from_dict({**base, "method": "linear", "weight": 0.1}),
        "ties": Recipe.from_dict({**base, "method": "ties", "density": 0.5}),
    }
    merged = merger.plan(recipes["ties"]).merged()  # linear and TIES merge the same tensors
    recipes = {k: v for k, v in recipes.items() if k in methods}
    readers = {k: SourceReader(getattr(merger, f"files_{k}")) for k in ("vlm", "llm", "base")}
    reads = {"linear": [], "ties": []}  # what the host tier reads for each recipe
    for e in merged:
        slot = merger._slots[e.canonical]
        pairs = [(readers["vlm"], slot.vlm_name), (readers["llm"], slot.llm_name)]
        reads["linear"] += pairs
        reads["ties"] += [*pairs, (readers["base"], slot.base_name)]
    biggest = max(r.files.specs[n].nbytes for r, n in reads["ties"])
    buf = torch.empty(biggest, dtype=torch.uint8)
    view = memoryview(buf.numpy())

    def read_floor(pairs) -> float:
        t = time.perf_counter()
        for r, name in pairs:
            spec = r.files.specs[name]
            fd = r._fds.get(r.files.where[name]) or os.open(r.files.where[name], os.O_RDONLY)
            r._fds[r.files.where[name]] = fd
            done = 0
            while done < spec.nbytes:
                done += os.preadv(fd, [view[done : spec.nbytes]], spec.offset + done)
        return time.perf_counter() - t

    src = torch.empty(biggest, dtype=torch.uint8)
    src.fill_(1)
    dst = torch.empty_like(src)

    def copy_floor(pairs) -> float:
        t = time.perf_counter()
        for r, name in pairs:
            n = r.files.specs[name].nbytes
            dst[:n].copy_(src[:n])
        return time.perf_counter() - t

    if go:  # the 2-worker run: start the timed part together
        while not Path(go).exists():
            time.sleep(0.01)
    times: dict[str, list[float]] = {f"{p}{m}": [] for m in recipes for p in ("", "read_", "copy_")}
    shards = {str(f.resolve()) for k in ("vlm", "llm", "base") for f in getattr(merger, f"files_{k}").files}

    def sample() -> tuple[int, int]:
        mapped = _mapped_pss(shards)
        return _pss() - mapped, mapped

    pss, mapped = sample()
    total = pss + mapped
    for _ in range(rounds):
        for name, recipe in recipes.items():
            t = time.perf_counter()
            merger.apply(recipe)
            times[name].append(time.perf_counter() - t)
            now, now_mapped = sample()
            pss, mapped, total = max(pss, now), max(mapped, now_mapped), max(total, now + now_mapped)
            times[f"read_{name}"].append(read_floor(reads[name]))
            times[f"copy_{name}"].append(copy_floor(reads[name]))
    model_bytes = sum(p.numel() * p.element_size() for p in merger.model.parameters())
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update(
        tier=merger.sources, load_s=load_s, wall_s=time.perf_counter() - t0, peak_rss=_status("VmHWM"), pss=total,
        pss_unmapped=pss, mapped=mapped,
        pss_start=pss_start, model_bytes=model_bytes, resident_bytes=merger.resident_bytes(),
        read_bytes={k: sum(r.files.specs[n].nbytes for r, n in v) for k, v in reads.items()},
    )  # fmt: skip
    print("RESULT " + json.dumps(out), flush=True)


def run_workers(
    tier: str, n: int, paths: dict[str, Path], args: argparse.Namespace, methods: str, rounds: int
) -> list[dict]:
    go = Path(f"/tmp/resident-apply-go-{os.getpid()}-{tier}-{n}")
    go.unlink(missing_ok=True)
    spec = json.dumps({k: str(v) for k, v in paths.items()})
    cmd = [sys.executable, __file__, "--child", tier, spec, "--components", args.components,
           "--rounds", str(rounds), "--methods", methods]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*cmd, "--go", str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(n)
    ]
    t0 = time.perf_counter()
    go.touch()  # each child waits for it after loading, so the timed parts overlap
    results = []
    for p in procs:
        out, err = p.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            raise SystemExit(f"worker failed ({tier}, {n}): {err[-2000:]}")
        results.append(json.loads(lines[-1][7:]))
    go.unlink(missing_ok=True)
    results[0]["command_s"] = time.perf_counter() - t0
    for r in results:
        r["own"] = max(0, r["pss_unmapped"] - r["pss_start"] - r["model_bytes"])
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cache",
        default=str(Path(os.environ.get("MERGESEARCH_CACHE", "~/.cache/mergesearch")).expanduser() / "bench"),
    )
    ap.add_argument("--layers", type=int, default=None, help="decoder layers of the trio (default: all 24)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--components", default="attention,mlp,norm", help="what the merger holds and merges")
    ap.add_argument("--tiers", default="device,host")
    ap.add_argument("--child", nargs=2, metavar=("TIER", "PATHS"), help=argparse.SUPPRESS)
    ap.add_argument("--methods", default="linear,ties", help=argparse.SUPPRESS)
    ap.add_argument("--go", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(
            args.child[0], json.loads(args.child[1]), args.components.split(","), args.rounds,
            args.methods.split(","), args.go,
        )  # fmt: skip
        return
    paths = {
        k: v
        for k, v in trio(Path(args.cache).expanduser(), args.layers).items()
        if k in ("vlm", "llm", "base")
    }
    for p in paths.values():  # warm the page cache: the floors are page-cache reads
        subprocess.run(["cat", str(p / "model.safetensors")], stdout=subprocess.DEVNULL, check=True)
    layers = args.layers or merge_throughput.TEXT["num_hidden_layers"]
    print(f"trio: Qwen2-0.5B-shaped bf16, {layers} layers, components {args.components}; {args.rounds} rounds; "
          f"{os.cpu_count()} CPU(s), torch 1 thread per worker; no GPU here: CPU figures only")  # fmt: skip
    cache = page_cache([p / "model.safetensors" for p in paths.values()])
    rows = {}
    for tier in args.tiers.split(","):
        one = run_workers(tier, 1, paths, args, "linear,ties", args.rounds)[0]
        two = run_workers(tier, 2, paths, args, "linear", 2)  # memory: the linear apply is enough
        rows[tier] = (one, two)
        print(f"\n[{tier} tier] load {one['load_s']:.1f}s, whole worker {one['wall_s']:.1f}s; "
              f"held besides the model {one['resident_bytes'] / GB:.2f} GB")  # fmt: skip
        for m in ("linear", "ties"):
            a, rd, cp = one[m], one[f"read_{m}"], one[f"copy_{m}"]
            gb = one["read_bytes"][m] / GB
            print(f"  apply {m:6s} {a:7.3f}s per trial | read {gb:.2f} GB from the page cache {rd:.3f}s "
                  f"({gb / rd:.2f} GB/s) | torch copy {cp:.3f}s | apply/read {a / rd:5.2f}x  apply/copy {a / cp:5.2f}x")  # fmt: skip
        for label, rs in (("1 worker", [one]), ("2 workers", two)):
            print(f"  {label}: peak RSS {_list(rs, 'peak_rss')} GB, largest PSS {_list(rs, 'pss')} GB "
                  f"(sum {sum(r['pss'] for r in rs) / GB:.2f}; of it clean pages of the mapped shards {_list(rs, 'mapped')} GB, "
                  f"page cache); held for the sources (PSS - those - interpreter - model) "
                  f"{_list(rs, 'own')} GB")  # fmt: skip
        shared = f" + the page cache of the files, shared: {cache / GB:.2f} GB" if tier == "host" else ""
        print(f"  2 workers vs 1: PSS together {sum(r['pss'] for r in two) / one['pss']:.2f}x; "
              f"host memory for the sources {_sources(two, tier, cache) / _sources([one], tier, cache):.2f}x "
              f"(held by the workers{shared})")  # fmt: skip
    if "host" in rows:
        one, two = rows["host"]
        ratio = one["linear"] / one["read_linear"]
        mem = _sources(two, "host", cache) / _sources([one], "host", cache)
        print(f"\ntargets (host tier): apply linear {ratio:.2f}x its read floor (<= 2x: {'met' if ratio <= 2 else 'MISSED'}); "
              f"TIES {one['ties'] / one['read_ties']:.2f}x (reported); host memory for the sources, 2 workers vs 1: "
              f"{mem:.2f}x (<= 1.2x: {'met' if mem <= 1.2 else 'MISSED'})")  # fmt: skip
        if "device" in rows:
            dev = rows["device"][0]
            print(f"  host apply vs the device tier's (sources in memory, another process): linear "
                  f"{one['linear'] / dev['linear']:.2f}x, TIES {one['ties'] / dev['ties']:.2f}x; on the CPU the host "
                  f"tier merges straight from the mapped page cache")  # fmt: skip


if __name__ == "__main__":
    main()
