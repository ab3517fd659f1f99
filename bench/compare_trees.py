"""Paired timing of revisions of this repository on one machine: does a change make the UNet faster?

A speed change lands only once it beats what it replaces on the same card in the same run. Here, export the
revisions to compare into a folder git ignores, which a GPU call then carries::

    python -m bench.compare_trees export f9939bf main --into .device_data/trees

Each tree holds its revision's ``backend`` code; its bundled weights, ``bench`` and ``examples`` are links to
this checkout's, so every revision is measured by the same bench on the same data. On the GPU machine, from the
repository root::

    python -m bench.compare_trees run .device_data/trees/* -- bench.bench_unet --dtype bf16 --compile

``run`` starts the bench in every tree at once: they build and compile side by side, which saves minutes of
GPU-machine time, then time in turns (``bench.turns``), ``--rounds`` times round, each alone on the card while
the others wait, so that the card's drift over the run falls on all of them alike. Each tree's output follows
its turn, then one table of the bench's Markdown rows: for each row, the best value of ``--column`` (1: the
first after the row's name) that each tree gave over the rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .turns import ROUNDS, TURNS

REPO = Path(__file__).resolve().parents[1]
CODE = "backend"  # what differs between the trees
LINKED = ("backend/weights", "bench", "examples")  # what they share: this checkout's
NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")


def export(revisions: list[str], into: Path) -> list[Path]:
    """One folder per revision under ``into``, named ``<index>-<short hash>``, holding that revision's backend
    code and links to this checkout's bundled weights, bench and examples."""
    into.mkdir(parents=True, exist_ok=True)
    trees = []
    for index, revision in enumerate(revisions):
        commit = git("rev-parse", "--short", f"{revision}^{{commit}}").strip()
        tree = into / f"{index}-{commit}"
        if tree.exists():
            raise SystemExit(f"{tree} already exists: remove it or export into another folder")
        partial = into / f".{tree.name}.partial"  # renamed once whole: no half-written tree blocks a new export
        shutil.rmtree(partial, ignore_errors=True)
        try:
            with tempfile.TemporaryFile() as archive:
                subprocess.run(["git", "-C", str(REPO), "archive", commit, CODE,
                                *(f":(exclude){path}" for path in LINKED if path.startswith(f"{CODE}/"))],
                               stdout=archive, check=True)
                archive.seek(0)
                with tarfile.open(fileobj=archive) as tar:
                    tar.extractall(partial, filter="data")
            for path in LINKED:  # relative links: they hold wherever the checkout is copied to
                (partial / path).symlink_to(os.path.relpath(REPO / path, (tree / path).parent))
            partial.rename(tree)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        trees.append(tree)
        print(f"{revision} ({commit}) -> {tree}")
    return trees


def git(*args: str) -> str:
    """Output of a git command in this checkout; one clear line if it fails."""
    result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class TreeBench:
    """One tree's bench process, its folder of turn markers and its log."""

    tree: Path
    turns: Path
    log: IO[bytes]
    process: subprocess.Popen
    printed: int = 0  # bytes of the log already printed

    @classmethod
    def start(cls, tree: Path, bench: list[str], rounds: int, scratch: Path) -> TreeBench:
        turns = scratch / tree.name
        turns.mkdir()
        log = open(scratch / f"{tree.name}.log", "w+b")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", TURNS: str(turns), ROUNDS: str(rounds)}
        process = subprocess.Popen([sys.executable, "-m", *bench], cwd=tree, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)  # a process group of its own, to end whole
        return cls(tree, turns, log, process)

    def wait_for(self, marker: str) -> None:
        """Until the bench leaves ``marker``; one clear line, after its output, if it ends first."""
        while not (self.turns / marker).exists():
            if self.process.poll() is not None:
                self.print_new()
                why = "does not take turns (bench.turns.timing_rounds)" if self.process.returncode == 0 \
                    else f"failed (exit status {self.process.returncode})"
                raise SystemExit(f"the bench in {self.tree} {why}: its output is above")
            time.sleep(0.1)

    def print_new(self) -> None:
        """What the bench wrote since the last call, each line marked with the tree's name."""
        self.log.seek(self.printed)
        written = self.log.read()
        self.printed += len(written)
        for line in written.decode(errors="replace").splitlines():
            print(f"[{self.tree.name}] {line}", flush=True)

    def lines(self) -> list[str]:
        self.log.seek(0)
        return self.log.read().decode(errors="replace").splitlines()

    def end(self) -> None:
        """Stop the bench and whatever it started, if still running."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()


def table_values(lines: list[str], column: int) -> list[tuple[str, float]]:
    """The number in ``column`` of each Markdown table row whose cell there is a number, with the row's first cell."""
    values = []
    for line in lines:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) > column and NUMBER.fullmatch(cells[column].rstrip("%")):
            values.append((cells[0], float(cells[column].rstrip("%"))))
    return values


