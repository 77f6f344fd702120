"""merge_core.atomic: a file is replaced whole, and a failed write leaves the old file and no temporary."""

from __future__ import annotations

from pathlib import Path

import pytest

from merge_core.atomic import replace_dir, write_bytes_atomic, write_text_atomic


def test_write_replaces_whole_and_keeps_newlines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.tsv"
    assert write_text_atomic(path, "x\r\ny\n") == path
    assert path.read_bytes() == b"x\r\ny\n"  # newlines as given: TSVs are byte-identical on every OS
    write_text_atomic(path, "é")
    assert path.read_bytes() == "é".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.tsv"]


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "\ud800")  # a lone surrogate cannot be encoded as UTF-8
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_replaced_file_keeps_its_mode_and_a_new_one_gets_the_umasks(tmp_path: Path) -> None:
    import os
    import stat

    old = tmp_path / "old.log"
    old.write_bytes(b"key=secret")
    old.chmod(0o640)
    write_bytes_atomic(old, b"key=***")
    assert old.read_bytes() == b"key=***" and stat.S_IMODE(old.stat().st_mode) == 0o640
    umask = os.umask(0o022)
    os.umask(umask)
    new = write_bytes_atomic(tmp_path / "new.json", b"{}")
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_failed_bytes_write_removes_temporary(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_bytes_atomic(tmp_path / "a.bin", "not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "f.txt").write_text(text)
    return path


def test_replace_dir_swaps_in_the_complete_folder(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", "old")
    replace_dir(_folder(tmp_path / ".tmp", "new"), out)
    assert (out / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no trash, no temporary
    fresh = replace_dir(_folder(tmp_path / ".tmp2", "first"), tmp_path / "fresh")
    assert (fresh / "f.txt").read_text() == "first"


def test_replace_dir_puts_the_old_folder_back_when_the_new_one_cannot_move(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", "old")
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / "missing", out)
    assert (out / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_dir_without_replace_refuses_an_existing_folder(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", "theirs")
    tmp = _folder(tmp_path / ".tmp", "mine")
    with pytest.raises(OSError):
        replace_dir(tmp, out, replace=False)
    assert (out / "f.txt").read_text() == "theirs" and tmp.exists()  # the caller removes its temporary
