"""Files and folders written whole or not at all: a reader (a running study, a resumed build) never sees
half a file, and a failed write leaves the old one in place and no temporary behind."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path


def _read_umask() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it: done once, at import, before any thread
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``, which is
    atomic on one file system; the temporary file is removed if anything fails. The file keeps the mode of
    the one it replaces (a new one gets the umask's, as ``open`` would give it), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8, newlines as given (the encoding fails before any
    temporary file exists)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def replace_dir(tmp: str | Path, out: str | Path, *, replace: bool = True) -> Path:
    """Move the complete folder ``tmp`` to ``out`` (same file system).

    Without an ``out``, one rename. With one and ``replace``: the old folder is renamed aside, ``tmp``
    renamed in, then the old one deleted; if the second rename fails the old folder is put back, so ``out``
    is always either the old folder or the new one, never a mixture. With ``replace=False`` an existing
    non-empty ``out`` raises ``OSError`` (the caller decides, e.g. another process finished first) and
    ``tmp`` is left for the caller to remove."""
    tmp, out = Path(tmp), Path(out)
    if not (replace and out.exists()):
        tmp.rename(out)
        return out
    trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    out.rename(trash)
    try:
        tmp.rename(out)
    except BaseException:
        trash.rename(out)
        raise
    shutil.rmtree(trash, ignore_errors=True)
    return out
