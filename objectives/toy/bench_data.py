"""The toy benchmarks as VLMEvalKit TSVs (base64 PNG images) plus their proxy subsets.

MathVista_TOY: perception ``<img> what number ?`` (task "figure question answering") and perception with
reasoning ``<img X> plus Y plus Z =`` (task "math word problem"). MathVision_TOY: text reasoning
``X plus Y plus Z =`` (category "arithmetic") and the same triples with X as an image (category
"visual arithmetic"). Every triple is held out from all training and every image is freshly drawn.
VLMEvalKit's MathVision format requires an image on every row, so a text-only item carries a blank canvas
(tinted, noisy, no digit), which the VLM saw during training as "no picture".
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from objectives.datasets import load_dataset
from objectives.proxy import make_proxy
from objectives.toy import tasks
from objectives.toy.render import BLANK, render
from objectives.toy.sizes import ToySize

VISTA = "MathVista_TOY"
MATHV = "MathVision_TOY"


def png_b64(image: Image.Image) -> str:
    """The image as base64 PNG text (VLMEvalKit's image cell)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _cycle(held_out: list[tasks.Triple], n: int, rng: np.random.Generator) -> list[tasks.Triple]:
    # every held-out triple once (shuffled), then again, until n
    out: list[tasks.Triple] = []
    while len(out) < n:
        out.extend(held_out[int(i)] for i in rng.permutation(len(held_out)))
    return out[:n]


def vista_rows(seed: int, held_out: list[tasks.Triple], n_perception: int, n_chain: int) -> list[dict]:
    """MathVista-format rows: perception items then perception-with-reasoning items, shuffled together."""
    rng = np.random.default_rng([seed, 101])
    specs: list[tuple[str, tasks.Example, str]] = []
    for d in rng.integers(0, 10, n_perception):
        specs.append(("P", tasks.Example("what number ?", str(int(d)), image=int(d)), ""))
    for t in _cycle(held_out, n_chain, rng):
        specs.append(
            (
                "Cv",
                tasks.Example(f"plus {t[1]} plus {t[2]} =", str(sum(t)), image=t[0]),
                " ".join(map(str, t)),
            )
        )
    rows = []
    for i, j in enumerate(rng.permutation(len(specs))):
        kind, ex, triple = specs[int(j)]
        perception = kind == "P"
        rows.append(
            {
                "index": i + 1,
                "image": png_b64(render(ex.image, rng)),
                "question": ex.question,
                "answer": ex.answer,
                "question_type": "free_form",
                "answer_type": "integer",
                "choices": "",
                "answer_option": "",
                "precision": "",
                "unit": "",
                "task": "figure question answering" if perception else "math word problem",
                "skills": "['numeric commonsense']" if perception else "['arithmetic reasoning']",
                "toy_task": kind,
                "triple": triple,
            }
        )
    return rows


def mathv_rows(seed: int, held_out: list[tasks.Triple], n_text: int, n_image: int) -> list[dict]:
    """MathVision-format rows: text reasoning items (blank-canvas image) and their image variants."""
    rng = np.random.default_rng([seed, 102])
    specs: list[tuple[str, tasks.Example, tasks.Triple]] = []
    for t in _cycle(held_out, n_text, rng):
        specs.append(("R", tasks.Example(f"{t[0]} plus {t[1]} plus {t[2]} =", str(sum(t)), image=BLANK), t))
    for t in _cycle(held_out, n_image, rng):
        specs.append(("Cm", tasks.Example(f"plus {t[1]} plus {t[2]} =", str(sum(t)), image=t[0]), t))
    rows = []
    for i, j in enumerate(rng.permutation(len(specs))):
        kind, ex, t = specs[int(j)]
        rows.append(
            {
                "index": i + 1,
                "image": png_b64(render(ex.image, rng)),
                "question": ex.question,
                "answer": ex.answer,
                "choices": "[]",
                "category": "arithmetic" if kind == "R" else "visual arithmetic",
                "level": 1 if kind == "R" else 2,
                "toy_task": kind,
                "triple": " ".join(map(str, t)),
            }
        )
    return rows


def write_tsv(rows: list[dict], path: Path) -> None:
    """Rows -> a tab-separated file with a header, as VLMEvalKit reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def write_benchmarks(
    data_dir: Path, seed: int, held_out: list[tasks.Triple], sz: ToySize
) -> tuple[list[str], list[str]]:
    """Write both full sets and their ``sz.proxy_n``-item proxies (objectives.proxy's stratified sampler,
    seeded by the world seed) into ``data_dir``; returns (names, proxy names)."""
    write_tsv(vista_rows(seed, held_out, sz.vista_perception, sz.vista_chain), data_dir / f"{VISTA}.tsv")
    write_tsv(mathv_rows(seed, held_out, sz.mathv_text, sz.mathv_image), data_dir / f"{MATHV}.tsv")
    names = [VISTA, MATHV]
    proxies = [
        Path(make_proxy(load_dataset(data_dir / f"{n}.tsv"), sz.proxy_n, seed, data_dir)).stem for n in names
    ]
    return names, proxies


def relocate_manifests(data_dir: Path, old_root: Path, new_root: Path) -> None:
    """Point the proxy manifests' ``source.path`` at the renamed world (they were written in the temp dir)."""
    for manifest in sorted(data_dir.glob("*.manifest.json")):
        meta = json.loads(manifest.read_text())
        src = meta.get("source", {})
        if isinstance(src.get("path"), str) and src["path"].startswith(str(old_root)):
            src["path"] = str(new_root) + src["path"][len(str(old_root)) :]
            tmp = manifest.with_name(f".{manifest.name}.tmp")
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
            tmp.replace(manifest)
