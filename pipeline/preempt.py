"""Stopping a training run on SLURM's warning signal, with its state saved, so that a requeued job resumes.

SLURM sends SIGUSR2 to every process of a job a set time before its time limit (`--signal=USR2@<s>`, which
submitit asks for) and on `scancel --signal=USR2`. The engines check `StopSignal.requested` between steps: they
save their state and exit with REQUEUE_EXIT; pipeline/launch.py requeues the job and the engine resumes.
"""

from __future__ import annotations

import signal
import threading

# EX_TEMPFAIL (sysexits.h): the state is saved; running the same command again resumes it.
REQUEUE_EXIT = 75


class Requeue(BaseException):
    """Raised by an engine once its state is saved after a stop signal. Not an Exception: it is a planned exit,
    which training loops' error handlers (detectron2's logs a traceback) let pass."""


class StopSignal:
    def __init__(self, signum: int = signal.SIGUSR2):
        self._set = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self._set = True

    def requested(self, world: int = 1) -> bool:
        """Whether to stop now; with several processes, whether any of them was signalled (all agree)."""
        if world <= 1:
            return self._set
        import torch
        import torch.distributed as dist

        # NCCL reduces CUDA tensors only.
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1.0 if self._set else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
