"""One micro-batch measured from its two halves in one backward pass (gradus.train.noise_halves): the halves'
gradient norms are those of two separate backward passes, the step's update is the usual one up to rounding,
the model is left untouched, and what it cannot cover falls back to a split."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
from torch import nn

from gradus.model import GPT
from gradus.sizes import ModelShape
from gradus.train.noise_halves import BackwardHalves
from gradus.train.noise_scale import MicroBatchNorms, unmeasured_reason
from gradus.train.runtime import Runtime
from gradus.train.step import optimizer_step

SHAPE = ModelShape(n_layers=2, d_model=32, n_heads=4, vocab_size=97, max_seq_len=16)
RT = Runtime(device=torch.device("cpu"), precision="fp32")


def _batch(rows: int = 6, seq: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with different numbers of masked labels, so the two halves' token counts differ."""
    gen = torch.Generator().manual_seed(5)
    inputs = torch.randint(0, 97, (rows, seq), generator=gen)
    labels = torch.randint(0, 97, (rows, seq), generator=gen)
    labels[0, :5] = -100
    labels[rows // 2, 2:13] = -100
    return inputs, labels


def _model(seed: int = 0, **shape) -> GPT:
    torch.manual_seed(seed)
    return GPT(SHAPE.with_(**shape) if shape else SHAPE)


def _separate(model, inputs, labels, cut: int, autocast=None) -> tuple[list[float], list[int]]:
    """|∇ mean loss|² of rows [0, cut) and [cut, end) by one plain backward each, and their label tokens."""
    model = copy.deepcopy(model)
    norms, tokens = [], []
    for rows in (slice(0, cut), slice(cut, None)):
        model.zero_grad(set_to_none=True)
        with autocast or torch.autocast("cpu", enabled=False):
            _, loss = model(inputs[rows], labels[rows])
        loss.backward()
        norms.append(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters()))
        tokens.append(int((labels[rows] != -100).sum()))
    return norms, tokens


@pytest.mark.parametrize(("rows", "tied"), [(6, True), (5, True), (4, False)])
def test_the_halves_are_two_separate_backward_passes(rows, tied):
    """Six rows (three and three), five (two and three: an odd batch), and an untied head."""
    inputs, labels = _batch(rows)
    model = _model(tie_embeddings=tied)
    expected, tokens = _separate(model, inputs, labels, rows // 2)
    hooks = MicroBatchNorms(model.parameters(), BackwardHalves.for_model(model))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    (_, grad_norm, applied), sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=0.5,
                                                     micro=rows, rt=RT, noise_hooks=hooks)
    assert tokens[0] != tokens[1]  # the halves' weights differ: a real test of them
    assert sample.micro.tolist() == pytest.approx(expected, rel=1e-5)
    got = sample.read()
    assert got.small_sq == pytest.approx(statistics.fmean(expected), rel=1e-5)
    assert got.small_tokens == pytest.approx(1 / statistics.fmean(1 / t for t in tokens), rel=1e-12)
    assert got.big_tokens == sum(tokens) and got.usable() and applied
    assert got.big_sq == pytest.approx(grad_norm**2, rel=1e-6)
    assert hooks.tokens == tokens


def test_the_measured_step_is_the_usual_step_up_to_rounding_and_leaves_the_model_untouched():
    inputs, labels = _batch()
    results = []
    for measure in (False, True):
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        hooks = MicroBatchNorms(model.parameters(), BackwardHalves.for_model(model)) if measure else None
        for _ in range(3):
            out = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=6, rt=RT,
                                 noise_hooks=hooks)
            if measure:
                out, sample = out
                assert sample.read().usable()
        results.append((out, model))
    (off, m_off), (on, m_on) = results
    assert on[0] == pytest.approx(off[0], rel=1e-6) and on[1] == pytest.approx(off[1], rel=1e-5)
    for (name, a), b in zip(m_off.state_dict().items(), m_on.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)  # measured: ≤ 2.5e-6
    assert not any("forward" in m.__dict__ for m in m_on.modules())  # the own forwards are back
    copy.deepcopy(m_on)  # and nothing of the measurement is copied with the model


