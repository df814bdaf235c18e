"""The run's process group: one process, or several under `accelerate launch` / `torchrun`."""

from __future__ import annotations

import torch
from accelerate import PartialState


def processes() -> PartialState:
    """accelerate's process-wide state, initialised on first use.

    accelerate sets up a gloo process group for CPU processes only when asked for the CPU (`cpu=True`);
    without it, `torchrun --nproc_per_node 2` on a machine with no accelerator would give two independent
    single-process runs. So ask for the CPU exactly when torch sees no accelerator (CUDA, MPS, XPU, ...).
    """
    return PartialState(cpu=not torch.accelerator.is_available())
