"""The CUDA fast path: a step replayed from a CUDA graph is the step run eagerly.

Skipped without a CUDA device (CI has none); `scripts/gpu_measure.sh` runs them first
on a GPU machine, before any measurement.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import trained_perplexities
from torch.nn import functional as F

from ptblm.config import ModelConfig
from ptblm.data import batchify, iterate_batches
from ptblm.device import set_precision
from ptblm.model import LinearCrossEntropy, PTBModel
from ptblm.step import TrainStep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIG = ModelConfig(
    init_scale=0.1,
    learning_rate=1.0,
    max_grad_norm=5.0,
    num_layers=2,
    num_steps=20,
    hidden_size=200,
    max_epoch=4,
    max_max_epoch=13,
    keep_prob=1.0,
    lr_decay=0.5,
    batch_size=20,
    vocab_size=10000,
)
DEVICE = torch.device("cuda")


@pytest.fixture(autouse=True)
def strict_fp32():
    set_precision("fp32", DEVICE)


def gpu_data(count: int, config: ModelConfig = CONFIG) -> torch.Tensor:
    """[batch, count * num_steps + 1] random ids on the GPU: `count` training windows."""
    tokens = config.batch_size * (count * config.num_steps + 1)
    ids = torch.randint(0, config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(0))
    return batchify(ids, config.batch_size).to(DEVICE)


def windows(count: int, config: ModelConfig = CONFIG):
    return list(iterate_batches(gpu_data(count, config), config.num_steps))


def costs_of(cuda_graph: bool, batches, config: ModelConfig = CONFIG) -> tuple[list[float], dict]:
    torch.manual_seed(0)
    model = PTBModel(config).to(DEVICE)
    step = TrainStep(model, "fp32", cuda_graph=cuda_graph)
    step.set_lr(0.5)
    costs = [step(x, y) for x, y in batches]
    return [c.item() for c in costs], {k: v.clone() for k, v in model.state_dict().items()}


# The 2014 LSTM, a GRU, and every switch on (tied weights, variational dropout's layer-by-layer
# stack): each through the captured step.
VARIANTS = {
    "lstm": CONFIG,
    "gru": dataclasses.replace(CONFIG, cell="gru"),
    "gru-tied-variational": dataclasses.replace(
        CONFIG, cell="gru", tie_weights=True, dropout="variational"
    ),
    "lstm-tied-variational": dataclasses.replace(CONFIG, tie_weights=True, dropout="variational"),
}


@pytest.mark.parametrize("config", VARIANTS.values(), ids=VARIANTS.keys())
def test_graph_replay_trains_like_eager_steps(config):
    batches = windows(12, config)
    eager, eager_weights = costs_of(False, batches, config)
    graphed, graphed_weights = costs_of(True, batches, config)
    # the eager steps before capture are the eager computation; tied, the embedding's gradient
    # (index_select's backward, an index_add_) sums a word's repeats with atomic adds, in an
    # order that varies between runs, so their later costs may differ in the last bits
    first = TrainStep.EAGER_STEPS
    rtol = 1e-6 if config.tie_weights else 0
    torch.testing.assert_close(
        torch.tensor(graphed[:first]), torch.tensor(eager[:first]), rtol=rtol, atol=0
    )
    # the same kernels in the same order: equal to float32 rounding, amplified a little by lr
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=1e-4, atol=0)
    for name, want in eager_weights.items():
        torch.testing.assert_close(
            graphed_weights[name], want, rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_fused_loss_on_cuda_matches_autograd():
    """LinearCrossEntropy on CUDA (its products are cuBLAS's addmm there, not oneDNN's): the
    value and gradients of F.cross_entropy's sum, at the small config's sizes, in fp32."""
    gen = torch.Generator().manual_seed(3)
    tokens, hidden_size, vocab = 400, 200, 10000
    hidden = torch.randn(tokens, hidden_size, generator=gen).tanh()
    weight = torch.empty(hidden_size, vocab).uniform_(-0.1, 0.1, generator=gen)
    bias = torch.empty(vocab).uniform_(-0.1, 0.1, generator=gen)
    target = torch.randint(0, vocab, (tokens,), generator=gen)
    hidden, weight, bias = (t.to(DEVICE).requires_grad_() for t in (hidden, weight, bias))
    target = target.to(DEVICE)
    fused = LinearCrossEntropy.apply(hidden, weight, bias, target)
    fused_grads = torch.autograd.grad(fused * 0.7, [hidden, weight, bias])
    ref = F.cross_entropy(hidden @ weight + bias, target, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.7, [hidden, weight, bias])
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5)
    for name, got, want in zip(("hidden", "weight", "bias"), fused_grads, ref_grads, strict=True):
        torch.testing.assert_close(
            got, want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_graph_follows_set_lr_and_reset_state():
    """The captured step reads the learning rate and the carried state from their buffers."""
    torch.manual_seed(0)
    model = PTBModel(CONFIG).to(DEVICE)
    step = TrainStep(model, "fp32")
    step.set_lr(1.0)
    batches = windows(TrainStep.EAGER_STEPS + 2)
    for x, y in batches:
        step(x, y)
    assert step._graph is not None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step.set_lr(0.0)
    x, y = batches[0]
    step(x, y)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    step.reset_state()
    first = step(x, y).item()
    step.reset_state()
    assert step(x, y).item() == first  # lr 0, same input, same zero state: the same cost
    assert step(x, y).item() != first  # carried state: another cost


@pytest.mark.parametrize("dropout", ["standard", "variational"])
def test_dropout_masks_change_between_replays(dropout):
    """cuDNN's between-layer dropout, torch's dropout and the variational masks all draw new
    masks per replay."""
    for cudnn_only in (True, False) if dropout == "standard" else (False,):
        torch.manual_seed(0)
        model = PTBModel(dataclasses.replace(CONFIG, keep_prob=0.5, dropout=dropout)).to(DEVICE)
        if cudnn_only:
            model.dropout.p = 0.0  # only nn.LSTM's (cuDNN's) dropout between the layers
        step = TrainStep(model, "fp32")
        step.set_lr(0.0)
        x, y = windows(1)[0]
        costs = []
        for _ in range(TrainStep.EAGER_STEPS + 4):
            step.reset_state()
            costs.append(step(x, y).item())
        replayed = costs[TrainStep.EAGER_STEPS :]
        assert len(set(replayed)) == len(replayed), (cudnn_only, costs)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_fast_precisions_stay_near_fp32(precision):
    """Within 2% on a trained model; a broken path misses by far more: in the CPU bf16 twin
    of this check (tests/test_train.py) fp32 scored 3.4200 and bf16 3.4204, and zeroing the
    LSTM's output under autocast made it 206.3."""
    fp32, fast = trained_perplexities(DEVICE, precision)
    assert fp32 < 20  # it learned the stream (uniform would be 200)
    assert fast == pytest.approx(fp32, rel=2e-2)


def test_two_trainings_on_a_one_gpu_machine_run_one_after_the_other(tmp_path):
    """What `dvc queue start -j 2` does with one GPU: the second waits for the GPU's lock."""
    import subprocess

    import yaml
    from conftest import tiny_workdir, tool_env
    from test_train import train_cmd

    env = tool_env(CUDA_VISIBLE_DEVICES="0", PTBLM_GPU_LOCK_DIR=str(tmp_path / "locks"))
    procs = []
    for name in ("first", "second"):
        root = tiny_workdir(tmp_path / name, 3)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["train"].update(device="cuda")
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        procs.append(
            subprocess.Popen(
                train_cmd(),
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    # gpu_lock's note, on stderr, from the one that found the GPU taken and waited
    wait_s = params["train"]["gpu_wait_s"]
    waited = f"1 of the 1 GPUs are not free of other ptblm processes; waiting up to {wait_s:g} s"
    assert sum(waited in out for out in outputs) == 1, outputs
