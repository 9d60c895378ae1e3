"""``gradus plan``: the lesson's worked example, LR grid, regimes, the written config, the timeline, the
memory estimate, ``--measure`` and bad input. Everything but the measurement runs without torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradus.cli import main
from gradus.config import load_config
from gradus.curriculum import lr_at, resolve_schedule
from gradus.errors import ConfigError
from gradus.plan import GPUS, Hardware, PlanInputs, make_plan, parse_bytes, peak_lr_for_params
from gradus.plan.memory import estimate_memory, largest_fitting_micro_batch
from gradus.plan.timeline import build_timeline
from gradus.sizes import ModelShape, resolve_shape


def plan_json(capsys, *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def error_of(capsys, *argv: str) -> str:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------ worked example
def test_lessons_worked_example(capsys):
    data = plan_json(capsys, "--flops", "2e22")
    assert data["flops_budget"] == 2e22 and data["kappa"] == 6
    ladder = {row["params"]: row for row in data["ladder"]}
    assert ladder[1e9]["tokens"] == 20e9 and ladder[1e9]["train_flops"] == pytest.approx(1.2e20)
    assert ladder[7e9]["tokens"] == 140e9 and ladder[7e9]["train_flops"] == pytest.approx(5.88e21)
    assert f"{ladder[7e9]['train_flops']:.1e}" == "5.9e+21"
    assert ladder[1e9]["fits"] and ladder[7e9]["fits"] and not ladder[13e9]["fits"]
    # The budget's own optimum: N = sqrt(C / (6·20)), D = 20·N, κ·N·D = C.
    assert data["params"] == pytest.approx(math.sqrt(2e22 / 120))
    assert data["tokens"] == pytest.approx(20 * data["params"])
    assert data["train_flops"] == pytest.approx(2e22)
    assert data["regime"] == "compute-optimal"


@pytest.mark.parametrize("params, tokens, flops", [("1B", 20e9, 1.2e20), ("7B", 140e9, 5.88e21)])
def test_fixed_model_size(capsys, params, tokens, flops):
    data = plan_json(capsys, "--params", params)
    assert data["tokens"] == tokens and data["train_flops"] == pytest.approx(flops)
    n = float(params[:-1]) * 1e9
    assert abs(data["shape"]["params_non_embedding"] / n - 1) < 0.05
    assert data["shape"]["d_model"] % data["shape"]["n_heads"] == 0


def test_worksheet_json_keys_and_consistency(capsys):
    data = plan_json(capsys, "--flops", "2e22", "--gpus", "8", "--gpu", "h100", "--mfu", "0.4")
    for key in ("flops_budget", "kappa", "params", "tokens", "train_flops", "tokens_per_step", "steps",
                "peak_lr", "stages", "wallclock_hours"):
        assert key in data
    assert 30_000 <= data["tokens_per_step"] <= 200_000
    assert data["train_flops"] <= data["flops_budget"] * (1 + 1e-9)
    stages = data["stages"]
    assert [s["name"][0] for s in stages] == ["A", "B", "C", "D"]
    assert all({"name", "tokens", "seq_len", "peak_lr"} <= set(s) for s in stages)
    assert sum(s["tokens"] for s in stages) == pytest.approx(data["tokens"], rel=0.01)
    assert sum(s["steps"] for s in stages) == data["steps"]
    assert all(s["tokens"] == s["steps"] * data["tokens_per_step"] for s in stages)
    a, b, c, d = stages
    assert a["seq_len"] < b["seq_len"] < c["seq_len"] and c["rope_scaling"] == c["seq_len"] / b["seq_len"]
    assert a["peak_lr"] == pytest.approx(data["peak_lr"], rel=1e-3)
    assert c["peak_lr"] < 0.2 * data["peak_lr"]  # long-context adaptation at a small LR
    assert d["peak_lr"] == pytest.approx(0.05 * data["peak_lr"]) and not d["in_config"]
    assert data["warmup_steps"] == pytest.approx(0.01 * (data["steps"] - d["steps"]), abs=1)
    # 8 × 989 TFLOP/s × 0.4 on κ·N·D.
    assert data["wallclock_hours"] == pytest.approx(2e22 / (8 * 989e12 * 0.4) / 3600, rel=1e-6)


def test_hardware_budget():
    hw = Hardware(gpu=GPUS["a100"], gpus=8, mfu=0.4, days=14)
    plan = make_plan(PlanInputs(hardware=hw))
    c = 8 * 312e12 * 0.4 * 14 * 86400
    assert plan.flops_budget == pytest.approx(c)
    assert plan.params == pytest.approx(math.sqrt(c / 120))
    assert plan.wallclock_hours == pytest.approx(14 * 24)
    # Each stage is timed as the trainer and `gradus plan --config` time it (the head and attention included),
    # so the stages take longer than κ·N·D says; the worksheet says by how much.
    per_token = {s.seq_len: plan.shape.flops_per_token(s.seq_len) for s in plan.stages}
    for s in plan.stages:
        assert s.hours == pytest.approx(s.tokens * per_token[s.seq_len] / hw.flops_per_second / 3600)
    total = sum(s.hours for s in plan.stages)
    assert total > 1.02 * plan.wallclock_hours
    assert any(w.startswith("stages A–D take ") and f"{total / plan.wallclock_hours - 1:.0%} over the 14d 00h" in w
               for w in plan.warnings)
    from gradus.plan.worksheet_text import plan_config_yaml
    assert "schedule: per_stage: each warms up and decays on its own" in plan_config_yaml(plan)


def test_peak_lr_grid_and_its_ends():
    for n, lr in ((1e9, 3e-4), (3e9, 2e-4), (7e9, 1.5e-4), (13e9, 1e-4)):
        assert peak_lr_for_params(n) == pytest.approx(lr)
    # Log-space: at the geometric mean of 1B and 3B the LR is the geometric mean of theirs.
    assert peak_lr_for_params(math.sqrt(3) * 1e9) == pytest.approx(math.sqrt(3e-4 * 2e-4))
    assert peak_lr_for_params(5e9) == pytest.approx(math.exp(
        math.log(2e-4) + (math.log(1.5e-4) - math.log(2e-4)) * math.log(5 / 3) / math.log(7 / 3)))
    # Below 1B: extrapolated, rising as models shrink, capped; above 13B: falling, floored.
    assert 5.5e-4 < peak_lr_for_params(124e6) < 7.5e-4
    assert peak_lr_for_params(1e5) == 3e-3
    assert peak_lr_for_params(70e9) < 1e-4 and peak_lr_for_params(1e15) == 2e-5


def test_data_limited_and_compute_limited():
    data_limited = make_plan(PlanInputs(flops=1e21, tokens=10e9))
    assert data_limited.regime == "data-limited"
    assert data_limited.tokens == 10e9 and data_limited.params == pytest.approx(10e9 / 20)
    assert data_limited.train_flops < 1e21
    enough_data = make_plan(PlanInputs(flops=1e21, tokens=1e12))
    assert enough_data.regime == "compute-optimal" and enough_data.params == pytest.approx(math.sqrt(1e21 / 120))
    capped = make_plan(PlanInputs(flops=1e21, params=7e9))
    assert capped.regime == "compute-limited" and capped.params == 7e9
    assert capped.tokens == pytest.approx(1e21 / (6 * 7e9)) and capped.train_flops == pytest.approx(1e21)
    assert any("undertrained" in w for w in capped.warnings)
    assert make_plan(PlanInputs(tokens=20e9)).params == pytest.approx(1e9)
    k8 = make_plan(PlanInputs(flops=2e22, kappa=8, ratio=10))
    assert k8.params == pytest.approx(math.sqrt(2e22 / 80)) and k8.train_flops == pytest.approx(2e22)


# ------------------------------------------------------------------------------ written config
@pytest.mark.parametrize("argv", [["--flops", "2e22"], ["--params", "124M"], ["--gpus", "1", "--gpu", "rtx4090",
                                                                            "--days", "2"]])
def test_written_config_loads_and_schedules_without_edits(tmp_path, capsys, argv):
    path = tmp_path / "plan.yaml"
    data = plan_json(capsys, *argv, "--write", str(path))
    cfg = load_config(path)
    cur = resolve_schedule(cfg)
    assert not [w for w in cur.warnings if "rounded" in w or "never runs" in w], cur.warnings
    planned = data["stages"][:3]
    assert [s.seq_len for s in cur.stages] == [s["seq_len"] for s in planned]
    assert [s.tokens for s in cur.stages] == [s["tokens"] for s in planned]
    assert [s.steps for s in cur.stages] == [s["steps"] for s in planned]
    assert all(s.tokens_per_step == data["tokens_per_step"] for s in cur.stages)
    assert cur.total_tokens == cfg.curriculum.target_tokens
    assert {src.dataset for src in cfg.data.sources} == {
        "HuggingFaceFW/fineweb-edu", "Yxanul/cc-math-finest", "Yxanul/python-finest-pretrain"}
    assert [s.mix["web"] for s in cur.stages] == [0.9, 0.5, 0.7]
    # The LRs the worksheet prints are the ones the curriculum schedules.
    for st, row in zip(cur.stages, planned, strict=True):
        assert lr_at(cur, st.end_step - 1, st.index) == pytest.approx(row["end_lr"])
    assert max(lr_at(cur, s, 0) for s in range(0, 3 * data["warmup_steps"])) == pytest.approx(data["peak_lr"], rel=1e-2)
    shape = resolve_shape(cfg.model, 50257)
    assert shape.params_non_embedding == data["shape"]["params_non_embedding"]
    assert shape.max_seq_len == planned[2]["seq_len"]


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--flops", "1e8"], "less than one optimizer step"),
        (["--gpu", "v100", "--days", "3"], "known: a100, h100, h200, rtx4090, l40s, a10g"),
        (["--flops", "1e21", "--gpu", "h100", "--days", "3"], "--flops and --days both set the budget"),
        (["--gpus", "8", "--days", "3"], "needs --gpu"),
        ([], "no budget"),
        (["--flops", "1e21", "--ratio", "40"], "--ratio 40"),
        (["--flops", "1e21", "--kappa", "5"], "--kappa 5"),
        (["--flops", "1e21", "--mfu", "1.5", "--gpu", "a100"], "--mfu 1.5"),
        (["--flops", "lots"], "--flops 'lots'"),
        (["--params", "1B", "--tokens", "20B", "--flops", "1e19"], "more than the budget"),
        (["--params", "1B", "--warmup", "0.05"], "--warmup 0.05"),
        (["--measure"], "needs a config"),
        (["--preset", "demo", "--flops", "1e20"], "--flops"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, expected):
    assert expected in error_of(capsys, *argv)


def test_bad_input_raises_config_error():
    with pytest.raises(ConfigError):
        make_plan(PlanInputs())
    with pytest.raises(ConfigError, match="--long-seq-len"):
        make_plan(PlanInputs(params=1e9, seq_len=2048, long_seq_len=1024))


def test_plan_never_imports_torch(tmp_path):
    config = _write_tiny_config(tmp_path)
    code = textwrap.dedent(f"""
        import sys, contextlib, io
        from gradus.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["plan", "--flops", "2e22", "--json"]) == 0
            assert main(["plan", "--config", {str(config)!r}, "--tokens-per-sec", "1000",
                         "--device-memory", "1GB"]) == 0
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -------------------------------------------------------------------------------------- timeline
def _write_tiny_config(tmp_path: Path, micro: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(f"""
        name: tiny-timeline
        model: {{preset: tiny, max_seq_len: 128, vocab_size: 512}}
        data:
          sources:
            - {{name: prose, builtin: python-docs}}
            - {{name: math, builtin: arithmetic}}
        curriculum:
          stages:
            - {{tokens: 40960, seq_len: 32, tokens_per_batch: 2048, mix: {{prose: 1, math: 0}}}}
            - {{tokens: 81920, seq_len: 128, tokens_per_batch: 4096, mix: {{prose: 0.5, math: 0.5}}}}
        train: {{{micro}}}
    """), encoding="utf-8")
    return path


