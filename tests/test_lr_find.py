"""``gradus lr-find``: the pure rules on constructed curves, then real sweeps of a tiny model on CPU."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from builders import tiny_config

from gradus.cli import main
from gradus.config import from_dict, load_config
from gradus.curriculum import resolve_schedule
from gradus.data import load_tokenizer
from gradus.errors import ConfigError
from gradus.plan.lr_curve import analyse, lr_schedule, smooth, smoothing_beta
from gradus.train.lr_find import config_with_peaks, plan_probes, run_lr_find

STEPS = 20


# ==================================================================================== pure rules
def test_schedule_is_exactly_exponential():
    lrs = lr_schedule(1e-6, 1.0, STEPS)
    assert len(lrs) == STEPS and lrs[0] == 1e-6 and lrs[-1] == 1.0
    factor = 1e6 ** (1 / (STEPS - 1))  # 2.069...: the same factor every step
    for a, b in zip(lrs, lrs[1:], strict=False):
        assert b / a == pytest.approx(factor, rel=1e-12)
    assert lr_schedule(1e-3, 1e-1, 5) == pytest.approx([1e-3, 10**-2.5, 1e-2, 10**-1.5, 1e-1], rel=1e-12)


def test_smoothing_is_a_bias_corrected_ema():
    assert smoothing_beta(100) == pytest.approx(0.8)  # a window of 5 steps
    assert smoothing_beta(20) == smoothing_beta(5) == 0.5  # never below 2 steps
    # β = 0.5: a_i = a/2 + x/2, s_i = a_i / (1 − 0.5^(i+1)); the first value is the first loss itself.
    assert smooth([6.0, 4.0, 4.0], 0.5) == pytest.approx([6.0, (1.5 + 2.0) / 0.75, (1.75 + 2.0) / 0.875])


def test_analysis_of_a_constructed_curve():
    # Flat at 6, falls 0.5 a step to 3.5, then rises 1 a step. Smoothed (β = 0.5), by hand:
    # 6, 6, 6, 6, 5.742, 5.365, 4.929, 4.463, 3.980 (minimum, step 8), 4.240, 4.871, ...
    losses = [6.0] * 4 + [5.5, 5.0, 4.5, 4.0, 3.5] + [4.5, 5.5, 6.5, 7.5, 8.5]
    lrs = lr_schedule(1e-4, 1.0, 20)  # 1.624× per step
    s = smooth(losses, 0.5)
    assert s[8] == pytest.approx(3.98043, abs=1e-5) and s[9] == pytest.approx(4.24047, abs=1e-5)
    st = analyse(lrs, losses, beta=0.5)
    # Divergence threshold after the minimum: 3.980 + max(0.1, (6 − 3.980) / 3) = 4.654: step 9 (4.240)
    # is still stable, step 10 (4.871) is not.
    assert st.diverged and st.diverged_step == 10
    assert st.diverged_lr == lrs[10] and st.max_stable_lr == lrs[9]
    assert st.min_loss_lr == lrs[8] and st.min_loss == s[8] and st.initial_loss == 6.0
    # Steepest: central differences s[i+1] − s[i−1] over steps 0-9; the largest drop is at step 7
    # (3.980 − 4.929 = −0.949, against −0.902 at step 6 and −0.740 at step 8).
    assert st.steepest_lr == lrs[7]
    assert st.steepest_slope == pytest.approx((s[8] - s[6]) / math.log(lrs[8] / lrs[6]))
    # Suggested: min(steepest, max_stable / 3) = min(lrs[7], lrs[7] × 1.624² / 3 = 0.879 × lrs[7]).
    assert st.suggested_lr == lrs[9] / 3 < st.steepest_lr


def test_non_finite_loss_is_divergence_and_flat_curve_has_no_steepest_point():
    lrs = lr_schedule(1e-5, 1e-1, 8)
    st = analyse(lrs, [6.0, 5.9, 5.8, float("nan"), 5.0], beta=0.5)
    assert st.diverged_step == 3 and st.max_stable_lr == lrs[2]
    flat = analyse(lrs, [6.0] * 8, beta=0.5)
    assert not flat.diverged and flat.max_stable_lr == lrs[-1] == 1e-1
    assert flat.steepest_lr is None and flat.suggested_lr == pytest.approx(1e-1 / 3)
    first = analyse(lrs, [float("inf")], beta=0.5)
    assert first.diverged_step == 0 and first.max_stable_lr is None and first.suggested_lr is None


# ================================================================================= tiny configs
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine a second thread mostly waits for the other
    processes (measured: 20 steps of the tiny model take 1.5 s with one thread, 30 s with two under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


STAGES = [
    {"name": "s16", "tokens": 2048, "seq_len": 16, "tokens_per_batch": 256, "mix": {"wiki": 0.8, "math": 0.2}},
    {"name": "s32", "tokens": 2048, "seq_len": 32, "tokens_per_batch": 256, "lr_multiplier": 2.0},
    {"name": "s64", "tokens": 2048, "seq_len": 64, "batch_size": 4, "lr_rule": "seq_batch", "clip_rule": "by_length"},
]


def raw_config(tok: str | None, shared: Path) -> dict:
    """The shared tiny config with this file's stages (several LR forms, a clip rule)."""
    return tiny_config(shared, tok, STAGES)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, offline_data) -> Path:
    """The tiny config as a YAML file, its tokenizer a 512-token BPE trained once."""
    folder = tmp_path_factory.mktemp("lrfind")
    load_tokenizer(from_dict(raw_config(None, offline_data)).data, run_dir=folder)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw_config(str(folder / "tokenizer.json"), offline_data), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sweep(config_file):
    """One library sweep at 16 and 32 (256 tokens per step each)."""
    return run_lr_find(load_config(config_file), [16, 32], steps=STEPS)


