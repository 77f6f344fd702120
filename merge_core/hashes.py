"""sha256 of source weight files for the model card, with a stat-keyed cache.

Hashing three 7B checkpoints reads ~45 GB; a promotion run exports several recipes of the same sources.
A file's digest is cached under ``$MERGESEARCH_CACHE/hashes.json`` (default ``~/.cache/mergesearch``) keyed
by (real path, size, mtime_ns, inode) — the same change detection ``make`` and ``git status`` rely on — so
each source is read once.  Set ``MERGESEARCH_NO_HASH_CACHE=1`` to always re-read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from merge_core.atomic import write_text_atomic

CHUNK = 8 * 1024 * 1024


def cache_file() -> Path:
    """Where digests are cached."""
    return Path(os.environ.get("MERGESEARCH_CACHE", "~/.cache/mergesearch")).expanduser() / "hashes.json"


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(files: list[Path], into: dict[str, str]) -> None:
    """Fill ``into[str(file)]`` with each file's sha256, using and updating the cache."""
    use_cache = os.environ.get("MERGESEARCH_NO_HASH_CACHE") != "1"
    cache: dict[str, str] = {}
    cf = cache_file()
    if use_cache:
        try:
            cache = json.loads(cf.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
    changed = False
    for f in files:
        key = _key(f)
        digest = cache.get(key) if use_cache else None
        if digest is None:
            digest = sha256_file(f)
            cache[key] = digest
            changed = True
        into[str(f)] = digest
    if use_cache and changed:
        cache = {k: v for k, v in cache.items() if os.path.exists(k.split("|", 1)[0])}  # forget deleted files
        try:
            write_text_atomic(cf, json.dumps(cache))  # concurrent exports never see a half-written cache
        except OSError:
            pass  # the cache is an optimisation only
