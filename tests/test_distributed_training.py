"""`torchrun -m backend train` (DDP over gloo on the CPU) gives the same weights as one process with the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from backend.checkpoints import load_reconstructor
from backend.models import One2345Reconstructor, ReconstructorConfig

TINY_RUN = ["--steps", "2", "--batch", "2", "--rays", "32", "--volume-resolution", "24", "--device", "cpu", "--checkpoint-every", "1"]


def _train(launcher: list[str], out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*launcher, "-m", "backend", "train", "--out", str(out), *TINY_RUN],
                          capture_output=True, text=True, env=env, timeout=600)


def test_two_ddp_processes_match_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    single = _train([sys.executable], tmp_path / "single")
    assert single.returncode == 0, single.stderr
    ddp = _train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr
    assert "on 2 x cpu" in ddp.stderr and ddp.stderr.count("checkpoint at step 2") == 1  # rank 0 alone reports and writes

    one, _ = load_reconstructor(tmp_path / "single")
    two, info = load_reconstructor(tmp_path / "ddp")
    assert info.step == 2 and info.provenance["processes"] == 2
    torch.manual_seed(0)
    initial = One2345Reconstructor(ReconstructorConfig(volume_resolution=24))  # where both runs started
    moved = 0
    for (name, a), (_, b), (_, start) in zip(one.named_parameters(), two.named_parameters(), initial.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(a, start))
    assert moved >= 0.9 * len(list(initial.parameters()))  # nearly every tensor took both steps
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()] for run in ("single", "ddp")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [2]  # the last step; once, not once per rank
    for a, b in zip(*logs):  # rank-averaged metrics equal the one-process batch means
        assert abs(a["total"] - b["total"]) < 1e-5 and abs(a["color"] - b["color"]) < 1e-5
