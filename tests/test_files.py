"""The one atomic writer: a failed or interrupted write leaves the old file whole."""

from __future__ import annotations

import pytest

from grponorm.files import atomic_open, atomic_write


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, "old\n")
    atomic_write(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be"), atomic_open(tmp_path / "x", "a"):
        pass
