"""The gradient noise scale (issue 30 §1): the estimator against a closed-form ground truth, its pitfalls, its
state, and the measurement inside the real ``optimizer_step`` (what it measures, and that it changes nothing)."""

from __future__ import annotations

import copy
import json
import math
import statistics

import pytest
import torch

from gradus.model import GPT
from gradus.sizes import ModelShape
from gradus.train.noise_scale import (
    GradientNoiseScale,
    GradientSample,
    MicroBatchNorms,
    ShardedMicroBatchNorms,
    two_batch_estimates,
    unmeasured_reason,
)
from gradus.train.runtime import Runtime
from gradus.train.step import optimizer_step


# ============================================================================ ground truth: linear regression
def _regression_samples(n: int, d: int, delta: torch.Tensor, sigma: float, b: int, k: int,
                        seed: int) -> list[GradientSample]:
    """``n`` steps of k micro-batches of b examples on least squares with x ~ N(0, I_d), y = x·w* + ε,
    ε ~ N(0, σ²), at weights w = w* + δ: each example's gradient of ½(x·w − y)² is x(x·δ − ε). A step's sample
    is built as optimizer_step builds it: the mean over micro-batches of |mean gradient|², and the squared
    norm of the mean over the whole step."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, b, d, generator=gen, dtype=torch.float64)
    eps = sigma * torch.randn(n, k, b, generator=gen, dtype=torch.float64)
    g = x * (x @ delta - eps)[..., None]  # per-example gradients: n, k, b, d
    micro = g.mean(2)
    small = (micro**2).sum(-1).mean(1)
    big = (micro.mean(1) ** 2).sum(-1)
    return [GradientSample(float(s), b, float(B), b * k) for s, B in zip(small, big, strict=True)]


def _truth(d: int, delta: torch.Tensor, sigma: float) -> tuple[float, float]:
    """(|G|², tr Σ) in closed form. G = E[x xᵀ]δ = δ. By Isserlis, E[x xᵀ (xᵀδ)²] = |δ|² I + 2δδᵀ, so
    E[g gᵀ] = (|δ|² + σ²) I + 2δδᵀ and Σ = E[g gᵀ] − G Gᵀ = (|δ|² + σ²) I + δδᵀ: tr Σ = d(|δ|² + σ²) + |δ|²."""
    g2 = float(delta @ delta)
    return g2, d * (g2 + sigma**2) + g2


def test_the_closed_form_covariance_is_what_per_example_gradients_show():
    d, sigma = 8, 1.0
    delta = torch.linspace(-0.6, 0.9, d, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400_000, d, generator=gen, dtype=torch.float64)
    g = x * (x @ delta - sigma * torch.randn(400_000, generator=gen, dtype=torch.float64))[:, None]
    g2, trace = _truth(d, delta, sigma)
    # Sampling error of the empirical trace at 400k examples is about 0.2%; 1% is five of them.
    assert float(g.var(0).sum()) == pytest.approx(trace, rel=0.01)
    assert float((g.mean(0) ** 2).sum()) == pytest.approx(g2, rel=0.01)


def test_the_two_batch_estimates_are_unbiased_against_the_closed_form():
    """The mean over 20,000 draws of each per-step estimate is within 4 standard errors of the truth (for an
    unbiased estimator the mean's error is ~N(0, SE²): 4 SE fails by chance with p ≈ 6e-5, and the seed is
    fixed), and the standard error is under 1.5% of the truth, so the check is tight. B_simple, a ratio, has
    no unbiased per-step estimate: the class's ratio of EMAs (β = 0.999, a window of ~1,000 steps) is checked
    within 5% (its spread over seeds at this β is about 1%)."""
    d, sigma, b, k, n = 8, 1.0, 4, 4, 20_000
    delta = torch.full((d,), 0.5, dtype=torch.float64)
    g2_true, trace_true = _truth(d, delta, sigma)  # 2 and 26: B_simple = 13 examples (here: tokens)
    samples = _regression_samples(n, d, delta, sigma, b, k, seed=0)
    estimates = [two_batch_estimates(s) for s in samples]
    for i, truth in ((0, g2_true), (1, trace_true)):
        values = [e[i] for e in estimates]
        se = statistics.stdev(values) / math.sqrt(n)
        assert se < 0.015 * truth
        assert abs(statistics.fmean(values) - truth) < 4 * se
    gns = GradientNoiseScale(beta=0.999)
    for s in samples:
        gns.update(s)
    assert gns.b_simple == pytest.approx(trace_true / g2_true, rel=0.05)
    assert gns.grad_sq == pytest.approx(g2_true, rel=0.1) and gns.trace == pytest.approx(trace_true, rel=0.1)


def test_the_ratio_of_averages_is_right_where_an_average_of_ratios_is_not():
    """Far below the noise scale (B_big = 256 tokens, true B_simple = 458) a step's |G|² estimate is mostly
    noise and often negative: the per-step ratios' median reads about half the truth and their mean swings
    with the few near-zero denominators, while the ratio of the two averages is within 10% (over 4 seeds it
    read 445–463)."""
    d, x2 = 8, 0.0178
    delta = torch.full((d,), math.sqrt(x2 / d), dtype=torch.float64)
    g2_true, trace_true = _truth(d, delta, 1.0)
    truth = trace_true / g2_true
    assert truth == pytest.approx(458.4, abs=0.1)
    samples = _regression_samples(6000, d, delta, 1.0, 64, 4, seed=0)
    gns = GradientNoiseScale(beta=0.999)
    for s in samples:
        gns.update(s)
    ratios = [t / g for g, t in map(two_batch_estimates, samples)]
    assert gns.b_simple == pytest.approx(truth, rel=0.1)
    assert statistics.median(ratios) < 0.6 * truth
    assert abs(statistics.fmean(ratios) / truth - 1) > 0.5


def test_averaging_every_micro_batch_cuts_the_spread():
    """Pitfall 2: the small batch as the mean of all k micro-batches' norms, not only the first one's."""
    d, b, k, n = 8, 4, 8, 4000
    delta = torch.full((d,), 0.5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, k, b, d, generator=gen, dtype=torch.float64)
    g = x * (x @ delta - torch.randn(n, k, b, generator=gen, dtype=torch.float64))[..., None]
    micro = g.mean(2)
    big = (micro.mean(1) ** 2).sum(-1)
    all_micro = (micro**2).sum(-1).mean(1)
    first = (micro[:, 0] ** 2).sum(-1)
    spread = {}
    for name, small in (("all", all_micro), ("first", first)):
        traces = [two_batch_estimates(GradientSample(float(s), b, float(B), b * k))[1] for s, B in zip(small, big, strict=True)]
        spread[name] = statistics.stdev(traces)
    assert spread["all"] < 0.5 * spread["first"]


# ============================================================================ clamping, skipping, state
def test_negative_estimates_are_averaged_raw_and_read_clamped():
    # S_big > S_small: a negative tr Σ estimate. |G|² = (16·3 − 4·1)/12 = 11/3, tr Σ = (1 − 3)/(1/4 − 1/16).
    sample = GradientSample(small_sq=1.0, small_tokens=4, big_sq=3.0, big_tokens=16)
    g2, trace = two_batch_estimates(sample)
    assert g2 == pytest.approx(11 / 3) and trace == pytest.approx(-2 / (3 / 16))
    gns = GradientNoiseScale()
    gns.update(sample)
    assert gns.trace == 0.0 and gns.grad_sq == pytest.approx(11 / 3) and gns.b_simple == 0.0
    # A negative |G|² (big batch's norm well below what its noise alone would give): B_simple reads inf.
    gns = GradientNoiseScale()
    gns.update(GradientSample(small_sq=10.0, small_tokens=4, big_sq=1.0, big_tokens=16))
    assert two_batch_estimates(GradientSample(10.0, 4, 1.0, 16))[0] < 0
    assert gns.grad_sq == 0.0 and gns.trace > 0 and gns.b_simple == math.inf
    # The EMA keeps the raw (negative) estimate, so later samples average it out rather than a clamped 0.
    assert gns.state_dict()["ema_g2"] < 0


def test_unusable_samples_are_skipped_and_counted():
    gns = GradientNoiseScale()
    assert gns.metrics() == {} and math.isnan(gns.b_simple)
    for bad in (None, GradientSample(math.inf, 4, 1.0, 16), GradientSample(1.0, 16, 1.0, 16),
                GradientSample(math.nan, 4, 1.0, 16), GradientSample(1.0, 32, 1.0, 16)):
        assert gns.update(bad) is False
    assert gns.count == 0 and gns.skipped == 5
    with pytest.raises(ValueError):
        GradientNoiseScale(beta=1.0)


def test_bias_correction_and_metrics():
    gns = GradientNoiseScale(beta=0.9)
    gns.update(GradientSample(small_sq=5.0, small_tokens=10, big_sq=2.0, big_tokens=40))
    g2, trace = two_batch_estimates(GradientSample(5.0, 10, 2.0, 40))  # 1, 40
    assert (g2, trace) == pytest.approx((1.0, 40.0))
    # One sample: the corrected EMA is the sample itself (0.1·x / (1 − 0.9)), not a tenth of it.
    assert gns.grad_sq == pytest.approx(1.0) and gns.trace == pytest.approx(40.0)
    m = gns.metrics(tokens_per_step=20)
    assert m == pytest.approx({"gns/b_simple": 40.0, "gns/grad_sq": 1.0, "gns/trace_cov": 40.0, "gns/samples": 1,
                               "gns/b_simple_over_batch": 2.0})
    gns.reset()
    assert gns.count == 0 and gns.metrics() == {}


def test_state_dict_round_trip_continues_bit_for_bit():
    d = 8
    delta = torch.full((d,), 0.3, dtype=torch.float64)
    samples = _regression_samples(40, d, delta, 1.0, 4, 4, seed=3)
    a = GradientNoiseScale(beta=0.95)
    for s in samples[:20]:
        a.update(s)
    state = json.loads(json.dumps(a.state_dict()))  # plain data: survives any checkpoint format
    b = GradientNoiseScale(beta=0.95)
    b.load_state_dict(state)
    for s in samples[20:]:
        a.update(s)
        b.update(s)
        assert (a.b_simple, a.grad_sq, a.trace, a.last) == (b.b_simple, b.grad_sq, b.trace, b.last)
    assert a.state_dict() == b.state_dict()


def test_the_averages_restart_when_the_stage_changes_even_across_a_resume():
    sample = GradientSample(small_sq=5.0, small_tokens=10, big_sq=2.0, big_tokens=40)
    a = GradientNoiseScale()
    assert a.enter_stage(0) is True
    a.update(sample)
    assert a.enter_stage(0) is False and a.count == 1
    b = GradientNoiseScale()
    b.load_state_dict(a.state_dict())  # a checkpoint written at the end of stage 0
    assert b.enter_stage(0) is False and b.count == 1
    assert b.enter_stage(1) is True and b.count == 0 and b.metrics() == {}


# ============================================================================ inside optimizer_step
SHAPE = ModelShape(n_layers=2, d_model=32, n_heads=4, vocab_size=97, max_seq_len=16)
RT = Runtime(device=torch.device("cpu"), precision="fp32")


def _batch(rows: int = 6, seq: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with different numbers of masked labels, so the micro-batches' weights differ."""
    gen = torch.Generator().manual_seed(5)
    inputs = torch.randint(0, 97, (rows, seq), generator=gen)
    labels = torch.randint(0, 97, (rows, seq), generator=gen)
    labels[0, :5] = -100
    labels[rows // 2, 2:13] = -100
    labels[-2, -1] = -100
    return inputs, labels


def _parts(fused: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = GPT(SHAPE)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)


def _per_micro_by_separate_passes(model, inputs, labels, micro: int) -> tuple[list[float], list[int]]:
    """|∇ mean loss of micro-batch j|² by one plain backward per micro-batch, and its label tokens."""
    model = copy.deepcopy(model)
    norms, tokens = [], []
    for s in range(0, inputs.shape[0], micro):
        model.zero_grad(set_to_none=True)
        _, loss = model(inputs[s : s + micro], labels[s : s + micro])
        loss.backward()
        norms.append(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))
        tokens.append(int((labels[s : s + micro] != -100).sum()))
    return norms, tokens


