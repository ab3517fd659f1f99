"""The paired-timing tool (bench.compare_trees) on the CPU: exporting revisions, turns, reading bench tables."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.compare_trees import REPO, export, summary, table_values
from bench.turns import ROUNDS, TURNS, timing_rounds


HEAD = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
in_a_git_checkout = pytest.mark.skipif(HEAD.returncode != 0, reason="not a git checkout")


@in_a_git_checkout
def test_export_writes_the_code_of_a_revision_and_links_the_data(tmp_path: Path):
    (tree,) = export(["HEAD"], tmp_path / "trees")
    assert tree.name == f"0-{HEAD.stdout.strip()}"
    committed = subprocess.run(["git", "-C", str(REPO), "show", "HEAD:backend/generation/zero123.py"],
                               capture_output=True, text=True, check=True).stdout
    assert (tree / "backend" / "generation" / "zero123.py").read_text() == committed
    for shared in ("backend/weights", "bench", "examples"):  # one bench and the same data for every tree
        assert (tree / shared).is_symlink() and (tree / shared).resolve() == (REPO / shared).resolve()
    with pytest.raises(SystemExit, match="already exists"):
        export(["HEAD"], tmp_path / "trees")
    with pytest.raises(SystemExit, match="no-such-revision"):
        export(["no-such-revision"], tmp_path / "other")


def test_table_values_and_summary_take_the_numbers_of_a_bench_table():
    output = ["NVIDIA H100, torch 2.11, bf16", "", "| rows | ms per call | TFLOP/s | of matmul peak |",
              "| ---: | ---: | ---: | ---: |", "| 16 | 7.73 | 352 | 48% |", "| 64 | 25.65 | 424 | 58% |",
              "| kind | ms |", "| GEMM | 7.08 |"]
    assert table_values(output, 1) == [("16", 7.73), ("64", 25.65), ("GEMM", 7.08)]
    assert table_values(output, 3) == [("16", 48.0), ("64", 58.0)]
    table = summary({"16": {"0-a": 7.9, "1-b": 7.7}, "64": {"1-b": 25.6}}, ["0-a", "1-b"], False)
    assert "| 16 | 7.9 | 7.7 |" in table and "| 64 | - | 25.6 |" in table and "lowest" in table


def test_timing_rounds_wait_for_each_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(TURNS, raising=False)
    assert list(timing_rounds()) == [0]  # run alone: one round, no waiting
    monkeypatch.setenv(TURNS, str(tmp_path))
    monkeypatch.setenv(ROUNDS, "2")
    rounds, taken = timing_rounds(), []
    waiting = threading.Thread(target=lambda: taken.append(next(rounds)), daemon=True)
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and (tmp_path / "ready-0").exists() and not taken  # ready, waiting for its turn
    (tmp_path / "go-0").touch()
    waiting.join(5)
    assert taken == [0] and not (tmp_path / "ready-1").exists()
    (tmp_path / "go-1").touch()
    assert next(rounds) == 1 and (tmp_path / "ready-1").exists()
    assert next(rounds, None) is None and (tmp_path / "ready-2").exists()  # the last round's end


@in_a_git_checkout
def test_run_times_the_real_bench_in_an_exported_tree_by_turns(tmp_path: Path):
    """``run`` end to end on the CPU: the tiny UNet bench in one exported tree, its rows in the summary."""
    (tree,) = export(["HEAD"], tmp_path / "trees")
    command = [sys.executable, "-m", "bench.compare_trees", "run", str(tree), "--rounds", "1", "--",
               "bench.bench_unet", "--device", "cpu", "--dtype", "fp32", "--tiny"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"round 1: {tree.name} times" in result.stdout
    summary_rows = result.stdout.split("| row |")[1]
    assert re.search(r"\| 16 \| \d+(\.\d+)? \|", summary_rows) and re.search(r"\| 64 \| \d+(\.\d+)? \|", summary_rows)
    no_bench = subprocess.run(command[:5], cwd=REPO, capture_output=True, text=True)
    assert no_bench.returncode == 2 and "run needs the bench after --" in no_bench.stderr
