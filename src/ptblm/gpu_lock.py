"""One GPU per process: `dvc queue start -j N` on an N-GPU machine runs N experiments at once.

Each train or evaluate process takes the first GPU no other ptblm process on the machine
holds, through an OS file lock per GPU (flock): the kernel releases it when the process
ends, however it ends (kill -9 included), so a lock can never go stale. GPUs are named as
the driver knows them, so processes with different CUDA_VISIBLE_DEVICES still agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from .errors import PtblmError

LOCK_DIR_ENV = "PTBLM_GPU_LOCK_DIR"
# Set by the train stage's launcher for the torchrun ranks it starts: it holds their GPUs
# (CUDA_VISIBLE_DEVICES names just those), so each rank uses its local rank's GPU as it is.
LOCKED_FOR_RANKS_ENV = "PTBLM_GPUS_LOCKED_FOR_RANKS"
POLL_S = 2.0

_held: list[IO] = []  # the locks this process holds, open until it exits


class GpuBusyError(PtblmError):
    """Every visible GPU stayed taken for train.gpu_wait_s."""


def lock_dir() -> Path:
    """Machine-wide (every user's ptblm processes see the same locks): $PTBLM_GPU_LOCK_DIR or
    <tmp>/ptblm-gpu-locks."""
    path = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "ptblm-gpu-locks")
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # another user's folder works as it is
        path.chmod(0o1777)  # like /tmp: anyone may add a lock file
    return path


def gpu_names(count: int) -> list[str]:
    """The driver's names of the `count` visible GPUs: CUDA_VISIBLE_DEVICES's entries (an
    index or a UUID each) when it is set, else 0 .. count-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(count)]
    return [name.strip() for name in visible.split(",") if name.strip()][:count]


def claim_gpus(count: int, wanted: int, wait_s: float) -> list[int]:
    """Lock `wanted` free GPUs of the `count` visible ones; returns their (visible) indexes.

    While fewer are free, hold none (so two waiting runs cannot each keep half of what the
    other needs), say so on stderr and poll, for `wait_s` seconds at most (then
    GpuBusyError). The locks are held until this process exits.
    """
    names = gpu_names(count)
    if not names:
        raise GpuBusyError("no CUDA device is visible; set train.device to cpu")
    folder = lock_dir()
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        taken: list[int] = []
        for index, name in enumerate(names):
            if len(taken) < wanted and _try_lock(folder / f"gpu-{name}.lock"):
                taken.append(index)
        if len(taken) == wanted:
            return taken
        _release(len(taken))
        if time.monotonic() >= deadline:
            raise GpuBusyError(
                f"{wanted} of the {len(names)} GPUs ({', '.join(names)}) did not come free "
                f"of other ptblm processes in {wait_s:g} s (train.gpu_wait_s); raise it, or "
                "run fewer experiments at once (dvc queue start -j)"
            )
        if not said:
            print(
                f"{wanted} of the {len(names)} GPUs are not free of other ptblm processes; "
                f"waiting up to {wait_s:g} s (train.gpu_wait_s)",
                file=sys.stderr,
                flush=True,
            )
            said = True
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def gpu_for_process(count: int, local_rank: int | None, wait_s: float) -> int:
    """The visible GPU a train or evaluate process computes on, locked for it: its local
    rank's under the launcher (which holds the lock), else the first free one, whoever
    started it (a queue, a plain run, a torchrun by hand: each rank claims its own)."""
    if local_rank is not None and os.environ.get(LOCKED_FOR_RANKS_ENV) == "1":
        return local_rank
    (index,) = claim_gpus(count, 1, wait_s)
    return index


def _try_lock(path: Path) -> bool:
    handle = open(path, "a")  # noqa: SIM115 (kept open: closing it would release the lock)
    with contextlib.suppress(PermissionError):
        path.chmod(0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")  # who holds it, for a person looking
    handle.flush()
    _held.append(handle)
    return True


def _release(latest: int) -> None:
    """Give back the `latest` locks taken."""
    for _ in range(latest):
        _held.pop().close()