def test_the_step_measures_each_micro_batch_as_a_separate_backward_would():
    inputs, labels = _batch()
    model, opt = _parts()
    expected, tokens = _per_micro_by_separate_passes(model, inputs, labels, micro=2)
    hooks = MicroBatchNorms(model.parameters())
    (loss, grad_norm, applied), sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=0.5,
                                                        micro=2, rt=RT, noise_hooks=hooks)
    assert len(set(tokens)) == 3  # three micro-batches of different sizes (a real test of the weights)
    assert sample.micro.tolist() == pytest.approx(expected, rel=1e-5)
    got = sample.read()
    assert got.small_sq == pytest.approx(statistics.fmean(expected), rel=1e-5)
    assert got.small_tokens == pytest.approx(1 / statistics.fmean(1 / t for t in tokens), rel=1e-12)
    assert got.big_tokens == pytest.approx(sum(tokens), rel=1e-12)
    assert got.big_sq == pytest.approx(grad_norm**2, rel=1e-6)  # the norm before clipping (clip 0.5 is active)
    assert grad_norm > 0.5 and applied
    assert hooks.registered and not hooks.armed  # the hooks stay for the next step, recording nothing
    hooks.close()
    assert all(not p._backward_hooks for p in model.parameters())  # close removes them


def test_a_micro_batch_without_label_tokens_is_left_out():
    """A fully masked micro-batch (an SFT row of prompt only) has weight 0 and no gradient: the small batch is
    the mean over the other micro-batches, its size their harmonic mean."""
    inputs, labels = _batch()
    labels[2:4] = -100  # the second of three micro-batches
    model, opt = _parts()
    expected, tokens = _per_micro_by_separate_passes(model, inputs, labels, micro=2)
    assert tokens[1] == 0 and expected[1] == 0.0
    _, sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=2, rt=RT,
                               noise_hooks=MicroBatchNorms(model.parameters()))
    got = sample.read()
    assert got.small_sq == pytest.approx((expected[0] + expected[2]) / 2, rel=1e-5)
    assert got.small_tokens == pytest.approx(2 / (1 / tokens[0] + 1 / tokens[2]), rel=1e-12)
    assert got.big_tokens == pytest.approx(sum(tokens), rel=1e-12) and got.usable()


