"""merge_core.atomic: a file is replaced whole, and a failed write leaves the old file and no temporary."""

from __future__ import annotations

from pathlib import Path

import pytest

from merge_core.atomic import write_text_atomic


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
