"""The paired-timing tool's two halves that run without a GPU: exporting revisions, reading bench tables."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.compare_trees import REPO, export, summary, table_values


def test_export_writes_the_code_of_a_revision_and_links_the_data(tmp_path: Path):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    (tree,) = export(["HEAD"], tmp_path / "trees")
    assert tree.name == f"0-{head.stdout.strip()}"
    committed = subprocess.run(["git", "-C", str(REPO), "show", "HEAD:backend/generation/zero123.py"],
                               capture_output=True, text=True, check=True).stdout
    assert (tree / "backend" / "generation" / "zero123.py").read_text() == committed
    assert (tree / "bench" / "bench_unet.py").is_file()
    assert (tree / "backend" / "weights").is_symlink() and (tree / "examples").is_symlink()
    assert (tree / "backend" / "weights").resolve() == (REPO / "backend" / "weights").resolve()
    with pytest.raises(SystemExit, match="already exists"):
        export(["HEAD"], tmp_path / "trees")
    with pytest.raises(SystemExit, match="no-such-revision"):
        export(["no-such-revision"], tmp_path / "other")


def test_table_values_and_summary_take_the_numbers_of_a_bench_table():
    output = ["NVIDIA H100, torch 2.11, bf16", "", "| rows | ms per call | TFLOP/s | of matmul peak |",
              "| ---: | ---: | ---: | ---: |", "| 16 | 7.73 | 352 | 48% |", "| 64 | 25.65 | 424 | 58% |",
              "| kind | ms |", "| GEMM | 7.08 |"]
    assert table_values(output, 1) == {"16": 7.73, "64": 25.65, "GEMM": 7.08}
    assert table_values(output, 3) == {"16": 48.0, "64": 58.0}
    table = summary({"16": {"0-a": 7.9, "1-b": 7.7}, "64": {"1-b": 25.6}}, [Path("0-a"), Path("1-b")], False)
    assert "| 16 | 7.9 | 7.7 |" in table and "| 64 | - | 25.6 |" in table and "lowest" in table