@pytest.mark.parametrize("multiplier", [math.nan, math.inf])
def test_a_non_finite_step_gives_a_sample_the_estimator_skips(multiplier):
    inputs, labels = _batch(rows=4)
    model, opt = _parts()
    (_, _, applied), sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=2,
                                             rt=RT, loss_multiplier=multiplier,
                                             noise_hooks=MicroBatchNorms(model.parameters()))
    gns = GradientNoiseScale()
    assert not applied and not sample.read().usable()
    assert gns.update(sample.read()) is False and gns.skipped == 1


def test_activation_checkpointing_measures_the_same_norms():
    """A recomputed block still hands each parameter one gradient per micro-batch."""
    from gradus.train.parallel import apply_activation_checkpointing

    inputs, labels = _batch(rows=4)
    model, opt = _parts()
    expected, _ = _per_micro_by_separate_passes(model, inputs, labels, micro=2)
    assert apply_activation_checkpointing(model, "full", 1) == [0, 1]
    _, sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=2, rt=RT,
                               noise_hooks=MicroBatchNorms(model.parameters()))
    assert sample.micro.tolist() == pytest.approx(expected, rel=1e-5)


def test_the_hooks_are_disarmed_when_a_micro_batch_fails():
    """A failed step leaves the hooks recording nothing, and the next step measures only its own micro-batches."""
    inputs, labels = _batch(rows=4)
    model, opt = _parts()
    expected, _ = _per_micro_by_separate_passes(model, inputs, labels, micro=2)
    hooks = MicroBatchNorms(model.parameters())
    calls = []

    def failing(x, y):
        calls.append(1)
        if len(calls) == 2:  # the second micro-batch: the first one's norm is already taken
            raise RuntimeError("out of memory (simulated)")
        return model(x, y)

    with pytest.raises(RuntimeError, match="simulated"):
        optimizer_step(failing, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=2, rt=RT,
                       noise_hooks=hooks)
    assert hooks.registered and not hooks.armed
    model.zero_grad(set_to_none=True)  # (what the failed step accumulated)
    _, sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=2, rt=RT,
                               noise_hooks=hooks)
    assert sample.micro.tolist() == pytest.approx(expected, rel=1e-5)


