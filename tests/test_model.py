"""The details of the reproduction that change results (docs/reproduction.md): each test
fails if one is wrong."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import UNIT_CONFIG
from torch.nn import functional as F

from ptblm import model as model_module
from ptblm.data import batchify
from ptblm.epoch import evaluate_split, score_epoch, train_epoch
from ptblm.model import LinearCrossEntropy, PTBModel, matmul
from ptblm.reference import reference_step
from ptblm.schedule import learning_rate
from ptblm.step import TrainStep, set_clip_scale

TINY = UNIT_CONFIG
SMALL = dataclasses.replace(TINY, num_steps=20, hidden_size=200, batch_size=20, vocab_size=10000)


def ids(n: int, vocab: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def test_init_uniform_in_scale_and_lstm_biases_zero():
    torch.manual_seed(0)
    model = PTBModel(dataclasses.replace(TINY, init_scale=0.05))
    for name, param in model.named_parameters():
        if name.startswith("lstm.bias"):
            assert torch.count_nonzero(param) == 0, name
        else:
            assert param.abs().max() <= 0.05, name
            assert param.abs().max() > 0.04, f"{name} does not span the init range"
    assert model.softmax.weight.shape == (8, 30)  # TF's softmax_w [hidden, vocab]; no tying
    assert model.softmax.weight.data_ptr() != model.embedding.weight.data_ptr()


def test_dropout_on_embedding_between_layers_and_last_output_only():
    model = PTBModel(dataclasses.replace(TINY, keep_prob=0.35))
    assert model.dropout.p == pytest.approx(0.65)
    assert model.lstm.dropout == pytest.approx(0.65)  # between stacked layers
    calls = []
    model.dropout.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    x = ids(15).view(3, 5)
    model.train()
    model.cost(x, x, model.zero_state(3))
    # the embedding output and the last layer's output: [batch, steps, hidden] both
    assert calls == [(3, 5, 8), (3, 5, 8)]
    model.eval()
    out1, _ = model(x, model.zero_state(3))
    out2, _ = model(x, model.zero_state(3))
    assert torch.equal(out1, out2), "no dropout when not training"


def test_single_layer_model_has_no_inter_layer_dropout():
    model = PTBModel(dataclasses.replace(TINY, num_layers=1, keep_prob=0.5))
    assert model.lstm.dropout == 0.0


def test_cost_is_sum_over_steps_of_batch_mean_cross_entropy():
    torch.manual_seed(0)
    model = PTBModel(TINY).eval()
    x, y = ids(15, seed=1).view(3, 5), ids(15, seed=2).view(3, 5)
    cost, _ = model.cost(x, y, model.zero_state(3))
    logits, _ = model(x, model.zero_state(3))
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(3, 5)
    assert cost.item() == pytest.approx(per_token.mean(dim=0).sum().item(), rel=1e-6)
    # i.e. num_steps times the mean: the gradient the tutorial's lr=1.0 is tuned for
    assert cost.item() == pytest.approx(5 * per_token.mean().item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_linear_cross_entropy_matches_autograd(dtype):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(40, 16, dtype=dtype, generator=gen, requires_grad=True)
    weight = torch.randn(16, 50, dtype=dtype, generator=gen, requires_grad=True)
    bias = torch.randn(50, dtype=dtype, generator=gen, requires_grad=True)
    target = torch.randint(0, 50, (40,), generator=gen)
    fused = LinearCrossEntropy.apply(hidden, weight, bias, target)
    fused_grads = torch.autograd.grad(fused * 0.7, [hidden, weight, bias])
    ref = F.cross_entropy(hidden @ weight + bias, target, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.7, [hidden, weight, bias])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert fused.item() == pytest.approx(ref.item(), rel=tol)
    for got, want in zip(fused_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_fused_loss_stays_finite_past_float32_underflow():
    """A target 110 nats below the best logit: its softmax probability underflows float32
    (below ~1e-45), yet the loss is logsumexp - logit, finite, as F.cross_entropy's is."""
    hidden = torch.tensor([[1.0], [1.0]], requires_grad=True)
    weight = torch.tensor([[0.0, 110.0, 3.0, -2.0]], requires_grad=True)
    bias = torch.zeros(4, requires_grad=True)
    target = torch.tensor([0, 1])
    assert torch.softmax(hidden.detach() @ weight.detach(), dim=1)[0, 0] == 0  # underflowed
    fused = LinearCrossEntropy.apply(hidden, weight, bias, target)
    fused_grads = torch.autograd.grad(fused, [hidden, weight, bias])
    ref = F.cross_entropy(hidden @ weight + bias, target, reduction="sum")
    ref_grads = torch.autograd.grad(ref, [hidden, weight, bias])
    assert math.isfinite(fused.item())
    assert fused.item() == pytest.approx(ref.item(), rel=1e-6)
    assert fused.item() == pytest.approx(110.0, rel=1e-6)
    for got, want in zip(fused_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_clip_by_global_norm_is_tf_formula_applied_by_the_step():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    optimizer = torch.optim.SGD(params, lr=0.5, fused=True)

    def step(max_norm: float) -> float:
        params[0].grad = torch.tensor([3.0, 0.0, 0.0])
        params[1].grad = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
        norm = set_clip_scale(optimizer, params, max_norm)
        optimizer.step()
        return norm.item()

    assert step(max_norm=1.0) == pytest.approx(5.0)  # global norm over all parameters
    # g * max_norm / max(norm, max_norm) = g / 5, then p -= lr * g
    assert params[0].tolist() == pytest.approx([-0.3, 0.0, 0.0])
    assert params[1][0, 1].item() == pytest.approx(-0.4)
    step(max_norm=10.0)  # under the limit: the gradient is used as it is
    assert params[0].tolist() == pytest.approx([-1.8, 0.0, 0.0])
    assert params[1][0, 1].item() == pytest.approx(-2.4)


@pytest.mark.parametrize("bias", [False, True])
def test_matmul_fast_path_equals_the_float64_product(bias):
    """The oneDNN path (when this torch has it) and the fallback give the same product."""
    gen = torch.Generator().manual_seed(5)
    hidden, grad = torch.randn(40, 16, generator=gen), torch.randn(40, 50, generator=gen)
    weight, b = torch.randn(16, 50, generator=gen), torch.randn(50, generator=gen)
    cases = [  # the softmax layer's three products, in the layouts the model passes
        (hidden, weight, b if bias else None),
        (grad, weight.t(), None),
        (hidden.t(), grad, None),
    ]
    for a, w, c in cases:
        want = a.double() @ w.double() + (0 if c is None else c.double())
        torch.testing.assert_close(matmul(a, w, c).double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            matmul(a.double(), w.double(), c if c is None else c.double()), want
        )


def test_onednn_probe_leaves_the_rng_alone():
    model_module._onednn_linear.cache_clear()
    before = torch.get_rng_state()
    model_module._onednn_linear()
    assert torch.equal(torch.get_rng_state(), before)


def test_learning_rate_schedule():
    small = SMALL
    assert [learning_rate(small, e) for e in (1, 4, 5, 6, 13)] == [1, 1, 0.5, 0.25, 0.5**9]
    large = dataclasses.replace(small, max_epoch=14, lr_decay=1 / 1.15)
    assert learning_rate(large, 15) == pytest.approx(1 / 1.15)
    assert learning_rate(large, 55) == pytest.approx(1.15**-41)


def test_state_is_carried_across_batches():
    torch.manual_seed(0)
    model = PTBModel(dataclasses.replace(TINY, init_scale=1.0))  # so the state matters
    data = batchify(ids(3 * 41), 3)  # batch_len 41: 40 predictions per row
    long_windows = score_epoch(model, data, 20)
    short_windows = score_epoch(model, data, 5)
    # same tokens scored: carrying state makes the window length irrelevant
    assert short_windows.perplexity == pytest.approx(long_windows.perplexity, rel=1e-5)

    # without carrying state, the numbers would differ
    fresh = []
    for start in range(0, 40, 5):
        cost, _ = model.cost(
            data[:, start : start + 5], data[:, start + 1 : start + 6], model.zero_state(3)
        )
        fresh.append(cost.item())
    assert math.exp(sum(fresh) / 40) != pytest.approx(short_windows.perplexity, rel=1e-3)


def test_training_epochs_start_from_the_zero_state():
    """The training path: at lr 0 the weights stay put, so two epochs score the same only if
    each starts from zero rather than from the state the last one ended with."""
    torch.manual_seed(0)
    model = PTBModel(dataclasses.replace(TINY, init_scale=1.0))  # so the state matters
    data = batchify(ids(3 * 41), 3)
    step = TrainStep(model)
    step.set_lr(0.0)
    first = train_epoch(model, data, 5, step)
    assert any(s.abs().sum() > 0 for s in step.state)  # the epoch ended in a non-zero state
    second = train_epoch(model, data, 5, step)
    assert second.perplexity == first.perplexity


def test_training_detaches_state_between_batches():
    """The state the step carries into the next window holds values, not the last graph: a
    state that kept it would make the next backward walk into the freed graph (and BPTT
    would no longer be truncated)."""
    torch.manual_seed(0)
    model = PTBModel(TINY)
    step = TrainStep(model)
    data = batchify(ids(3 * 16), 3)  # three windows of 5 steps
    train_epoch(model, data, 5, step)
    assert all(s.grad_fn is None and not s.requires_grad for s in step.state)


def test_perplexity_is_exp_of_cost_over_steps():
    torch.manual_seed(0)
    model = PTBModel(TINY)
    data = batchify(ids(3 * 11), 3)  # two windows of 5 steps
    result = score_epoch(model, data, 5)
    state, costs = model.zero_state(3), 0.0
    with torch.no_grad():
        for start in (0, 5):
            cost, state = model.cost(
                data[:, start : start + 5], data[:, start + 1 : start + 6], state
            )
            costs += cost.item()
    assert result.perplexity == pytest.approx(math.exp(costs / 10), rel=1e-6)
    assert result.words == 30


def test_fast_test_evaluation_equals_literal_num_steps_one():
    torch.manual_seed(0)
    model = PTBModel(TINY)
    test_ids = ids(1203, seed=5)
    literal = score_epoch(model, batchify(test_ids, 1), 1)  # the tutorial: batch 1, num_steps 1
    fast = evaluate_split(model, test_ids, 1, torch.device("cpu"))
    assert fast.words == literal.words == 1202  # every token but the first is predicted
    assert fast.perplexity == pytest.approx(literal.perplexity, rel=1e-5)


@pytest.mark.parametrize("max_grad_norm, bites", [(5.0, False), (0.5, True)])
def test_sgd_step_uses_the_summed_cost_gradient(max_grad_norm: float, bites: bool):
    """One training step of train_epoch equals reference.reference_step: the same cost, and
    every parameter after the update.

    The gradient's norm is 1.4: a clip of 0.5 bites, making the update 0.5 * g / |g|, blind
    to any scale of the cost that keeps the norm above 0.5 (a cost summed over the batch
    instead of averaged passes it); one of 5 does not, so the update is lr * g."""
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, max_grad_norm=max_grad_norm)
    model = PTBModel(config)
    reference = PTBModel(config)
    reference.load_state_dict(model.state_dict())
    data = batchify(ids(3 * 6), 3)  # exactly one window of 5 steps
    step = TrainStep(model)
    step.set_lr(0.7)
    result = train_epoch(model, data, 5, step)

    optimizer = torch.optim.SGD(reference.parameters(), lr=0.7)
    x, y = data[:, :5], data[:, 1:]
    cost, _ = reference_step(reference, optimizer, x, y, reference.zero_state(3), max_grad_norm)
    assert result.perplexity == pytest.approx(math.exp(cost.item() / 5), rel=1e-6)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()]))
    assert (clipped.item() == pytest.approx(max_grad_norm, rel=1e-4)) == bites, clipped
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(
            p, p_ref, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_train_step_carries_state_and_follows_set_lr_and_reset_state():
    """The step keeps the carried state itself: zeroed by reset_state, new after every step."""
    torch.manual_seed(0)
    model = PTBModel(TINY)
    step = TrainStep(model, cuda_graph=True)  # no CUDA here: eager, whatever is asked
    assert not step.graphed
    data = batchify(ids(3 * 6), 3)
    x, y = data[:, :5], data[:, 1:]
    step.set_lr(0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = step(x, y).item()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)  # lr 0
    assert all(s.abs().sum() > 0 for s in step.state)
    assert step(x, y).item() != first  # same window, carried state: another cost
    step.reset_state()
    assert all(s.abs().sum() == 0 for s in step.state)
    assert step(x, y).item() == first
    step.set_lr(0.5)
    step(x, y)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