def test_autocast_and_activation_checkpointing_measure_the_same_halves():
    from gradus.train.parallel import apply_activation_checkpointing

    inputs, labels = _batch(4)
    model = _model()
    plain, _ = _separate(model, inputs, labels, 2)
    apply_activation_checkpointing(model, "full", 1)
    hooks = MicroBatchNorms(model.parameters(), BackwardHalves.for_model(model))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=4, rt=RT,
                               noise_hooks=hooks)
    assert sample.micro.tolist() == pytest.approx(plain, rel=1e-5)

    bf16 = Runtime(device=torch.device("cpu"), precision="bf16")
    model = _model()
    expected, _ = _separate(model, inputs, labels, 2, autocast=bf16.autocast())
    hooks = MicroBatchNorms(model.parameters(), BackwardHalves.for_model(model))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=4, rt=bf16,
                               noise_hooks=hooks)
    assert sample.micro.tolist() == pytest.approx(expected, rel=2e-2)  # bf16 matmuls, summed in another order


def test_a_failed_step_restores_the_model_and_the_next_step_measures_afresh():
    inputs, labels = _batch(4)
    model = _model()
    expected, _ = _separate(model, inputs, labels, 2)
    halves = BackwardHalves.for_model(model)
    hooks = MicroBatchNorms(model.parameters(), halves)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def failing(x, y):
        assert halves.armed  # the halving forwards run inside the step
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        optimizer_step(failing, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=4, rt=RT,
                       noise_hooks=hooks)
    assert not halves.armed and not hooks.armed
    assert not any("forward" in m.__dict__ for m in model.modules())
    model.zero_grad(set_to_none=True)
    _, sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=4, rt=RT,
                               noise_hooks=hooks)
    assert sample.micro.tolist() == pytest.approx(expected, rel=1e-5)


def test_what_it_cannot_cover_is_left_to_the_split():
    assert BackwardHalves.for_model(_model()) is not None  # every gradus GPT
    assert len(BackwardHalves.for_model(_model()).modules) == 2 * (4 + 3 + 2) + 3  # linears, norms, emb/head/norm
    extra = _model()
    extra.scale = nn.Parameter(torch.ones(1))  # a parameter of no covered module
    assert BackwardHalves.for_model(extra) is None
    ln = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert BackwardHalves.for_model(ln) is None
    frozen = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    frozen[1].requires_grad_(False)
    assert BackwardHalves.for_model(frozen) is not None  # only trainable parameters need halves
    padded = nn.Sequential(nn.Embedding(8, 4, padding_idx=0))
    assert BackwardHalves.for_model(padded) is None
    # One row cannot be halved; without halves one micro-batch cannot be measured.
    assert unmeasured_reason(1, 1, halves=True, rows=2) is None
    assert "one row" in unmeasured_reason(1, 1, halves=True, rows=1)
    assert "one micro-batch on one process" in unmeasured_reason(1, 1, halves=False, rows=8)


def test_a_parameter_reached_outside_its_module_gives_no_usable_sample():
    """A covered module whose weight a model uses only through a plain function: no half A is recorded for it,
    so the sample is not finite and the estimator skips it (rather than reading a wrong half)."""

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(97, 8)
            self.head = nn.Linear(8, 97)

        def forward(self, x, y):
            logits = nn.functional.linear(self.emb(x), self.head.weight, self.head.bias)  # not self.head(...)
            return logits, nn.functional.cross_entropy(logits.reshape(-1, 97), y.reshape(-1), ignore_index=-100)

    torch.manual_seed(0)
    model = Functional()
    inputs, labels = _batch(4)
    hooks = MicroBatchNorms(model.parameters(), BackwardHalves.for_model(model))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    (_, _, applied), sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=4,
                                             rt=RT, noise_hooks=hooks)
    assert applied and not sample.read().usable()  # the step itself is untouched