def test_probes_take_the_stage_batch_or_keep_its_tokens_per_step(config_file):
    cfg = load_config(config_file)
    p16, p24, p64, p48 = plan_probes(cfg, resolve_schedule(cfg), [16, 24, 64, 48])
    assert (p16.batch_size, p16.tokens_per_step, p16.stage_name, p16.note) == (16, 256, "s16", "")
    assert p16.mix == pytest.approx({"wiki": 0.8, "math": 0.2}) and p16.grad_clip == 1.0
    # 24 is nearest to 16 and 32 alike: the shorter stage lends its 256 tokens/step → 256/24 ≈ 10.7 → 11
    # rows (the nearest whole number, not the stage's multiple of 8, which would give 8 rows, 192 tokens).
    assert (p24.batch_size, p24.tokens_per_step, p24.stage_name) == (11, 264, "s16")
    assert "no stage has seq_len 24" in p24.note and "256 tokens/step of stage s16" in p24.note
    assert "rounded to 264" in p24.note
    assert (p64.batch_size, p64.grad_clip) == (4, 5.0)  # by_length: ≤128 → 5.0
    # 48 borrows s32's or s64's shape: equally near, the shorter wins (s32, 256 tokens/step: 5 rows).
    assert (p48.stage_name, p48.batch_size) == ("s32", 5)
    with pytest.raises(ConfigError, match="128 exceeds model.max_seq_len=64"):
        plan_probes(cfg, resolve_schedule(cfg), [16, 128])


def test_sweep_follows_the_schedule_and_the_rules(sweep):
    lrs = lr_schedule(1e-6, 1.0, STEPS)
    assert [c.probe.seq_len for c in sweep.curves] == [16, 32]
    for c in sweep.curves:
        assert c.probe.tokens_per_step == 256
        n = len(c.losses)
        assert 5 <= n <= STEPS and c.lrs == lrs
        assert c.losses[0] == pytest.approx(math.log(512), abs=0.05)  # an untrained model: ≈ ln V
        assert c.smoothed == pytest.approx(smooth(c.losses, sweep.beta))
        assert c.stats == analyse(lrs, c.losses, sweep.beta)  # the run stops exactly where the rule says
        st = c.stats
        assert st.min_loss < st.initial_loss - 0.3  # it learned before it broke
        assert st.diverged and n == st.diverged_step + 1  # the sweep to LR 1 breaks, and stops there
        assert st.suggested_lr is not None and 1e-4 < st.suggested_lr < st.diverged_lr
        assert st.suggested_lr <= st.max_stable_lr / 3 and st.suggested_lr <= st.steepest_lr
        assert st.max_stable_lr == lrs[st.diverged_step - 1] < st.diverged_lr


def test_a_longer_sequence_at_the_same_tokens_per_step_gives_another_curve(sweep):
    c16, c32 = sweep.curves
    assert (c16.probe.batch_size, c32.probe.batch_size) == (16, 8)
    n = min(len(c16.losses), len(c32.losses))
    # Same seed, same first documents: both start from the same weights at about the same loss (0.023
    # apart on the generated corpora, 0.003 on WikiText-2; near ln 512 = 6.24 either way) ...
    assert c16.losses[0] == pytest.approx(c32.losses[0], abs=0.05)
    # ... but the windows differ, so the curves do, and more so once the LR is large.
    diffs = [abs(a - b) for a, b in zip(c16.losses[:n], c32.losses[:n], strict=True)]
    assert diffs[0] > 0 and max(diffs) > 0.05


