"""One run over several processes, for real: torchrun with gloo ranks on CPU, and the
per-GPU locks that let a queue use every GPU (real processes; only the GPU count is given)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import committed_text, copy_project, dvc, tool_env

from ptblm.config import ConfigError, load_params
from ptblm.launch import torchrun_command

# k steps of a 2-layer model, dropout off, a clip that never bites (a biting clip makes every
# update max_grad_norm * g / |g|, blind to the gradient's scale: a rank that summed instead of
# averaged would pass); rank 0 (or the single process) saves the weights and the pre-clip
# global norms of every step. Run plainly it is one process with the whole batch.
STEPS = textwrap.dedent(
    """
    import sys
    import torch
    import ptblm.step
    from ptblm.config import ModelConfig
    from ptblm.data import batchify, iterate_batches
    from ptblm.distributed import data_parallel, rank_rows, start, stop, world_from_env
    from ptblm.model import PTBModel
    from ptblm.step import TrainStep

    config = ModelConfig(
        init_scale=0.1, learning_rate=1.0, max_grad_norm=100.0, num_layers=2, num_steps=5,
        hidden_size=16, max_epoch=1, max_max_epoch=1, keep_prob=1.0, lr_decay=0.5,
        batch_size=8, vocab_size=50,
    )
    norms, clip = [], ptblm.step.set_clip_scale

    def recording_clip(optimizer, params, max_norm):
        norm = clip(optimizer, params, max_norm)
        norms.append(norm.item())  # after DDP's all-reduce: the global gradient's norm
        return norm

    ptblm.step.set_clip_scale = recording_clip
    world, device = world_from_env(), torch.device("cpu")
    start(world, device)
    torch.manual_seed(0)
    model = PTBModel(config)
    parallel = data_parallel(model, world, device) if world.distributed else None
    step = TrainStep(model, data_parallel=parallel, rows=config.batch_size // world.size)
    ids = torch.randint(config.vocab_size, (4000,), generator=torch.Generator().manual_seed(1))
    windows = iterate_batches(rank_rows(batchify(ids, config.batch_size), world), 5)
    for _, (x, y) in zip(range(int(sys.argv[2])), windows):
        step(x, y)
    if world.is_main:
        torch.save({"weights": model.state_dict(), "norms": norms}, sys.argv[1])
    stop()
    """
)


@pytest.mark.e2e
def test_two_gloo_ranks_make_the_update_of_one_process_with_the_whole_batch(tmp_path: Path):
    script = tmp_path / "steps.py"
    script.write_text(STEPS)
    weights = {name: tmp_path / f"{name}.pt" for name in ("init", "single", "split")}
    for name, steps in (("init", "0"), ("single", "12")):
        subprocess.run(
            [sys.executable, str(script), str(weights[name]), steps],
            env=tool_env(),
            check=True,
            timeout=300,
        )
    subprocess.run(
        torchrun_command(2, 0, [str(script), str(weights["split"]), "12"]),
        env=tool_env(OMP_NUM_THREADS="1"),
        check=True,
        capture_output=True,
        timeout=300,
    )
    init, one, two = (torch.load(weights[name]) for name in ("init", "single", "split"))
    print("pre-clip global norms, one process:", one["norms"], "two ranks:", two["norms"])
    assert len(one["norms"]) == len(two["norms"]) == 12
    # the clip (the script's max_grad_norm) never bit, so each update is lr * g: its scale counts
    assert max(one["norms"] + two["norms"]) < 100.0
    torch.testing.assert_close(two["norms"], one["norms"], rtol=1e-5, atol=0)
    # the runs differ by ~1e-7; every tensor moves by over 5x the tolerance, so an update of
    # another scale (a sum over ranks doubles it) shows in each one
    tolerance = 1e-5
    for name, value in one["weights"].items():
        moved = (value - init["weights"][name]).abs().max().item()
        assert moved > 5 * tolerance, f"{name} moved by {moved} only"
        torch.testing.assert_close(
            two["weights"][name], value, rtol=0, atol=tolerance, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_a_batch_that_does_not_split_over_the_processes_is_a_params_error(tmp_path: Path):
    params = tmp_path / "params.yaml"
    text = committed_text("params.yaml")
    params.write_text(text.replace("nproc_per_node: 1", "nproc_per_node: 3", 1))
    with pytest.raises(ConfigError, match=r"models.small.batch_size = 20 does not split over 3"):
        load_params(params, "small")
    text = text.replace("nproc_per_node: 1", "nproc_per_node: 4", 1)
    params.write_text(text)
    assert load_params(params, "small").train.nproc_per_node == 4  # 20 rows: 5 each


@pytest.mark.e2e
def test_two_process_pipeline_run_scores_as_one_process(tiny_template: Path, tmp_path: Path):
    """`dvc exp run -S train.nproc_per_node=2`: the train stage runs torchrun itself, and
    (dropout off) the model scores as the one process's does."""
    project = copy_project(tiny_template, tmp_path)
    env = tool_env(project)
    perplexities = {}
    for nproc in (1, 2):
        # dropout off, one epoch (later ones amplify float rounding into visible drift)
        overrides = ("models.tiny.keep_prob=1.0", "models.tiny.max_max_epoch=1")
        overrides += ("tracking.enabled=false",)
        overrides += (f"train.nproc_per_node={nproc}",)
        dvc(project, "exp", "run", *(a for o in overrides for a in ("-S", o)), env=env)
        speed = json.loads((project / "timings" / "tiny" / "speed.json").read_text())
        assert speed["processes"] == nproc
        perplexities[nproc] = json.loads((project / "metrics" / "tiny" / "eval.json").read_text())
    one, two = (perplexities[n]["test_perplexity"] for n in (1, 2))
    assert two == pytest.approx(one, rel=1e-4)


# --- one GPU per process ---------------------------------------------------------------------

HOLD = textwrap.dedent(
    """
    import sys, time
    from ptblm.gpu_lock import claim_gpus
    print(claim_gpus(int(sys.argv[1]), 1, float(sys.argv[2]))[0], flush=True)
    time.sleep(600)
    """
)


class Holders:
    """Processes that each claim a GPU of `count` and hold it until killed."""

    def __init__(self, locks: Path, count: int, **env: str) -> None:
        self.env = tool_env(PTBLM_GPU_LOCK_DIR=str(locks), **env)
        self.count = count
        self.procs: list[subprocess.Popen] = []

    def start(self, wait_s: float = 0) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(self.count), str(wait_s)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def claim(self, wait_s: float = 0) -> tuple[subprocess.Popen, int]:
        proc = self.start(wait_s)
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.communicate(timeout=60)[1]
        return proc, int(line)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.communicate()


@pytest.fixture
def holders(tmp_path: Path):
    made: list[Holders] = []

    def make(count: int, **env: str) -> Holders:
        made.append(Holders(tmp_path / "locks", count, **env))
        return made[-1]

    yield make
    for group in made:
        group.stop()


def test_each_process_takes_a_gpu_of_its_own_and_a_killed_one_frees_it(holders) -> None:
    group = holders(2)
    first, a = group.claim()
    _, b = group.claim()
    assert {a, b} == {0, 1}
    busy = group.start(wait_s=0.5)
    _, err = busy.communicate(timeout=60)
    assert busy.returncode != 0
    assert "1 of the 2 GPUs (0, 1) did not come free of other ptblm processes in 0.5 s" in err
    assert "train.gpu_wait_s" in err

    waiting = group.start(wait_s=120)  # waits, says so, and gets the GPU a kill -9 frees
    time.sleep(1.0)
    assert waiting.poll() is None
    os.kill(first.pid, signal.SIGKILL)
    assert int(waiting.stdout.readline()) == a
    waiting.kill()
    assert "waiting up to 120 s" in waiting.communicate()[1]


def test_gpus_are_locked_by_their_driver_names_under_cuda_visible_devices(holders, tmp_path):
    """Two processes that see GPU 1 as their device 0 and 1 do not both take it."""
    _, index = holders(2, CUDA_VISIBLE_DEVICES="3,1").claim()
    assert index == 0 and (tmp_path / "locks" / "gpu-3.lock").exists()
    busy = holders(1, CUDA_VISIBLE_DEVICES="3").start(wait_s=0.3)
    assert busy.wait(timeout=60) != 0  # GPU 3 is taken, whatever index it has here
    _, other = holders(2, CUDA_VISIBLE_DEVICES="1,3").claim()
    assert other == 0  # its device 0 is GPU 1, still free


def test_a_run_over_two_gpus_waits_holding_none_until_both_are_free(holders) -> None:
    """A launcher needing both GPUs while one is taken holds neither in the meantime (two
    such launchers could otherwise keep one each forever)."""
    group = holders(2)
    first, index = group.claim()
    code = "from ptblm.gpu_lock import claim_gpus; print(claim_gpus(2, 2, 60))"
    both = subprocess.Popen(
        [sys.executable, "-c", code],
        env=group.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    assert both.poll() is None
    second, other = group.claim()  # the GPU `both` is waiting for was not kept from others
    assert other == 1 - index
    for holder in (first, second):
        os.kill(holder.pid, signal.SIGKILL)
    out, err = both.communicate(timeout=60)
    assert out.strip() == "[0, 1]", err
    assert "2 of the 2 GPUs are not free" in err


GPU_FOR_PROCESS = textwrap.dedent(
    """
    import sys
    from ptblm.gpu_lock import gpu_for_process
    print(gpu_for_process(int(sys.argv[1]), int(sys.argv[2]), 0.3), flush=True)
    """
)


def test_a_rank_of_a_torchrun_started_by_hand_claims_a_free_gpu(holders, tmp_path) -> None:
    """A torchrun rank the train stage's launcher did not start holds no lock of its
    launcher's: it claims a GPU of its own (here local rank 0, whose GPU a queued run holds,
    takes GPU 1), and fails when none is free; the launcher's own ranks use theirs as is."""
    group = holders(2)
    _, held = group.claim()
    locks = {"PTBLM_GPU_LOCK_DIR": str(tmp_path / "locks")}

    def rank(local_rank: int, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", GPU_FOR_PROCESS, "2", str(local_rank)],
            env=tool_env(**locks, **env), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert int(rank(held).stdout) == 1 - held
    _, other = group.claim()  # both GPUs held now
    assert rank(held).returncode != 0 and "did not come free" in rank(held).stderr
    launched = rank(held, PTBLM_GPUS_LOCKED_FOR_RANKS="1")
    assert int(launched.stdout) == held  # locked by the launcher: no claim, no wait
