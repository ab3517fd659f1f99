"""Progress reporting shared by the CLI, the add-on and the trainer.

A callback receives (stage, step, total). To cancel, the callback raises
``CancelledError``; work stops between steps and nothing is written.
"""

from __future__ import annotations

import sys
from typing import Callable

ProgressCallback = Callable[[str, int, int], None]


def no_progress(stage: str, step: int, total: int) -> None:
    """The default: report nothing."""


def stderr_progress(stage: str, step: int, total: int) -> None:
    """One updating line per stage on stderr, for the command line."""
    end = "\n" if step >= total else ""
    sys.stderr.write(f"\r{stage}: {step}/{total}{end}")
    sys.stderr.flush()