def test_the_hooks_are_registered_once_and_record_only_measured_steps():
    """The run's hooks go on the parameters at the first measured step and stay: a later step registers
    nothing, measures its own micro-batches, and a step that does not measure (no hooks handed, or one
    micro-batch on one process) leaves them disarmed."""
    inputs, labels = _batch(rows=4)
    model, opt = _parts()
    hooks = MicroBatchNorms(model.parameters())
    assert not hooks.registered and all(not p._backward_hooks for p in model.parameters())
    counts = []
    for noise_hooks, micro in ((hooks, 2), (None, 2), (hooks, 4), (hooks, 2)):
        out = optimizer_step(model, model, opt, None, inputs, labels, lr=0.0, clip=1.0, micro=micro, rt=RT,
                             noise_hooks=noise_hooks)
        counts.append([len(p._backward_hooks) for p in model.parameters()])
        if noise_hooks is not None:
            assert (out[1] is None) == (micro == 4)  # one micro-batch of 4 rows: nothing to measure
        assert not hooks.armed
    assert all(c == counts[0] and set(c) == {1} for c in counts)  # one hook per parameter, all along
    assert len(hooks.per_micro) == 2  # the last step's two micro-batches, nothing left from before
    hooks.close()
    assert not hooks.registered and all(not p._backward_hooks for p in model.parameters())


