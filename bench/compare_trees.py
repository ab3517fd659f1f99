"""Paired timing of revisions of this repository on one machine: does a change make a bench faster?

A speed change lands only once it beats what it replaces on the same card in the same run. Here, export the
revisions to compare (their code only; each tree links back to this checkout's bundled weights and examples),
into a folder git ignores, which a GPU call then carries::

    python -m bench.compare_trees export main~1 main --into .device_data/trees

and on the GPU machine, from the repository root::

    python -m bench.compare_trees run .device_data/trees/* -- bench.bench_unet --dtype bf16 --compile

``run`` first runs the bench in every tree at once, which compiles each tree's models and leaves them in
Inductor's on-disk cache, then in each tree alone, one tree after the other, ``--rounds`` times round: each tree
is timed on an otherwise idle card, and the card's drift over the run falls on all of them alike. The trees'
output is printed as it comes, then one table of the bench's Markdown rows: for each row, the best value of
``--column`` (1: the first after the row's name) that each tree gave over the rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINKED = ("backend/weights", "examples")  # data, not code: the same for every tree, and too big to copy
NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")


def export(revisions: list[str], into: Path) -> list[Path]:
    """One folder per revision under ``into``, named ``<index>-<short hash>``: its ``backend`` and ``bench``,
    and links to this checkout's bundled weights and examples."""
    into.mkdir(parents=True, exist_ok=True)
    trees = []
    for index, revision in enumerate(revisions):
        commit = git("rev-parse", "--short", f"{revision}^{{commit}}").strip()
        tree = into / f"{index}-{commit}"
        if tree.exists():
            raise SystemExit(f"{tree} already exists: remove it or export into another folder")
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "-C", str(REPO), "archive", commit, "backend", "bench",
                            *(f":(exclude){path}" for path in LINKED)], stdout=archive, check=True)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(tree, filter="data")
        for path in LINKED:
            (tree / path).symlink_to(os.path.relpath(REPO / path, (tree / path).parent))
        trees.append(tree)
        print(f"{revision} ({commit}) -> {tree}")
    return trees


def git(*args: str) -> str:
    """Output of a git command in this checkout; one clear line if it fails."""
    result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def run_bench(tree: Path, bench: list[str], label: str) -> list[str]:
    """Run ``python -m <bench...>`` in ``tree``, printing its output as it comes; its lines."""
    lines = []
    with subprocess.Popen([sys.executable, "-m", *bench], cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            print(f"[{label}] {lines[-1]}", flush=True)
    if process.returncode != 0:
        raise SystemExit(f"the bench failed in {tree} (exit status {process.returncode}): see [{label}] above")
    return lines


def warm_up(trees: list[Path], bench: list[str]) -> None:
    """The bench in every tree at once, its output kept back unless it fails: this fills the compile cache."""
    processes = [subprocess.Popen([sys.executable, "-m", *bench], cwd=tree, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for tree in trees]
    failed = []
    for tree, process in zip(trees, processes):
        output, _ = process.communicate()
        if process.returncode != 0:
            print(f"[{tree.name} warm-up]\n{output}", flush=True)
            failed.append(tree.name)
    if failed:
        raise SystemExit(f"the bench failed in {', '.join(failed)} while warming up: see its output above")
    print(f"warmed up: {', '.join(tree.name for tree in trees)}", flush=True)


def table_values(lines: list[str], column: int) -> dict[str, float]:
    """The number in ``column`` of each Markdown table row whose cell there is a number, by the row's first cell."""
    values = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) > column and NUMBER.fullmatch(cells[column].rstrip("%")):
            values[cells[0]] = float(cells[column].rstrip("%"))
    return values


def summary(best: dict[str, dict[str, float]], trees: list[Path], higher_is_better: bool) -> str:
    """A Markdown table: one row per bench row, one column per tree, each tree's best value."""
    names = [tree.name for tree in trees]
    rows = [f"| row | {' | '.join(names)} |", f"| --- |{' ---: |' * len(names)}"]
    for key, by_tree in best.items():
        cells = [f"{by_tree[name]:g}" if name in by_tree else "-" for name in names]
        rows.append(f"| {key} | {' | '.join(cells)} |")
    rows.append(f"\nbest = {'highest' if higher_is_better else 'lowest'} over the rounds")
    return "\n".join(rows)


def compare(trees: list[Path], bench: list[str], rounds: int, column: int, higher_is_better: bool) -> None:
    """Warm up every tree together, then time them alone in turn and print the best values side by side."""
    missing = [str(tree) for tree in trees if not (tree / "backend").is_dir()]
    if missing:
        raise SystemExit(f"not a tree from `compare_trees export`: {', '.join(missing)}")
    warm_up(trees, bench)
    best: dict[str, dict[str, float]] = defaultdict(dict)
    pick = max if higher_is_better else min
    for round_index in range(rounds):
        for tree in trees:
            for key, value in table_values(run_bench(tree, bench, f"{tree.name} #{round_index + 1}"), column).items():
                best[key][tree.name] = pick(value, best[key].get(tree.name, value))
    print("\n" + summary(best, trees, higher_is_better), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser("export", help="write one tree per revision (run here, in the git checkout)")
    exporting.add_argument("revisions", nargs="+")
    exporting.add_argument("--into", type=Path, required=True, help="a folder git ignores, e.g. .device_data/trees")
    running = commands.add_parser("run", help="time a bench in each tree, paired (run on the machine being measured)")
    running.add_argument("trees", nargs="+", type=Path)
    running.add_argument("--rounds", type=int, default=2)
    running.add_argument("--column", type=int, default=1, help="which value of each table row to compare (1: the first)")
    running.add_argument("--higher-is-better", action="store_true", help="for rates such as TFLOP/s, not times")
    args, bench = parser.parse_known_args()
    if args.command == "export":
        export(args.revisions, args.into.resolve())
        return
    if bench[:1] != ["--"] or len(bench) < 2:
        parser.error("run needs the bench after --, e.g. -- bench.bench_unet --dtype bf16 --compile")
    compare([tree.resolve() for tree in args.trees], bench[1:], args.rounds, args.column, args.higher_is_better)


if __name__ == "__main__":
    main()