def summary(best: dict[str, dict[str, float]], names: list[str], higher_is_better: bool) -> str:
    """A Markdown table: one row per bench row, one column per tree, each tree's best value."""
    rows = [f"| row | {' | '.join(names)} |", f"| --- |{' ---: |' * len(names)}"]
    for key, by_tree in best.items():
        rows.append(f"| {key} | {' | '.join(f'{by_tree[name]:g}' if name in by_tree else '-' for name in names)} |")
    rows.append(f"\nbest = {'highest' if higher_is_better else 'lowest'} over the rounds")
    return "\n".join(rows)


def compare(trees: list[Path], bench: list[str], rounds: int, column: int, higher_is_better: bool) -> None:
    """Start every tree's bench, let each time alone in turn, ``rounds`` times, and print the best values."""
    missing = [str(tree) for tree in trees if not (tree / CODE).is_dir() or not (tree / "bench").is_dir()]
    if missing:
        raise SystemExit(f"not a tree from `compare_trees export`: {', '.join(missing)}")
    if len({tree.name for tree in trees}) < len(trees):
        raise SystemExit("two trees have the same folder name: export them into one folder")
    with tempfile.TemporaryDirectory() as scratch:
        benches: list[TreeBench] = []
        try:
            benches.extend(TreeBench.start(tree, bench, rounds, Path(scratch)) for tree in trees)
            for one in benches:  # every bench compiled and warm before the first times alone
                one.wait_for("ready-0")
            print(f"all {len(benches)} benches ready", flush=True)
            for index in range(rounds):
                for one in benches:  # ready for this round: it left ready-<index> as the end of the last
                    print(f"round {index + 1}: {one.tree.name} times, {len(benches) - 1} other(s) wait", flush=True)
                    (one.turns / f"go-{index}").touch()
                    one.wait_for(f"ready-{index + 1}")
                    one.print_new()
            for one in benches:
                failed = one.process.wait() != 0
                one.print_new()
                if failed:
                    raise SystemExit(f"the bench in {one.tree} failed after its last round: its output is above")
            best: dict[str, dict[str, float]] = defaultdict(dict)
            pick = max if higher_is_better else min
            for one in benches:
                for key, value in table_values(one.lines(), column):
                    best[key][one.tree.name] = pick(value, best[key].get(one.tree.name, value))
        finally:
            for one in benches:
                one.end()
    print("\n" + summary(best, [tree.name for tree in trees], higher_is_better), flush=True)


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
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)  # what follows is the bench's, not ours
    args, bench = parser.parse_args(argv[:split]), argv[split + 1:]
    if args.command == "export":
        export(args.revisions, args.into.resolve())
        return
    if not bench:
        parser.error("run needs the bench after --, e.g. -- bench.bench_unet --dtype bf16 --compile")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so that the benches are ended too
    compare([tree.resolve() for tree in args.trees], bench, args.rounds, args.column, args.higher_is_better)


if __name__ == "__main__":
    main()
