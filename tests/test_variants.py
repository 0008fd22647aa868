"""The variants beyond the 2014 model: GRU cells, tied weights, variational dropout, the
plateau schedule. Each test fails if its switch is wired wrong."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import UNIT_CONFIG
from torch.nn import functional as F

from ptblm.config import ModelConfig
from ptblm.data import batchify
from ptblm.epoch import score_epoch, train_epoch
from ptblm.model import LockedDropout, PTBModel, detach
from ptblm.schedule import learning_rate
from ptblm.step import TrainStep

TINY = UNIT_CONFIG
VARIANTS = {
    "gru": {"cell": "gru"},
    "tied": {"tie_weights": True},
    "variational": {"dropout": "variational", "keep_prob": 0.8},
    "gru-tied-variational": {"cell": "gru", "tie_weights": True, "dropout": "variational"},
}


def variant(**changes) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)


def cyclic_ids(n: int, vocab: int = 30, seed: int = 0) -> torch.Tensor:
    """A noisy cycle: word i is mostly followed by i + 1, so a model can learn it."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.where(torch.rand(n, generator=gen) < 0.9, 1, torch.randint(0, vocab, (n,)))
    return steps.cumsum(0) % vocab


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_each_variant_trains_and_lowers_the_loss(changes):
    torch.manual_seed(0)
    model = PTBModel(variant(init_scale=0.5, hidden_size=16, **changes))  # learns in 3 epochs
    data = batchify(cyclic_ids(3 * 201), 3)
    before = score_epoch(model, data, 5).perplexity
    step = TrainStep(model)
    step.set_lr(0.5)
    for _ in range(3):
        train_epoch(model, data, 5, step)
    after = score_epoch(model, data, 5).perplexity
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dropout", ["standard", "variational"])
def test_init_rule_and_state_shape_for_every_cell(cell, dropout):
    torch.manual_seed(0)
    model = PTBModel(variant(cell=cell, dropout=dropout, init_scale=0.05))
    rnn_params = 0
    for name, param in model.named_parameters():
        if name.startswith(cell) and ".bias" in name:
            assert torch.count_nonzero(param) == 0, name
        else:
            assert 0.04 < param.abs().max() <= 0.05, name
        rnn_params += name.startswith(cell)
    assert rnn_params == 8  # 2 layers x (weight_ih, weight_hh, bias_ih, bias_hh)
    state = model.zero_state(3)
    assert len(state) == (2 if cell == "lstm" else 1)  # (h, c) or (h,)
    assert all(s.shape == (2, 3, 8) for s in state)
    x = cyclic_ids(15).view(3, 5)
    _, new_state = model(x, state)
    assert [s.shape for s in new_state] == [s.shape for s in state]
    assert all(not s.requires_grad for s in detach(new_state))


def test_default_is_the_2014_model_unchanged():
    """Standard dropout runs nn.LSTM's fused layers with its own between-layer dropout."""
    model = PTBModel(variant(keep_prob=0.5))
    assert isinstance(model.lstm, torch.nn.LSTM) and model.lstm.num_layers == 2
    assert model.lstm.dropout == pytest.approx(0.5)
    assert isinstance(model.dropout, torch.nn.Dropout)
    assert [k for k in model.state_dict() if not k.startswith("lstm.")] == [
        "embedding.weight",
        "softmax.weight",
        "softmax.bias",
    ]


# --- tied weights --------------------------------------------------------------------------


def test_tied_weight_is_one_tensor_once_in_the_state_dict():
    model = PTBModel(variant(tie_weights=True))
    assert [k for k in model.state_dict() if not k.startswith("lstm.")] == [
        "softmax.weight",
        "softmax.bias",
    ]  # no embedding.weight: the embedding is the softmax weight's transpose
    x = cyclic_ids(15).view(3, 5)
    vectors = model.embed(x)
    assert torch.equal(vectors, model.softmax.weight.t()[x])
    untied = PTBModel(TINY)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in untied.parameters()) - 30 * 8


def tied_and_untied_copy() -> tuple[PTBModel, PTBModel]:
    """A tied model and an untied one computing the same function (embedding = W^T)."""
    torch.manual_seed(0)
    tied = PTBModel(variant(tie_weights=True))
    untied = PTBModel(TINY)
    with torch.no_grad():
        for name, param in tied.named_parameters():
            untied.get_parameter(name).copy_(param)
        untied.embedding.weight.copy_(tied.softmax.weight.t())
    return tied, untied