@pytest.mark.parametrize("lagged", [False, True])
def test_the_step_is_bit_identical_with_the_measurement_on_and_off(lagged):
    inputs, labels = _batch()
    runs = []
    for measure in (False, True):
        model, opt = _parts(fused=lagged)
        hooks = MicroBatchNorms(model.parameters()) if measure else None
        results = []
        for _ in range(3):
            out = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=2, rt=RT,
                                 lagged=lagged, noise_hooks=hooks)
            if measure:
                out, sample = out
                assert sample is not None and sample.read().usable()
            results.append(out.read() if lagged else out)
        runs.append((results, {k: v.clone() for k, v in model.state_dict().items()},
                     [{k: v.clone() for k, v in st.items()} for st in opt.state.values()]))
    (res_off, w_off, st_off), (res_on, w_on, st_on) = runs
    assert res_off == res_on
    assert all(torch.equal(w_off[k], w_on[k]) for k in w_off)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(st_off, st_on, strict=True) for k in a)


def test_one_micro_batch_on_one_process_cannot_measure_and_says_why():
    inputs, labels = _batch(rows=2)
    model, opt = _parts()
    out, sample = optimizer_step(model, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=2, rt=RT,
                                 noise_hooks=MicroBatchNorms(model.parameters()))
    assert sample is None and len(out) == 3
    assert "one micro-batch on one process" in unmeasured_reason(1, 1)
    assert unmeasured_reason(2, 1) is None and unmeasured_reason(1, 2) is None
    assert "FSDP with one micro-batch per step" in unmeasured_reason(1, 2, sharded=True)
    assert unmeasured_reason(2, 2, sharded=True) is None  # one micro-batch over every rank is the small batch


def test_the_loss_scale_and_the_loss_multiplier_are_undone():
    inputs, labels = _batch()
    model, opt = _parts()
    m1 = copy.deepcopy(model)
    _, plain = optimizer_step(m1, m1, torch.optim.AdamW(m1.parameters()), None, inputs, labels, lr=1e-2, clip=1.0,
                              micro=2, rt=RT, noise_hooks=MicroBatchNorms(m1.parameters()))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    m2 = copy.deepcopy(model)
    _, scaled = optimizer_step(m2, m2, torch.optim.AdamW(m2.parameters()), scaler, inputs, labels, lr=1e-2, clip=1.0,
                               micro=2, rt=RT, noise_hooks=MicroBatchNorms(m2.parameters()))
    m3 = copy.deepcopy(model)
    _, multiplied = optimizer_step(m3, m3, torch.optim.AdamW(m3.parameters()), None, inputs, labels, lr=1e-2,
                                   clip=1.0, micro=2, rt=RT, loss_multiplier=3.0,
                                   noise_hooks=MicroBatchNorms(m3.parameters()))
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**12  # the hooks saw gradients 4096× too large
    want = plain.values.tolist()
    assert scaled.values.tolist() == pytest.approx(want, rel=1e-5)
    assert multiplied.values.tolist() == pytest.approx(want, rel=1e-5)
    assert scaled.micro.tolist() == pytest.approx(plain.micro.tolist(), rel=1e-5)


