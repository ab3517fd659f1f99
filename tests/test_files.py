"""Atomic, no-clobber output files (``backend/files.py``), on real files: what readers and earlier results see."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.errors import InputError
from backend.files import atomic_output, atomic_write
from backend.mesh import ColoredMesh, export_mesh


def test_a_failed_write_leaves_the_earlier_file_and_no_temporary_one(tmp_path: Path) -> None:
    path = tmp_path / "mesh.glb"
    path.write_bytes(b"earlier")
    with pytest.raises(RuntimeError, match="exporter crashed"):
        with atomic_output(path) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".glb" and tmp.name.startswith(".mesh.")
            tmp.write_bytes(b"half a fi")
            raise RuntimeError("exporter crashed")
    assert path.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["mesh.glb"]


def test_replacing_is_a_rename_so_readers_see_the_old_or_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.glb"
    path.write_bytes(b"earlier")
    os.link(path, tmp_path / "reader")  # a reader holding the old file
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and (tmp_path / "reader").read_bytes() == b"earlier"


def test_without_overwrite_a_file_that_appears_meanwhile_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "mesh.glb"
    with pytest.raises(FileExistsError):
        with atomic_output(path, overwrite=False) as tmp:
            tmp.write_bytes(b"ours")
            path.write_bytes(b"another program's")  # e.g. a second batch writing the same name
    assert path.read_bytes() == b"another program's" and sorted(p.name for p in tmp_path.iterdir()) == ["mesh.glb"]

    fresh = tmp_path / "fresh.glb"
    atomic_write(fresh, b"ours", overwrite=False)
    assert fresh.read_bytes() == b"ours"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_results_get_the_usual_permissions_not_those_of_a_private_temporary_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "mesh.ply", b"ply")
    finally:
        os.umask(old)
    assert (tmp_path / "mesh.ply").stat().st_mode & 0o777 == 0o644


def test_export_never_replaces_a_file_unasked(tmp_path: Path) -> None:
    mesh = ColoredMesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), np.array([[0, 1, 2]]),
                       np.full((3, 3), 200, np.uint8))
    path = tmp_path / "tri.ply"
    path.write_bytes(b"earlier")
    with pytest.raises(InputError, match="tri.ply already exists: pass --overwrite"):
        export_mesh(mesh, path)
    assert path.read_bytes() == b"earlier"
    export_mesh(mesh, path, overwrite=True)
    assert path.read_bytes().startswith(b"ply")
    (tmp_path / "folder.glb").mkdir()
    with pytest.raises(InputError, match="folder.glb is a folder"):
        export_mesh(mesh, tmp_path / "folder.glb", overwrite=True)
