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


def test_atomic_write_gives_a_new_file_the_umask_mode_and_keeps_an_old_files_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        fresh = atomic_write(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # not mkstemp's 0600
        kept = tmp_path / "kept.txt"
        kept.write_text("a")
        kept.chmod(0o640)
        atomic_write(kept, "b")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640
        assert kept.read_text() == "b"
    finally:
        os.umask(old)