def test_cli_repeats_the_sweep_bit_for_bit_and_writes_plot_json_and_config(sweep, config_file, tmp_path, capsys):
    out, written = tmp_path / "out", tmp_path / "tuned.yaml"
    code = main(["lr-find", str(config_file), "--seq-lens", "16,32", "--steps", str(STEPS),
                 "--out", str(out), "--write", str(written), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report == json.loads((out / "lr_find.json").read_text())
    # Deterministic given the seed: the second run (through the CLI) repeats the first exactly.
    for entry, c in zip(report["lengths"], sweep.curves, strict=True):
        assert entry["losses"] == c.losses and entry["grad_norms"] == c.grad_norms
        assert entry["suggested_lr"] == c.stats.suggested_lr and entry["lrs"] == c.lrs[: len(c.losses)]
    assert [e["config_peak_lr"] for e in report["lengths"]] == [3e-3, 6e-3]
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["plot"] == str(out / "lr_find.png")

    # --write: loads and schedules without edits; probed stages get peak_lr (and lose their other LR
    # form), the unprobed s64 keeps its lr_rule.
    cfg = load_config(written)
    plan = resolve_schedule(cfg).stages
    suggested = {e["seq_len"]: e["suggested_lr"] for e in report["lengths"]}
    assert plan[0].peak_lr == float(f"{suggested[16]:.3g}") and plan[0].lr_source == "peak_lr"
    assert plan[1].peak_lr == float(f"{suggested[32]:.3g}") and cfg.curriculum.stages[1].lr_multiplier is None
    assert plan[2].lr_source == "seq_batch" and cfg.curriculum.stages[2].lr_rule == "seq_batch"
    before = load_config(config_file)
    assert cfg.model_copy(update={"curriculum": before.curriculum}) == before  # nothing else changed
    assert [s.seq_len for s in plan] == [16, 32, 64]
    # ... and the run says so in one line (stderr, so --json stays clean), and in the JSON.
    assert report["written"]["unprobed"] == [{"name": "s64", "seq_len": 64}]
    said = [ln for ln in captured.err.splitlines() if "not probed" in ln]
    assert said == [f"lr-find: --write {written}: 1 stage(s) not probed, peak LR left as configured: s64 (seq_len 64); "
                    "add --seq-lens 64 (with the others) to tune them too"]


def test_table_names_a_borrowed_batch(config_file, tmp_path, capsys):
    code = main(["lr-find", str(config_file), "--seq-lens", "24", "--steps", "5", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("seq_len"))
    row = lines[header + 1].split()
    assert row[:5] == ["24*", "11", "264", "1", "5"]
    assert "* no stage has seq_len 24: batch 11 keeps the 256 tokens/step of stage s16" in out
    assert "never diverged" in out  # 5 steps from 1e-6 to 1 are too few to break it
    assert f"plot: {tmp_path / 'lr_find.png'}" in out


def test_missing_matplotlib_is_one_line(sweep, tmp_path, monkeypatch, capsys):
    from gradus.commands.lr_find import _plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert _plot(sweep, tmp_path / "x.png") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib is not installed" in err
    assert not (tmp_path / "x.png").exists()


def test_config_with_peaks_keeps_the_file_form(config_file):
    raw = yaml.safe_load(config_file.read_text())
    cur = resolve_schedule(load_config(config_file))
    data, changes = config_with_peaks(raw, cur, {32: 0.012345, 128: 1.0})
    assert data["curriculum"]["stages"][1] == {k: v for k, v in STAGES[1].items() if k != "lr_multiplier"} | {
        "peak_lr": 0.0123}
    assert data["curriculum"]["stages"][0] == STAGES[0] and raw["curriculum"]["stages"][1] == STAGES[1]
    assert [(c.name, c.new_lr) for c in changes] == [("s16", None), ("s32", 0.0123), ("s64", None)]
    assert changes[1].old_lr == pytest.approx(6e-3) and changes[1].old_source == "lr_multiplier"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seq-lens", "16,128"], "--seq-lens: 128 exceeds model.max_seq_len=64"),
        (["--seq-lens", "16,abc"], "--seq-lens=16,abc: 'abc' is not a whole number"),
        (["--seq-lens", "16,0"], "0 is not a positive length"),
        (["--min-lr", "1", "--max-lr", "1e-3"], "--min-lr=1 must be below --max-lr=0.001"),
        (["--min-lr", "-1"], "--min-lr=-1: must be a positive learning rate"),
        (["--max-lr", "fast"], "--max-lr=fast: not a number"),
        (["--steps", "3"], "--steps=3: the sweep needs at least 5 steps"),
        (["--steps", "ten"], "--steps=ten: not a whole number"),
    ],
    ids=["too-long", "not-a-number", "zero", "min-above-max", "negative-lr", "lr-not-a-number", "few-steps",
         "steps-not-a-number"],
)
def test_bad_input_is_one_line_exit_2(args, message, config_file, tmp_path, capsys):
    code = main(["lr-find", str(config_file), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("gradus: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_curve_analysis_imports_without_torch():
    import subprocess

    code = ("import sys, gradus.plan.lr_curve as c; "
            "assert c.analyse(c.lr_schedule(1e-3, 1.0, 5), [5.0, 4.0, 3.0, 9.0, 9.0], 0.5).diverged_step == 3; "
            "sys.exit('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr or "importing gradus.plan.lr_curve loaded torch"