def test_tied_gradient_is_the_sum_of_both_uses_and_the_step_updates_both():
    tied, untied = tied_and_untied_copy()
    x, y = cyclic_ids(15, seed=1).view(3, 5), cyclic_ids(15, seed=2).view(3, 5)
    cost, _ = tied.cost(x, y, tied.zero_state(3))
    cost.backward()
    reference, _ = untied.cost(x, y, untied.zero_state(3))
    reference.backward()
    torch.testing.assert_close(cost, reference)
    summed = untied.softmax.weight.grad + untied.embedding.weight.grad.t()
    torch.testing.assert_close(tied.softmax.weight.grad, summed, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(tied.softmax.weight.grad, untied.softmax.weight.grad)

    before = tied.softmax.weight.detach().clone()
    step = TrainStep(tied)
    step.set_lr(0.5)
    step(x, y)
    after = tied.softmax.weight.detach()
    assert torch.equal(tied.embed(x), after.t()[x])  # the embedding sees the update
    seen = sorted(set(x.flatten().tolist()))
    unseen = sorted(set(range(30)) - set(seen))
    assert not torch.equal(after[:, unseen], before[:, unseen])  # the softmax use alone
    # the words of x moved by both uses: as the untied copy's two updates together
    untied_step = TrainStep(untied)
    untied_step.set_lr(0.5)
    untied_step(x, y)
    both = untied.softmax.weight + untied.embedding.weight.t() - before
    torch.testing.assert_close(after[:, seen], both.detach()[:, seen], rtol=1e-4, atol=1e-6)


def test_fused_loss_of_the_tied_model_equals_cross_entropy_on_its_logits():
    """Value and gradients (the tied tensor's included) of the fused loss against
    F.cross_entropy on the logits of the same tied model."""
    for dtype in (torch.float64, torch.float32):
        tied, _ = tied_and_untied_copy()
        tied.to(dtype)
        x, y = cyclic_ids(15, seed=1).view(3, 5), cyclic_ids(15, seed=2).view(3, 5)
        params = list(tied.parameters())
        fused, _ = tied.cost(x, y, tuple(s.to(dtype) for s in tied.zero_state(3)))
        fused_grads = torch.autograd.grad(fused, params)
        logits, _ = tied(x, tuple(s.to(dtype) for s in tied.zero_state(3)))
        ref = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / 3
        ref_grads = torch.autograd.grad(ref, params)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert fused.item() == pytest.approx(ref.item(), rel=tol)
        for got, want in zip(fused_grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)


# --- variational dropout ---------------------------------------------------------------------


def test_locked_dropout_mask_is_constant_in_time_and_new_per_row_and_window():
    torch.manual_seed(0)
    drop = LockedDropout(0.5).train()
    x = torch.ones(4, 6, 32)
    first, second = drop(x), drop(x)
    for out in (first, second):
        assert torch.equal(out, out[:, :1].expand_as(out))  # the same mask at every step
        assert set(out.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / keep
        assert len({tuple(row[0].tolist()) for row in out}) == 4  # a mask per row
    assert not torch.equal(first, second)  # a new mask for the next window
    drop.eval()
    assert drop(x) is x


def test_variational_model_masks_embedding_between_layers_and_output():
    """Three masks per window (embedding, between the 2 layers, last output), each constant
    in time; deterministic in evaluation."""
    torch.manual_seed(0)
    model = PTBModel(variant(dropout="variational", keep_prob=0.5))
    assert isinstance(model.lstm, torch.nn.ModuleList) and len(model.lstm) == 2
    masks = []

    def record(module, inputs, output):
        ratio = output / inputs[0]  # the mask where the input is nonzero
        masks.append(torch.where(inputs[0] != 0, ratio, torch.nan))

    model.dropout.register_forward_hook(record)
    x = cyclic_ids(15).view(3, 5)
    model.train()
    model.cost(x, x, model.zero_state(3))
    assert len(masks) == 3
    for mask in masks:
        assert mask.shape == (3, 5, 8)
        first = mask[:, :1].expand_as(mask)
        known = ~mask.isnan() & ~first.isnan()
        assert torch.equal(mask[known], first[known])
    assert not torch.equal(masks[0].nan_to_num(), masks[1].nan_to_num())
    masks.clear()
    model.eval()
    out1, _ = model(x, model.zero_state(3))
    out2, _ = model(x, model.zero_state(3))
    assert torch.equal(out1, out2)
    assert all(torch.all((m == 1) | m.isnan()) for m in masks)


def test_variational_layers_compute_the_fused_stack_when_dropout_is_off():
    """Layer by layer (variational) is the same function as nn.LSTM's stack, state included."""
    for cell in ("lstm", "gru"):
        torch.manual_seed(0)
        fused = PTBModel(variant(cell=cell))
        layered = PTBModel(variant(cell=cell, dropout="variational"))
        with torch.no_grad():
            layered.embedding.weight.copy_(fused.embedding.weight)
            layered.softmax.load_state_dict(fused.softmax.state_dict())
            for i, layer in enumerate(layered.rnn):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(layer, f"{name}_l0").copy_(getattr(fused.rnn, f"{name}_l{i}"))
        x = cyclic_ids(15).view(3, 5)
        state = tuple(torch.randn_like(s) for s in fused.zero_state(3))
        want, want_state = fused(x, state)
        got, got_state = layered(x, state)
        torch.testing.assert_close(got, want)
        for a, b in zip(got_state, want_state, strict=True):
            torch.testing.assert_close(a, b)


# --- schedule --------------------------------------------------------------------------------


def test_plateau_schedule_divides_the_lr_after_each_epoch_that_is_not_the_best():
    config = variant(lr_schedule="plateau", learning_rate=0.5, lr_decay=0.25, max_epoch=0)
    valid = [200.0, 150.0, 160.0, 140.0, 145.0, 141.0, 130.0]
    history = [{"epoch": i + 1, "valid_perplexity": v} for i, v in enumerate(valid)]
    lrs = [learning_rate(config, epoch, history[: epoch - 1]) for epoch in range(1, 9)]
    assert lrs == [0.5, 0.5, 0.5, 0.125, 0.125, 0.5 / 16, 0.5 / 64, 0.5 / 64]
    # the same rates from the whole history (what a resumed run has)
    assert [learning_rate(config, e, history) for e in range(1, 9)] == lrs
    # no decay before max_epoch
    late = dataclasses.replace(config, max_epoch=4)
    assert [learning_rate(late, e, history) for e in range(1, 9)][:5] == [0.5] * 5
