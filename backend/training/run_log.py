"""A training run's metrics: JSON lines in ``log.jsonl`` always, TensorBoard event files when it is installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import TracebackType
from typing import IO, Any

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


class RunLog:
    """Appends one record per logged step; a disabled log (ranks other than 0) writes nothing."""

    def __init__(self, out_dir: Path, enabled: bool = True) -> None:
        self.out_dir = out_dir
        self.enabled = enabled
        self._file: IO[str] | None = None
        self._writer: Any = None

    def __enter__(self) -> RunLog:
        if self.enabled:
            self._file = (self.out_dir / LOG_FILE).open("a")
            if importlib.util.find_spec("tensorboard") is not None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR))
        return self

    def write(self, step: int, record: dict[str, float]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in record.items():
                if name != "step":
                    self._writer.add_scalar(f"train/{name}", value, step)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
