"""BatchNorm as the reference runs it.

InPlaceABN is BatchNorm followed by LeakyReLU(0.01); we keep its parameter and buffer
names (a plain BatchNorm2d) so official checkpoints load. The reference never calls
``.eval()``, so at inference every BatchNorm normalises with the statistics of the
current batch (the 32 source images, or the active voxels). ``normalisation`` is the one
switch that selects this ("batch", the default, matches the reference) or the stored
running statistics ("running"), without ever changing the stored buffers.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

NormStatistics = Literal["batch", "running"]


class ActivatedBatchNorm2d(nn.BatchNorm2d):
    """InPlaceABN's behaviour in plain PyTorch: BatchNorm, then LeakyReLU with slope 0.01."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(super().forward(x), 0.01)


@contextmanager
def normalisation(model: nn.Module, statistics: NormStatistics) -> Iterator[None]:
    """Run ``model`` with batch or running BatchNorm statistics; buffers are left as they were."""
    if statistics not in ("batch", "running"):
        raise ValueError(f"statistics must be 'batch' or 'running', not {statistics!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    try:
        for m in norms:
            m.train(statistics == "batch")
            m.momentum = 0.0  # batch statistics are used but never folded into the running ones
        yield
    finally:
        for m, (training, momentum, tracked) in zip(norms, saved):
            m.train(training)
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
