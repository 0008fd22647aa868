"""`train.nproc_per_node > 1`: the train stage runs itself under torchrun, on this machine.

torchrun (`python -m torch.distributed.run`) starts the processes, restarts the group on
a failure (`train.max_restarts`; every rank resumes from the checkpoint) and ends them all
when one fails. Several machines: run torchrun by hand (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import ptblm


def torchrun_command(nproc: int, max_restarts: int, program: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone ... <program>` (a script and its
    arguments, or `-m ptblm ...`)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        *program,
    ]


def threads_per_process(nproc: int) -> int:
    """The machine's cores shared out among `nproc` processes."""
    return max(1, (os.cpu_count() or 1) // nproc)


def run_under_torchrun(
    nproc: int, max_restarts: int, args: list[str], gpus: str | None = None
) -> int:
    """Run this program again with `args` as `nproc` processes; returns torchrun's status.

    The ranks run the entry this process was started with: a DVC stage's own script (so
    the stage's code deps are the code its ranks run), else `-m ptblm`. They import ptblm
    from where this process did (a DVC experiment's own copy, not an installed one) and
    share the cores (torchrun would set one thread each, loudly). `gpus`: the GPUs this
    process locked for them (as CUDA_VISIBLE_DEVICES), which the ranks then take as theirs.
    """
    env = dict(os.environ)
    if gpus is not None:
        from .gpu_lock import LOCKED_FOR_RANKS_ENV

        env["CUDA_VISIBLE_DEVICES"] = gpus
        env[LOCKED_FOR_RANKS_ENV] = "1"
    source = str(Path(ptblm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    command = torchrun_command(nproc, max_restarts, rank_program(sys.argv[0], args))
    with subprocess.Popen(command, env=env, preexec_fn=_end_with_parent) as torchrun:
        try:
            return torchrun.wait()
        except KeyboardInterrupt:  # SIGTERM (ptblm train raises it) or Ctrl-C: torchrun
            torchrun.terminate()  # passes SIGTERM on to the ranks (rank 0 ends its MLflow
            torchrun.wait()  # run KILLED); wait for them to end
            raise


def rank_program(entry: str, args: list[str]) -> list[str]:
    """What each rank runs: `entry` (this process's script) with `args` after the command
    name when it is a stage script (stages/<x>.py runs one command), else `-m ptblm args`."""
    script = Path(entry)
    if script.suffix == ".py" and script.name != "__main__.py":
        return [str(script.resolve()), *args[1:]]
    return ["-m", "ptblm", *args]


PR_SET_PDEATHSIG = 1


def _end_with_parent() -> None:
    """In torchrun's process: SIGTERM it (and so its workers) when this process dies, even by
    kill -9, so killing a train stage never leaves a run going on without it (Linux)."""
    with contextlib.suppress(OSError):  # no glibc: no such guard
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