def test_no_graph_is_built_after_the_first_compiled_step():
    """The hooks sit on the parameters, outside the compiled forward: steps with the measurement on and off
    reuse the one graph (aot_eager: the same dynamo guards and AOT autograd as inductor, without its compile
    time), and the compiled step measures what the eager one does."""
    from gradus.train.warmup import compiled_graph_count

    torch._dynamo.reset()
    inputs, labels = _batch(rows=4)
    model, opt = _parts()
    eager = copy.deepcopy(model)
    _, want = optimizer_step(eager, eager, torch.optim.AdamW(eager.parameters(), lr=1e-2), None, inputs, labels,
                             lr=1e-2, clip=1.0, micro=2, rt=RT, noise_hooks=MicroBatchNorms(eager.parameters()))
    net = torch.compile(model, backend="aot_eager", dynamic=False)
    hooks = MicroBatchNorms(model.parameters())
    _, got = optimizer_step(net, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=2, rt=RT,
                            noise_hooks=hooks)
    assert got.values.tolist() == pytest.approx(want.values.tolist(), rel=1e-5)
    graphs = compiled_graph_count()
    for measure in (False, True, False, True):
        optimizer_step(net, model, opt, None, inputs, labels, lr=1e-2, clip=1.0, micro=2, rt=RT,
                       noise_hooks=hooks if measure else None)
    assert compiled_graph_count() == graphs


# ============================================================================ under DDP (two gloo processes)
def _worker(rank: int, world: int, init: str, out: str, fsdp: bool = False, uneven: bool = False) -> None:
    """One rank of a two-rank step on its 4 rows in 2 micro-batches of 2: DDP with the hooks, or (``fsdp``)
    FSDP2 with the sharded gradients read; writes the sample's figures to ``out.RANK``."""
    import os

    import torch.distributed as dist

    from gradus.train.parallel import shard_model

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        rt = Runtime(device=torch.device("cpu"), precision="fp32", rank=rank, world_size=world)
        inputs, labels = _batch(rows=8)
        model, opt = _parts()
        if fsdp:
            shard_model(model, rt)
            net, opt = model, torch.optim.AdamW(model.parameters(), lr=1e-2)  # (over the sharded parameters)
            hooks = ShardedMicroBatchNorms(model.parameters())
        else:
            net, hooks = torch.nn.parallel.DistributedDataParallel(model), MicroBatchNorms(model.parameters())
        mine = slice(4 * rank, 4 * rank + 4)
        (_, grad_norm, _), sample = optimizer_step(net, model, opt, None, inputs[mine], labels[mine], lr=1e-2,
                                                   clip=1.0, micro=2, rt=rt, noise_hooks=hooks, uneven_tokens=uneven)
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"values": sample.values.tolist(), "micro": sample.micro.tolist(), "grad_norm": grad_norm}, f)
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter shutdown: see test_train._exit_spawned_worker