def test_timeline_examples_tokens_coverage_and_time(tmp_path, capsys):
    config = _write_tiny_config(tmp_path)
    data = plan_json(capsys, "--config", str(config), "--tokens-per-sec", "2k", "--dataset-tokens", "100k")
    s0, s1 = data["stages"]
    assert (s0["seq_len"], s0["batch_size"], s0["steps"], s0["examples"], s0["tokens"]) == (32, 64, 20, 1280, 40960)
    assert (s1["seq_len"], s1["batch_size"], s1["steps"], s1["examples"], s1["tokens"]) == (128, 32, 20, 640, 81920)
    assert s0["seconds"] == pytest.approx(40960 / 2000) and s1["seconds"] == pytest.approx(81920 / 2000)
    assert data["total_seconds"] == pytest.approx(122880 / 2000)
    assert s0["coverage"] == pytest.approx(0.4096) and s1["epochs_end"] == pytest.approx(1.2288)
    assert any("passes over the dataset 1.23 times" in w for w in data["warnings"])
    assert main(["plan", "--config", str(config), "--tokens-per-sec", "2000"]) == 0
    text = capsys.readouterr().out
    assert "timeline of tiny-timeline" in text and "1,280" in text and "41.0s" in text


def test_timeline_from_hardware_uses_flops_per_token(tmp_path):
    cfg = load_config(_write_tiny_config(tmp_path))
    shape = resolve_shape(cfg.model, 512)
    hw = Hardware(gpu=GPUS["h100"], gpus=2, mfu=0.5)
    tl = build_timeline(cfg, shape, hardware=hw)
    for row in tl.stages:
        assert row.tokens_per_sec == pytest.approx(2 * 989e12 * 0.5 / shape.flops_per_token(row.seq_len))


