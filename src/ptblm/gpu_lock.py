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


def claim_gpu(count: int, wait_s: float) -> int:
    """Lock the first free one of `count` visible GPUs and return its (visible) index.

    With every GPU taken, say so on stderr and poll until one frees, for `wait_s` seconds at
    most (then GpuBusyError). The lock is held until this process exits.
    """
    names = gpu_names(count)
    if not names:
        raise GpuBusyError("no CUDA device is visible; set train.device to cpu")
    folder = lock_dir()
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        for index, name in enumerate(names):
            if _try_lock(folder / f"gpu-{name}.lock"):
                return index
        if time.monotonic() >= deadline:
            raise GpuBusyError(
                f"all {len(names)} GPUs ({', '.join(names)}) stayed taken by other ptblm "
                f"processes for {wait_s:g} s (train.gpu_wait_s); raise it, or run fewer "
                "experiments at once (dvc queue start -j)"
            )
        if not said:
            print(
                f"all {len(names)} GPUs are taken by other ptblm processes; waiting up to "
                f"{wait_s:g} s (train.gpu_wait_s) for one",
                file=sys.stderr,
                flush=True,
            )
            said = True
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


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
