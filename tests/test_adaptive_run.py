"""An adaptive run end to end on a tiny model (issue 30 §2): it makes its own batch and length decisions, logs them
in decisions.jsonl and metrics.jsonl, accounts for its verification branches, resumes exactly, and replays as a
fixed table (gradus schedule --from-run RUN --write FILE). Pure behaviour is in test_adaptive.py.

One adaptive run (``adaptive_run``, module scope) serves every test; its numbers are read from its own records,
so the tests hold on any data that makes the decisions happen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from builders import TINY_STAGES, tiny_config

from gradus.config import from_dict, load_config
from gradus.curriculum import resolve_schedule, state_at
from gradus.curriculum.adaptive import accepted_edits, adapted_schedule, envelope, stable_phase
from gradus.errors import GradusError
from gradus.train.metrics import read_metrics
from gradus.train.storage.run_dir import RunDir
from gradus.train.trainer import train
from gradus.units import format_count

TPS = 256
TARGET = 64 * TPS  # stages of 32 + 16 + 16 steps at 256 tokens per step


def _raw(offline_data, tokenizer_json) -> dict:
    """s16 (32 steps) / s32 / s64 (16 each) at 256 tokens per step, wsd with a 4-step warmup and a 13-step
    cooldown. The batch rule fires at once (rho tiny) and may double once (to 512, the bound), its branch accepted
    within a wide margin (z 50: a rejection raises rho past any later reading, test_adaptive.py); the length rule
    evaluates every 2 steps and fires when the gain per compute doubling between two evaluations (window 2, no
    noise margin) drops below 0.95 of the stage's first (0.95: so that one decision lands on an evaluation that
    improved the best loss, which the resume-at-a-decision test needs).
    Micro-batches of 4 rows give the noise scale two or more per step in s16 and s32."""
    stages = [dict(s, tokens=n * TPS) for s, n in zip(TINY_STAGES, (32, 16, 16), strict=True)]
    d = tiny_config(offline_data, tokenizer_json, stages=stages)
    d["curriculum"].update(schedule="wsd", global_warmup_fraction=0.05, cooldown_fraction=0.2, adaptive={
        "check_every_tokens": 512,
        "batch": {"enabled": True, "rho": 0.01, "patience": 2, "min_samples": 2, "max_tokens_per_step": 2 * TPS,
                  "verify": {"fraction": 0.05, "z": 50.0}},
        "length": {"threshold": 0.95, "patience": 1, "window": 2, "z": 0.0}})
    d["train"].update(eval_every=2, checkpoint_every=100, early_stopping_patience=None, micro_batch_size=4)
    d["logging"]["log_every"] = 1
    return d


@pytest.fixture(scope="module")
def raw(offline_data, tokenizer_json) -> dict:
    return _raw(offline_data, tokenizer_json)


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory, raw) -> Path:
    """The uninterrupted adaptive run."""
    run = tmp_path_factory.mktemp("adaptive") / "run"
    result = train(from_dict(raw), run, quiet=True)
    assert result.tokens == TARGET, result
    return run


def _steps(run: Path) -> list[tuple]:
    """(step, tokens, loss, tokens per step) of every step record, in order."""
    return [(r["step"], r["tokens"], r["loss"], r["curriculum/tokens_per_step"])
            for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "step" in r]


def _records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "step" in r]


def _events(run: Path, name: str) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == name]


def _accepted(decisions: list[dict], kind: str) -> list[dict]:
    return [d for d in decisions if d["kind"] == kind and d["verdict"] == "accepted"]


def _gradus(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "gradus", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_an_adaptive_run_decides_logs_and_accounts_for_its_branches(adaptive_run):
    decisions = RunDir(adaptive_run).read_decisions()
    batch, length = _accepted(decisions, "batch"), _accepted(decisions, "length")
    assert batch and length, [(d["step"], d["kind"], d["verdict"]) for d in decisions]
    # decisions.jsonl is what the run said, event for event
    events = _events(adaptive_run, "adaptive")
    assert [{k: v for k, v in e.items() if k != "event"} for e in events] == decisions
    assert [d["step"] for d in decisions] == sorted(d["step"] for d in decisions)

    records = _records(adaptive_run)
    steps = {r["step"]: r for r in records}
    assert sorted(steps) == list(range(1, len(records) + 1))
    assert records[-1]["tokens"] == TARGET
    # The main run's token counter moves by its own steps only: the branches' tokens are not in it.
    previous = 0
    for r in records:
        assert r["tokens"] - previous == r["curriculum/tokens_per_step"], r["step"]
        previous = r["tokens"]
    # Tokens per step double from each accepted batch decision's step on (every stage's table has 256).
    for r in records:
        doublings = sum(1 for d in batch if d["step"] < r["step"])
        assert r["curriculum/tokens_per_step"] == TPS * 2 ** doublings, r["step"]
    for d in batch:  # verified, and in effect where the main run was at the window's end
        assert d["edit"] == {"kind": "batch", "tokens": d["tokens"], "factor": 2}
        assert steps[d["step"]]["tokens"] == d["tokens"]
        assert d["proposed_at_step"] < d["step"] and d["comparison"]["branch_loss"] <= (
            d["comparison"]["main_loss"] + d["comparison"]["margin"])
    # A length decision begins the next length at once, before the table's boundary, and never goes back.
    for d in length:
        assert d["tokens"] < d["proposal"]["planned_at_tokens"]
        after = [r["curriculum/current_seq_len"] for r in records if r["step"] > d["step"]]
        assert after[0] == d["proposal"]["seq_len"] > steps[d["step"]]["curriculum/current_seq_len"]
        assert after == sorted(after)
    # The branches' tokens are reported: the step records' total is the verifications' sum, and each branch event's.
    verified = [d for d in decisions if d["kind"] == "batch" and d["verdict"] in ("accepted", "rejected")]
    branches = _events(adaptive_run, "adaptive/branch")
    assert len(branches) == len(verified) >= 1
    spent = sum(d["comparison"]["branch_tokens"] for d in verified)
    assert spent == sum(b["until_tokens"] - b["tokens"] for b in branches) > 0
    assert all(b["branch_steps"] * 2 * TPS == b["until_tokens"] - b["tokens"] for b in branches)
    assert records[-1]["adaptive/branch_tokens"] == spent
    # Each verdict compares held-out losses at the window's end: where that step was evaluated too, the main side is
    # the evaluation's loss at the stage's length.
    evals = {r["step"]: r for r in read_metrics(adaptive_run / "metrics.jsonl") if "val/loss" in r}
    compared = 0
    for d in verified:
        cmp = d["comparison"]
        assert cmp["held_out_rows"] >= 2 and cmp["held_out_seq_len"] == steps[d["step"]]["curriculum/current_seq_len"]
        assert cmp["branch_loss"] <= cmp["main_loss"] + cmp["margin"] if d["verdict"] == "accepted" else True
        if d["step"] in evals:
            e = evals[d["step"]]
            own = e.get("val/stage_loss", e["val/loss"]) if e.get("val/stage_seq_len") else e["val/loss"]
            assert cmp["main_loss"] == pytest.approx(own, abs=1e-6)
            compared += 1
    assert compared >= 1, [d["step"] for d in verified]
    assert records[-1]["adaptive/edits"] == len(batch) + len(length)
    # Each step's threshold for the report: rho (as raised by each rejection so far) × its tokens per step.
    rhos = [decisions[0]["signal"]["rho"]] + [d["comparison"]["rho_from_now"] for d in verified
                                              if d["verdict"] == "rejected"]
    for r in records:
        ratio = r["adaptive/batch_threshold"] / r["curriculum/tokens_per_step"]
        assert any(ratio == pytest.approx(rho) for rho in rhos), (r["step"], ratio, rhos)
    for r in records:  # and as they happen: a step's record is written before its decisions, so a branch counts
        assert r["adaptive/branch_tokens"] == sum(b["until_tokens"] - b["tokens"] for b in branches  # from the next
                                                  if b["step"] < r["step"]), r["step"]


def _window_and_decision(run: Path) -> tuple[int, int, int]:
    """(first step of a verification window, its last step, the first accepted decision's step) of the run."""
    branch = _events(run, "adaptive/branch")[0]
    end = next(r["step"] for r in _records(run) if r["tokens"] == branch["until_tokens"])
    decision = next(d["step"] for d in RunDir(run).read_decisions() if d.get("edit"))
    return branch["step"], end, decision


def test_a_run_stopped_inside_a_window_and_after_a_decision_resumes_exactly(tmp_path, adaptive_run, raw):
    start, end, decided = _window_and_decision(adaptive_run)
    # Odd steps: no evaluation there (eval_every 2), whose best-checkpoint save would hide the bug the next test shows.
    odd = [s for s in range(start + 1, end) if s % 2]
    inside = odd[len(odd) // 2]
    after = decided + 1 if (decided + 1) % 2 else decided + 2  # right after the first accepted decision
    assert start < inside < end and after != inside
    stops = sorted({inside, after})
    assert len(stops) == 2
    run = tmp_path / "split"
    for stop in stops:
        assert train(from_dict(raw), run, quiet=True, stop_at_step=stop).step == stop
    assert train(from_dict(raw), run, quiet=True).tokens == TARGET
    assert _steps(run) == _steps(adaptive_run)
    assert (run / "decisions.jsonl").read_bytes() == (adaptive_run / "decisions.jsonl").read_bytes()


def test_a_run_stopped_at_the_step_of_a_decision_resumes_exactly(tmp_path, adaptive_run, raw):
    evals = [(r["step"], r["val/loss"]) for r in read_metrics(adaptive_run / "metrics.jsonl") if "val/loss" in r]
    decided = [d["step"] for d in RunDir(adaptive_run).read_decisions() if d.get("edit")]
    # a decision taken at an evaluation that improved the best loss (so save_best wrote that step's checkpoint)
    best = [s for s, loss in evals if loss < min((v for t, v in evals if t < s), default=float("inf"))]
    steps = [s for s in decided if s in best]
    if not steps:
        pytest.skip(f"no decision at an improving evaluation on this data (decisions {decided}, improving {best})")
    stop = steps[0]
    run = tmp_path / "split"
    assert train(from_dict(raw), run, quiet=True, stop_at_step=stop).step == stop
    assert train(from_dict(raw), run, quiet=True, stop_at_step=stop + 1).step == stop + 1
    assert _steps(run) == _steps(adaptive_run)[:stop + 1]
    expected = [d for d in RunDir(adaptive_run).read_decisions() if d["step"] <= stop + 1]
    assert RunDir(run).read_decisions() == expected


def test_the_run_replays_as_a_fixed_table_bit_for_bit(tmp_path, adaptive_run):
    fixed = tmp_path / "fixed.yaml"
    proc = _gradus("schedule", "--from-run", str(adaptive_run), "--write", str(fixed), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {fixed}" in proc.stdout
    written = yaml.safe_load(fixed.read_text(encoding="utf-8"))
    assert written["curriculum"].get("adaptive") is None
    decisions = RunDir(adaptive_run).read_decisions()
    edits = accepted_edits(decisions)
    assert len(edits) >= 2
    assert f"({len(edits)} of its {len(decisions)} decisions applied)" in proc.stdout
    cfg = load_config(fixed)
    run_cfg = load_config(RunDir(adaptive_run).config)
    assert resolve_schedule(cfg).stages == adapted_schedule(run_cfg, edits).stages
    replay = tmp_path / "replay"
    assert train(cfg, replay, quiet=True).tokens == TARGET
    ours, theirs = _steps(replay), _steps(adaptive_run)
    assert [s[:2] + s[3:] for s in ours] == [s[:2] + s[3:] for s in theirs]  # the same steps and shapes
    assert [s[2] for s in ours] == [s[2] for s in theirs]  # and the same losses, compared with ==
    assert not (replay / "decisions.jsonl").exists() and not _events(replay, "adaptive")


def test_gradus_schedule_prints_an_adaptive_configs_envelope(tmp_path, raw):
    config = tmp_path / "adaptive.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    proc = _gradus("schedule", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("adaptive: "))
    assert any(ln.startswith("2  s64") for ln in lines[:start])  # below the fallback table
    head, batch, length = lines[start:start + 3]
    assert "the stage table is the fallback" in head and "checks every 512 tokens" in head
    cfg = from_dict(raw)
    base = resolve_schedule(cfg)
    first, last = stable_phase(base)
    assert (first, last) == (4 * TPS, 51 * TPS)  # after 4 warmup steps, before the last 13
    shapes = envelope(cfg, base)
    assert len(shapes) == 6  # each length at 256 and 512 tokens per step
    for part in ("batch: tokens/step × 2 when B_simple > 0.01 × tokens/step for 2 checks in a row", "LR × 2^0.5",
                 "up to 512 tokens/step", f"between {format_count(first)} and {format_count(last)} tokens",
                 "verified by a branch of 0.05 of the run, accepted within 50 standard errors of the main run on held-out "
                 "rows at the window's end",
                 "a rejection raises rho to twice the noise scale's reading there",
                 "6 shapes prepared at start-up"):
        assert part in batch, (part, batch)
    for part in ("length: ladder 16 → 32 → 64", "(fitted over 2 evaluations) stays below 0.95 of the stage's first for 1 evaluations in a row",
                 "never later than the table, never shorter"):
        assert part in length, (part, length)


def test_write_with_a_config_writes_it_resolved_and_never_overwrites(tmp_path, raw):
    """``gradus schedule CONFIG --write FILE``: the resolved config (every field), which loads back as the same
    config; an existing FILE is refused in one line and left as it was."""
    from gradus.config import load_config

    config = tmp_path / "adaptive.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "mine.yaml"
    proc = _gradus("schedule", str(config), "--write", str(out), "--set", "optim.base_lr=0.002", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}: edit it" in proc.stdout
    assert load_config(out) == load_config(config, ["optim.base_lr=0.002"])
    out.write_text("mine\n", encoding="utf-8")
    proc = _gradus("schedule", str(config), "--write", str(out), cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "the file exists" in lines[0], proc.stderr
    assert out.read_text(encoding="utf-8") == "mine\n"


def test_write_with_a_preset_copies_it_with_its_comments(tmp_path):
    from gradus.presets import preset_path

    out = tmp_path / "ramp.yaml"
    proc = _gradus("schedule", "--preset", "demo-ramp", "--write", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == preset_path("demo-ramp").read_text(encoding="utf-8")


def test_a_branch_step_trains_the_main_runs_next_batches_joined(raw):
    """The verification branch's doubled step is the main run's next two batches, rows in order: the branch and
    the main run compare losses on the same documents (with lanes, a doubled batch drawn on its own opens new
    lanes and shares about a quarter of its text with the main run's window)."""
    import numpy as np

    from gradus.data import DataPipeline, load_tokenizer
    from gradus.data.pipeline import branch_batch

    cfg = from_dict(raw)
    schedule = resolve_schedule(cfg)
    tok = load_tokenizer(cfg.data)

    def pipe():
        return DataPipeline(cfg.data, tok, schedule, seed=cfg.train.seed, prefetch=0)

    main, branch = pipe(), pipe()
    for step in range(5):  # both at step 5 (1,280 tokens)
        for p in (main, branch):
            p.next_batch(state_at(schedule, step, step * TPS))
    first = main.next_batch(state_at(schedule, 5, 5 * TPS))
    second = main.next_batch(state_at(schedule, 6, 6 * TPS))
    joined, after = branch_batch(branch, schedule, 5, 5 * TPS, 2 * TPS)
    assert after == 7 and joined.rows == first.rows + second.rows
    assert np.array_equal(joined.inputs, np.concatenate([first.inputs, second.inputs]))
    assert np.array_equal(joined.labels, np.concatenate([first.labels, second.labels]))
    with pytest.raises(GradusError, match="not a whole number of the main run's steps"):
        branch_batch(branch, schedule, 7, 7 * TPS, TPS + TPS // 2)


def test_a_batch_check_at_a_stages_last_step_is_skipped_and_the_run_ends(tmp_path, offline_data, tokenizer_json):
    # s16 at 256 tokens per step to 4,096, then s32 and s64 at 512, the bound 512; a check every 4,096 tokens falls
    # on s16's last step with the noise scale far above rho. Doubled there, the run went on in s32 at 1,024 tokens
    # per step, a shape nothing had prepared, and stopped on a KeyError: it now skips that check and runs through.
    stages = [dict(TINY_STAGES[0], tokens=16 * 256),
              dict(TINY_STAGES[1], tokens=8 * 512, tokens_per_batch=512),
              dict(TINY_STAGES[2], tokens=8 * 512, tokens_per_batch=512)]
    d = tiny_config(offline_data, tokenizer_json, stages=stages)
    d["curriculum"].update(schedule="wsd", global_warmup_fraction=0.05, cooldown_fraction=0.2, adaptive={
        "check_every_tokens": 4096,
        "batch": {"enabled": True, "rho": 1e-6, "patience": 1, "min_samples": 1, "max_tokens_per_step": 512,
                  "verify": {"enabled": False}},
        "length": {"enabled": False}})
    d["train"].update(eval_every=100, checkpoint_every=100, early_stopping_patience=None, micro_batch_size=4)
    result = train(from_dict(d), tmp_path / "run", quiet=True)
    records = RunDir(tmp_path / "run").read_decisions()
    assert [(r["verdict"], r["tokens"], r["reason"]) for r in records] == [
        ("skipped", 4096, "the stage ends here, and a doubling would apply to the next one"),
        ("skipped", 8192, "1,024 tokens per step would pass max_tokens_per_step 512")]
    assert (result.tokens, result.step) == (12_288, 32) and result.reason.startswith("reached")


def test_a_branch_snapshot_copies_plain_tensors_to_the_host_and_keeps_subclasses_where_they_are():
    import torch

    from gradus.train.trainer import _host_copy

    class Wrapped(torch.Tensor):  # stands for a DTensor shard or a float8 weight wrapper
        pass

    weight, shard = torch.ones(3), torch.zeros(2).as_subclass(Wrapped)
    state = {"state": {0: {"step": torch.tensor(5.0), "exp_avg": weight}}, "param_groups": [{"lr": 1e-3, "params": [0]}],
             "shard": shard}
    copied = _host_copy(state)
    weight.add_(1)
    shard.add_(1)
    assert copied["state"][0]["exp_avg"].tolist() == [1.0, 1.0, 1.0] and copied["state"][0]["exp_avg"].device.type == "cpu"
    assert type(copied["shard"]) is Wrapped and copied["shard"].tolist() == [0.0, 0.0]
    assert copied["param_groups"] == [{"lr": 1e-3, "params": [0]}] and copied["state"][0]["step"].item() == 5.0
