"""Writing VLMEvalKit-format TSVs (what pandas ``to_csv(sep="\\t", index=False)`` writes, as VLMEvalKit does).

Used by the proxy sampler (a subset keeps its source's cells verbatim) and by anything that builds a
benchmark file (tests, the toy world). Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from merge_core.atomic import write_text_atomic


def encode_image(image: Image.Image, fmt: str = "PNG") -> str:
    """A PIL image as the base64 string VLMEvalKit stores in an ``image`` cell."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_tsv(rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Write rows (dicts of column -> cell; PIL images are base64-encoded) as a VLMEvalKit TSV, atomically."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    data = [
        {c: (encode_image(r[c]) if isinstance(r.get(c), Image.Image) else r.get(c, "")) for c in cols}
        for r in rows
    ]
    frame = pd.DataFrame(data, columns=cols)
    return write_text_atomic(path, frame.to_csv(sep="\t", index=False))