def test_timeline_memory_warns_before_a_stage_would_not_fit(tmp_path, capsys):
    config = _write_tiny_config(tmp_path)
    data = plan_json(capsys, "--config", str(config), "--device-memory", "64MB")
    s0, s1 = data["stages"]
    assert s0["fits"] and 0 < s0["micro_batch"] <= 64 and 64 % s0["micro_batch"] == 0
    assert s0["micro_batch"] * s0["accumulation"] == 64
    assert s0["memory"]["total"] <= 0.9 * 64 * 2**20
    data = plan_json(capsys, "--config", str(config), "--device-memory", "4MB")
    assert data["stages"][1]["fits"] is False
    assert any("does not fit 4.0 MiB even at micro-batch 1" in w for w in data["warnings"])
    # A configured micro-batch that is too large is reported, not silently changed.
    config = _write_tiny_config(tmp_path, micro="micro_batch_size: 64")
    data = plan_json(capsys, "--config", str(config), "--device-memory", "64MB")
    assert data["stages"][0]["micro_batch"] == 64 and data["stages"][1]["micro_batch"] == 32
    assert any("lower train.micro_batch_size" in w for w in data["warnings"])


def test_memory_estimate_components():
    shape = ModelShape(n_layers=2, d_model=64, n_heads=4, vocab_size=1000, max_seq_len=128)
    p = shape.params_total
    est = estimate_memory(shape, 128, 4, "fp32")
    assert (est.weights, est.gradients, est.optimizer) == (4 * p, 4 * p, 8 * p)
    bf16 = estimate_memory(shape, 128, 4, "bf16")
    assert bf16.weights == 4 * p + 2 * (shape.params_non_embedding + 1000 * 64)
    assert estimate_memory(shape, 128, 8, "bf16").activations == 2 * bf16.activations
    assert estimate_memory(shape, 128, 4, "bf16", attention_matrix=True).activations > bf16.activations
    assert largest_fitting_micro_batch(shape, 128, 48, 10**12) == 48
    assert largest_fitting_micro_batch(shape, 128, 48, 10**3) is None
    assert parse_bytes("24GB") == 24 * 2**30 == parse_bytes("24 GiB") and parse_bytes("512MB") == 512 * 2**20