def test_under_ddp_the_small_batches_are_every_ranks_micro_batches_and_the_big_one_the_global_gradient(tmp_path):
    """Two ranks × two micro-batches: the local micro-batch norms as separate backward passes give them, their
    mean over both ranks (one all-reduce), and the big batch = the all-reduced gradient, identical on both."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "sample")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'store'}", out), nprocs=2, join=True)
    got = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    inputs, labels = _batch(rows=8)
    model, _ = _parts()
    norms, tokens = _per_micro_by_separate_passes(model, inputs, labels, micro=2)  # rank 0's two, then rank 1's
    assert got[0]["micro"] == pytest.approx(norms[:2], rel=1e-5)
    assert got[1]["micro"] == pytest.approx(norms[2:], rel=1e-5)
    # DDP averages the two ranks' (token-weighted mean) gradients with equal weights.
    grads = []
    for r in range(2):
        m = copy.deepcopy(model)
        _, loss = m(inputs[4 * r : 4 * r + 4], labels[4 * r : 4 * r + 4])
        loss.backward()
        grads.append(torch.cat([p.grad.double().flatten() for p in m.parameters()]))
    big_sq = float((((grads[0] + grads[1]) / 2) ** 2).sum())
    rank_tokens = [sum(tokens[:2]), sum(tokens[2:])]
    want = [statistics.fmean(norms), statistics.fmean(1 / t for t in tokens), big_sq,
            statistics.fmean(1 / t for t in rank_tokens) / 2]
    assert got[0]["values"] == got[1]["values"]
    assert got[0]["values"] == pytest.approx(want, rel=1e-5)
    assert got[0]["grad_norm"] ** 2 == pytest.approx(big_sq, rel=1e-5)



@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_a_token_weighted_step_reads_its_big_batch_as_every_real_token(tmp_path, fsdp):
    """With uneven label counts over the ranks (document packing, sft) the step is the mean over all ΣT_r real
    tokens (optimizer_step's uneven_tokens), so the big batch is ΣT_r tokens; it was read as the equal-weight
    average's (the mean of 1/T_r over W), off wherever the counts differ."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "sample")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'store'}", out, fsdp, True), nprocs=2, join=True)
    got = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    inputs, labels = _batch(rows=8)
    model, _ = _parts()
    rank_tokens = [int((labels[4 * r : 4 * r + 4] != -100).sum()) for r in range(2)]
    assert rank_tokens[0] != rank_tokens[1]  # uneven: a real test
    grads = [_mean_loss_grad(model, inputs[4 * r : 4 * r + 4], labels[4 * r : 4 * r + 4]) for r in range(2)]
    weighted = (rank_tokens[0] * grads[0] + rank_tokens[1] * grads[1]) / sum(rank_tokens)
    big_sq = float((weighted**2).sum())
    assert got[0]["values"][2] == pytest.approx(big_sq, rel=1e-5)
    assert got[0]["values"][3] == pytest.approx(1 / sum(rank_tokens), rel=1e-9)
    assert got[1]["values"][2:] == pytest.approx(got[0]["values"][2:], rel=1e-9)


# ============================================================================ under FSDP2 (two gloo processes)
def _mean_loss_grad(model, inputs, labels) -> torch.Tensor:
    m = copy.deepcopy(model)
    _, loss = m(inputs, labels)
    loss.backward()
    return torch.cat([p.grad.double().flatten() for p in m.parameters()])


def test_the_micro_batch_probe_holds_the_sharded_readers_copy_aside():
    """Under FSDP the reader keeps a copy of the rank's gradient shards between micro-batches: the probe that
    picks the micro-batch on a GPU reserves that many bytes (the shards' size), the hooks reserve nothing."""
    from gradus.train.micro_batch import adamw_state_bytes, noise_copy_bytes

    model, opt = _parts()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert noise_copy_bytes(ShardedMicroBatchNorms(model.parameters()), opt) == params
    assert adamw_state_bytes(opt) == 2 * params
    assert noise_copy_bytes(MicroBatchNorms(model.parameters()), opt) == 0
    assert noise_copy_bytes(None, opt) == 0


def test_under_fsdp_the_small_batch_is_one_micro_batch_over_every_rank(tmp_path):
    """Two ranks × two micro-batches under FSDP2, rows masked unevenly (the weights differ by rank): micro-batch j's
    gradient over both ranks, undone of its weights, and its effective size, from the sharded gradients alone;
    the big batch is the ranks' averaged gradient, as under DDP."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "sample")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'store'}", out, True), nprocs=2, join=True)
    got = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    inputs, labels = _batch(rows=8)
    model, _ = _parts()
    world = 2
    g = {}  # (rank, micro-batch) -> mean-loss gradient, its label tokens, its weight on its rank
    for r in range(world):
        rows = range(4 * r, 4 * r + 4)
        total = int((labels[4 * r : 4 * r + 4] != -100).sum())
        for j, s0 in enumerate(rows[::2]):
            x, y = inputs[s0 : s0 + 2], labels[s0 : s0 + 2]
            t = int((y != -100).sum())
            g[r, j] = (_mean_loss_grad(model, x, y), t, t / total)
    inv_small, micro = [], []
    for j in range(2):
        xs = [g[r, j][2] / world for r in range(world)]
        a = sum(xs)
        d = sum(xr * g[r, j][0] for r, xr in enumerate(xs))
        micro.append(float((d**2).sum()) / a**2)
        inv_small.append(sum(xr**2 / g[r, j][1] for r, xr in enumerate(xs)) / a**2)
    assert len({round(g[r, j][2], 6) for r in range(world) for j in range(2)}) > 2  # uneven weights: a real test
    rank_grads = [sum(g[r, j][2] * g[r, j][0] for j in range(2)) for r in range(world)]
    big = float((((rank_grads[0] + rank_grads[1]) / world) ** 2).sum())
    rank_tokens = [g[r, 0][1] + g[r, 1][1] for r in range(world)]
    want = [statistics.fmean(micro), statistics.fmean(inv_small), big,
            statistics.fmean(1 / t for t in rank_tokens) / world]
    assert got[0]["values"] == got[1]["values"]
    assert got[0]["micro"] == pytest.approx(micro, rel=1e-5)
    assert got[0]["values"] == pytest.approx(want, rel=1e-5)
    assert got[0]["grad_norm"] ** 2 == pytest.approx(big, rel=1e-5)
