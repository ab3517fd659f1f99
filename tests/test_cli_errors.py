"""What the command line does with bad input and failures: one ``error:`` line, exit code 2, nothing written."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend import cli
from backend.errors import GPU_MEMORY, SYSTEM_MEMORY

from .bad_images import write_bad_images

REPO = Path(__file__).resolve().parents[1]
SPOT_VIEWS = REPO / "examples" / "spot_views"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed command prints, checked to be exactly one ``error:`` line with exit code 2."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def test_every_bad_image_is_one_error_line_before_any_model_loads(tmp_path: Path) -> None:
    """Run without --zero123 and with a missing checkpoint: only the image check can have stopped these runs."""
    out = tmp_path / "out é" / "mesh.glb"
    out.parent.mkdir()
    for image, expected in write_bad_images(tmp_path / "my photos ü").items():
        result = run_cli("image2mesh", str(image), "-o", str(out), "--checkpoint", str(tmp_path / "no checkpoint"))
        line = error_line(result)
        assert str(image) in line and expected in line, line
    assert not any(out.parent.iterdir())


def test_existing_output_is_kept_and_a_read_only_folder_is_reported_up_front(tmp_path: Path, read_only) -> None:
    existing = tmp_path / "spot.glb"
    existing.write_bytes(b"an earlier result")
    line = error_line(run_cli("reconstruct", str(SPOT_VIEWS), "-o", str(existing)))
    assert f"{existing} already exists: pass --overwrite" in line
    assert existing.read_bytes() == b"an earlier result"

    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        line = error_line(run_cli("reconstruct", str(SPOT_VIEWS), "-o", str(locked / "spot.glb"), "--overwrite"))
    assert f"output folder {locked} is not writable" in line
    assert not any(locked.iterdir())


class CodeRunningPayload:
    """Unpickling this creates ``marker``: it stands for any code hidden in a downloaded checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.makedirs, (str(self.marker),))


def test_checkpoint_with_a_code_payload_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload ran"
    path = tmp_path / "ckpt_215000.pth"
    path.write_bytes(pickle.dumps({"sdf_network_lod0": {"weight": CodeRunningPayload(marker)}}))
    pickle.loads(path.read_bytes())
    assert marker.is_dir()  # the payload is live: plain unpickling runs it
    marker.rmdir()
    line = error_line(run_cli("reconstruct", str(SPOT_VIEWS), "-o", str(tmp_path / "m.glb"), "--checkpoint", str(path)))
    assert "ckpt_215000.pth was refused" in line and "could run code" in line
    assert not marker.exists() and not (tmp_path / "m.glb").exists()


@pytest.mark.parametrize("raised, advice", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"), GPU_MEMORY),
    (RuntimeError("MPS backend out of memory (MPS allocated: 17.10 GB, other allocations: 1.20 GB)"), GPU_MEMORY),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"), SYSTEM_MEMORY),
], ids=["cuda", "mps", "cpu"])
def test_out_of_memory_inside_a_run_is_advice_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture, raised: Exception,
                                                               advice: str) -> None:
    """No GPU here: the exception torch raises is thrown from the real pipeline's first progress point of the volume."""

    def progress(stage: str, step: int, total: int) -> None:
        if stage == "volume":
            raise raised

    monkeypatch.setattr(cli, "stderr_progress", progress)
    out = tmp_path / "mesh.glb"
    assert cli.main(["reconstruct", str(SPOT_VIEWS), "-o", str(out), "--resolution", "16", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {advice}"]
    assert "lower mesh resolution" in advice and not out.exists()