def test_activation_estimate_matches_saved_tensors():
    """The estimate counts what autograd really keeps: compare with the bytes of saved tensors."""
    torch = pytest.importorskip("torch")
    from gradus.model.gpt import GPT
    from gradus.plan.memory import activation_bytes_per_token

    shape = ModelShape(n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=500, max_seq_len=64)
    model = GPT(shape)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    x = torch.randint(0, 500, (4, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, x)
    counted = sum(saved.values()) + 4 * 500 * x.numel()  # + the logits' fp32 gradient at the loss
    assert activation_bytes_per_token(shape, "bf16") * x.numel() == pytest.approx(counted, rel=0.25)


# -------------------------------------------------------------------------------------- measure
def test_measure_stage_throughput_runs_real_steps():
    pytest.importorskip("torch")
    from gradus.train.measure import measure_stage_throughput

    shape = ModelShape(n_layers=1, d_model=32, n_heads=2, vocab_size=128, max_seq_len=64)
    out = measure_stage_throughput(shape, 32, 4, steps=2, warmup=1)
    assert set(out) == {"tokens_per_sec", "step_time_s", "peak_memory_bytes"}
    assert out["tokens_per_sec"] == pytest.approx(4 * 32 / out["step_time_s"])
    assert out["step_time_s"] > 0 and out["peak_memory_bytes"] >= 0
    with pytest.raises(ValueError, match="precision"):
        measure_stage_throughput(shape, 32, 4, precision="fp8")


def test_plan_measure_times_every_stage(tmp_path, capsys):
    config = _write_tiny_config(tmp_path)
    data = plan_json(capsys, "--config", str(config), "--measure", "--measure-steps", "1", "--micro-batch", "4",
                     "--set", "model.n_layers=1")
    assert data["throughput_source"].startswith("measured on cpu (fp32)")
    assert data["precision"] == "fp32" and data["shape"]["n_layers"] == 1
    for row in data["stages"]:
        assert row["micro_batch"] == 4 and row["tokens_per_sec"] > 0 and row["measured_step_time_s"] > 0
        assert row["seconds"] == pytest.approx(row["tokens"] / row["tokens_per_sec"])


@pytest.mark.parametrize(("argv", "needle"), [
    (["--flops", "1e60"], "--flops: a budget of 1e+60 FLOPs is beyond any training run"),
    (["--gpus", "1000000", "--gpu", "h100", "--days", "10000"], "--gpus × --days: a budget of"),
    (["--params", "1.5e12"], "--params 1.5e+12: the planner takes models up to 1e+12"),
    (["--tokens", "1e20"], "--tokens 1e+20: the planner takes up to 1e+15 tokens"),
    (["--flops", "5e26"], "the budget gives N = 2.04e+12 parameters, beyond the 1e+12 (1T)"),
])
def test_budgets_beyond_any_run_are_refused_in_one_line(capsys, argv, needle):
    """1e60 FLOPs planned a 50K-parameter model with a warning, and 10^6 GPUs for 10^4 days wrote a config
    its own schema refused: each is one line now."""
    assert main(["plan", *argv]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and needle in err[0], err
