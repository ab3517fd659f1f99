"""Turns at the card for benches that ``compare_trees run`` starts side by side.

Every tree's bench builds, compiles and warms up at the same time as the others, then times only in its turn,
while the others wait: compiling in parallel saves minutes of GPU-machine time, and timing alone keeps the
numbers clean. The runner gives each bench a folder of its own; the bench leaves ``ready-<round>`` there when it
can time and waits for ``go-<round>``, and after its last round it leaves ``ready-<rounds>``. Run alone, a
bench gets one round at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

TURNS = "COMPARE_TREES_TURNS"  # the environment variable naming this bench's folder of turn markers
ROUNDS = "COMPARE_TREES_ROUNDS"  # how many timing rounds the runner asks of each bench


def timing_rounds() -> Iterator[int]:
    """The indices of the timing rounds, each yielded when it is this bench's turn at the card."""
    folder = os.environ.get(TURNS)
    if not folder:
        yield 0
        return
    rounds, runner = int(os.environ.get(ROUNDS, "1")), os.getppid()
    for index in range(rounds):
        Path(folder, f"ready-{index}").touch()
        while not Path(folder, f"go-{index}").exists():
            if os.getppid() != runner:  # the runner is gone: nobody will give this bench its turn
                raise SystemExit("compare_trees run ended before this bench's turn")
            time.sleep(0.1)
        yield index
    Path(folder, f"ready-{rounds}").touch()
