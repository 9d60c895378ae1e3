"""The trainer end to end on tiny models and the generated corpora (CPU)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from builders import tiny_config
from safetensors.torch import load_file

from gradus.cli import main
from gradus.config import from_dict
from gradus.curriculum import lr_at, resolve_schedule, stage_of_step
from gradus.data import load_tokenizer
from gradus.train import evaluate as evaluate_mod
from gradus.train import micro_batch as micro_batch_mod
from gradus.train import trainer as trainer_mod
from gradus.train.metrics import losses_by_step, read_metrics
from gradus.train.trainer import train

TOTAL_STEPS = 16


def raw_config(tok: str | None, shared: Path, **train) -> dict:
    """The shared tiny config with this file's loop settings (log every step, eval every 5, ...)."""
    cfg = tiny_config(shared, tok)
    cfg["train"].update({"eval_every": 5, "checkpoint_every": 4, "early_stopping_patience": None, **train})
    cfg["logging"]["log_every"] = 1
    return cfg


def weights(run: Path) -> dict[str, torch.Tensor]:
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    return load_file(str(ckpts[-1] / "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tokenizer_json, offline_data) -> Path:
    """One uninterrupted run that other tests compare against."""
    run = tmp_path_factory.mktemp("full")
    result = train(from_dict(raw_config(tokenizer_json, offline_data)), run, quiet=True)
    assert result.step == TOTAL_STEPS
    return run


def test_every_step_has_its_stage_shape(full_run, tokenizer_json, offline_data):
    cfg = from_dict(raw_config(tokenizer_json, offline_data))
    plan = resolve_schedule(cfg)
    records = [r for r in read_metrics(full_run / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
    for r in records:
        stage = plan.stages[stage_of_step(plan, r["step"] - 1)]
        assert r["curriculum/current_seq_len"] == stage.seq_len
        assert r["curriculum/current_batch_size"] == stage.batch_size == 256 // stage.seq_len
        assert r["curriculum/tokens_per_step"] == 256
        assert r["curriculum/stage"] == stage.index
        assert math.isfinite(r["loss"]) and r["tokens_per_sec"] > 0
        assert r["lr"] == pytest.approx(lr_at(plan, r["step"] - 1))
    assert records[-1]["tokens"] == 16 * 256
    # The batch really changed: 16, 8, 4 examples per step.
    assert sorted({r["curriculum/current_batch_size"] for r in records}) == [4, 8, 16]
    stage_events = [r for r in read_metrics(full_run / "metrics.jsonl") if r.get("event") == "stage"]
    assert [(e["step"], e["seq_len"]) for e in stage_events] == [(0, 16), (6, 32), (11, 64)]


def test_evaluates_at_stage_changes_and_reference_length(full_run):
    evals = [r for r in read_metrics(full_run / "metrics.jsonl") if "val/loss" in r]
    steps = [r["step"] for r in evals]
    assert {6, 11, 16} <= set(steps) and 5 in steps and 10 in steps  # stage ends and every eval_every
    for r in evals:
        assert r["val/seq_len"] == 64  # the longest stage's length by default
        assert r["val/ppl"] == pytest.approx(math.exp(r["val/loss"]))
        assert 0 <= r["val/accuracy"] <= 1
    by_step = {r["step"]: r for r in evals}
    assert by_step[6]["val/stage_seq_len"] == 16 and by_step[11]["val/stage_seq_len"] == 32
    assert by_step[16]["val/loss"] < by_step[5]["val/loss"]  # it learns
    best = json.loads((full_run / "checkpoints" / "best" / "meta.json").read_text())
    assert best["best_val_loss"] == pytest.approx(min(r["val/loss"] for r in evals))


@pytest.mark.parametrize("stop", [3, 6], ids=["inside-stage", "at-boundary"])
def test_resume_repeats_uninterrupted_run_bit_for_bit(stop, full_run, tmp_path, tokenizer_json, offline_data):
    cfg = from_dict(raw_config(tokenizer_json, offline_data))
    first = train(cfg, tmp_path, quiet=True, stop_at_step=stop)
    assert first.step == stop
    second = train(cfg, tmp_path, quiet=True)
    assert second.step == TOTAL_STEPS
    expected = losses_by_step(full_run / "metrics.jsonl")
    got = losses_by_step(tmp_path / "metrics.jsonl")
    assert got == expected  # exact float equality, every step
    a, b = weights(full_run), weights(tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The data thread, started during set-up for the state resumed at, made what the first step asked for.
    rewinds = [r["data/rewinds"] for r in read_metrics(tmp_path / "metrics.jsonl") if "data/rewinds" in r]
    assert rewinds and set(rewinds) == {0.0}


OLD_PAYLOAD_KEYS = ["progress", "data", "guard", "rng", "scaler", "world_size"]
"""state.pt as every gradus wrote it before the parts were Stateful (trainer.py, ``_save_checkpoint``)."""
OLD_PROGRESS_KEYS = ["step", "tokens", "train_seconds", "best_val_loss", "evals_since_best", "last_checkpoint_tokens"]


def test_a_checkpoint_in_the_old_payload_layout_resumes_bit_for_bit(full_run, tmp_path, tokenizer_json,
                                                                    offline_data):
    cfg = from_dict(raw_config(tokenizer_json, offline_data))
    train(cfg, tmp_path, quiet=True, stop_at_step=3)
    (latest,) = sorted((tmp_path / "checkpoints").glob("step_*"))[-1:]
    written = torch.load(latest / "state.pt", weights_only=False)
    # Progress has since gained recent_val_losses (the flat-curve test), after the old keys.
    # The noise scale's averages ("gns") came later still; a checkpoint without them starts them afresh.
    assert [k for k in written if k != "gns"] == OLD_PAYLOAD_KEYS and "gns" in written
    assert list(written["progress"])[: len(OLD_PROGRESS_KEYS)] == OLD_PROGRESS_KEYS
    # Rewrite it exactly as the old code built it: the progress counters as a plain dict (the trainer's
    # __dict__), one RNG dict for a single process, no scaler, the world size.
    old = {
        "progress": {key: written["progress"][key] for key in OLD_PROGRESS_KEYS},
        "data": written["data"],
        "guard": written["guard"],
        "rng": {k: written["rng"][k] for k in ("python", "numpy", "torch", "cuda") if k in written["rng"]},
        "scaler": None,
        "world_size": 1,
    }
    torch.save(old, latest / "state.pt")
    assert train(cfg, tmp_path, quiet=True).step == TOTAL_STEPS
    assert losses_by_step(tmp_path / "metrics.jsonl") == losses_by_step(full_run / "metrics.jsonl")
    a, b = weights(full_run), weights(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_missing_a_part_is_refused_in_one_line(tmp_path, tokenizer_json, offline_data, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(raw_config(tokenizer_json, offline_data)))
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(run), "--quiet", "--stop-at-step", "2"]) == 0
    (latest,) = sorted((run / "checkpoints").glob("step_*"))
    state = torch.load(latest / "state.pt", weights_only=False)
    del state["guard"]
    torch.save(state, latest / "state.pt")
    assert main(["train", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"gradus: error: {latest}/state.pt has no guard state: it was not written by this gradus; "
                   f"start a new run with another --out\n")


def test_on_step_reports_every_step_as_it_is_logged(full_run, tmp_path, tokenizer_json, offline_data):
    reports = []
    result = train(from_dict(raw_config(tokenizer_json, offline_data)), tmp_path, quiet=True, on_step=reports.append)
    assert [r.step for r in reports] == list(range(1, TOTAL_STEPS + 1))
    logged = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r and "event" not in r}
    for r in reports:
        assert r.record == logged[r.step]  # log_every=1: the very record written
        assert r.stage_index == r.record["curriculum/stage"] and r.tokens == r.record["tokens"] == 256 * r.step
        assert r.loss == r.record["loss"] and r.tokens_per_step == 256 and r.seconds > 0
    # The stage of the next step: stages change after steps 6 and 11; nothing follows the last step.
    assert [r.next_stage_index for r in reports] == [0] * 5 + [1] * 5 + [2] * 5 + [None]
    # Evaluation (every 5 steps and at stage ends) and checkpoints (every 4, stage ends) are reported aside.
    aside = [r.step for r in reports if r.aside_seconds > 0]
    assert aside == [4, 5, 6, 8, 10, 11, 12, 15, 16]
    assert sum(r.seconds for r in reports) == result.train_seconds
    # Watching changes nothing: the same losses as the unwatched run.
    assert losses_by_step(tmp_path / "metrics.jsonl") == losses_by_step(full_run / "metrics.jsonl")


def test_config_change_on_resume_is_refused(tmp_path, tokenizer_json, offline_data, capsys):
    cfg = raw_config(tokenizer_json, offline_data)
    train(from_dict(cfg), tmp_path, quiet=True, stop_at_step=2)
    cfg["curriculum"]["stages"][1]["seq_len"] = 16
    path = tmp_path / "changed.yaml"
    path.write_text(json.dumps(cfg))
    code = main(["train", str(path), "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot continue this run" in err and "stages[1] seq_len 32 → 16" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert main(["train", str(path), "--out", str(tmp_path), "--quiet", "--allow-config-change"]) == 0


def test_a_data_change_that_moves_the_saved_positions_is_refused_on_resume(tmp_path, tokenizer_json, offline_data,
                                                                           capsys):
    # Another held-out fraction trains on documents the run held out (and evaluates on ones it trained); another
    # template reads every saved position as other text. The files' paths may move.
    cfg = raw_config(tokenizer_json, offline_data)
    train(from_dict(cfg), tmp_path, quiet=True, stop_at_step=2)
    fraction = from_dict(cfg).data.validation.fraction
    cfg["data"]["validation"] = {**cfg["data"].get("validation", {}), "fraction": 0.2}
    path = tmp_path / "changed.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["train", str(path), "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"data.validation.fraction {fraction} → 0.2 (held-out documents would be trained on" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_checkpoint_written_before_the_data_signature_resumes_as_before():
    from gradus.train.storage.checkpoint import describe_incompatibility

    sig = {"world_size": 1, "tokenizer_sha256": "x", "target_tokens": None, "stages": []}
    data = {"sources": {"wiki": {"template": None}}, "validation_fraction": 0.005,
            "packing": {"stride": None, "stride_fraction": None, "remainder": "drop"}}
    assert describe_incompatibility(sig, {**sig, "data": data}) == []
    changed = {**data, "sources": {"wiki": {"template": "{text}"}}}
    assert describe_incompatibility({**sig, "data": data}, {**sig, "data": changed}) == [
        "data.sources[wiki].template None → '{text}'"]


def test_a_stage_that_changed_kind_is_a_change_unless_the_checkpoint_predates_kinds():
    from gradus.train.storage.checkpoint import describe_incompatibility

    stage = {"seq_len": 64, "batch_size": 4, "start_step": 0, "end_step": 10}
    sig = {"world_size": 1, "tokenizer_sha256": "x", "target_tokens": None}
    now = {**sig, "stages": [{**stage, "kind": "sft"}]}
    assert describe_incompatibility({**sig, "stages": [{**stage, "kind": "pretrain"}]}, now) == [
        "curriculum.stages[0] kind pretrain → sft"]
    assert describe_incompatibility({**sig, "stages": [stage]}, now) == []  # written before kinds were recorded


def test_corrupt_checkpoint_is_one_line_and_untouched(tmp_path, tokenizer_json, offline_data, capsys):
    cfg = from_dict(raw_config(tokenizer_json, offline_data))
    train(cfg, tmp_path, quiet=True, stop_at_step=4)
    latest = sorted((tmp_path / "checkpoints").glob("step_*"))[-1]
    (latest / "model.safetensors").write_bytes(b"\x00" * 100)
    before = sorted(p.name for p in (tmp_path / "checkpoints").rglob("*"))
    assert main(["train", "--out", str(tmp_path), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("gradus: error: ") and "model.safetensors is corrupt" in err and err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").rglob("*")) == before


def test_unwritable_output_directory(tmp_path, tokenizer_json, offline_data, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(raw_config(tokenizer_json, offline_data)))
    assert main(["train", str(cfg_path), "--out", str(blocker / "run"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "cannot write to the output directory" in err and "Traceback" not in err


def test_nan_steps_are_skipped_then_rolled_back(tmp_path, tokenizer_json, offline_data, monkeypatch):
    real = trainer_mod.Trainer._train_step
    poisoned = {9, 10, 11}  # three non-finite steps in a row after the step-8 checkpoint
    seen: list[int] = []

    def step(self, state, batch):
        (loss, norm, applied), noise = real(self, state, batch)  # (the step's figures, its noise-scale sample)
        seen.append(state.step)
        if state.step in poisoned and seen.count(state.step) == 1:
            return (float("nan"), norm, False), noise
        return (loss, norm, applied), noise

    monkeypatch.setattr(trainer_mod.Trainer, "_train_step", step)
    result = train(from_dict(raw_config(tokenizer_json, offline_data)), tmp_path, quiet=True)
    assert result.step == TOTAL_STEPS
    events = [(r["event"], r["step"]) for r in read_metrics(tmp_path / "metrics.jsonl")
              if str(r.get("event", "")).startswith("guard/")]
    assert events == [("guard/skip", 9), ("guard/skip", 10), ("guard/rollback", 11)]
    assert seen.count(8) == 2  # step 8 ran again after rolling back to the step-8 checkpoint
    # The redone steps replaced their first records: every reader sees each step once (issue 31), and the
    # rollback itself is an event.
    records = read_metrics(tmp_path / "metrics.jsonl")
    steps = [r["step"] for r in records if "loss" in r and "event" not in r]
    assert steps == list(range(1, TOTAL_STEPS + 1))
    assert [(r["step"], r["checkpoint"], r["bad_step"]) for r in records if r.get("event") == "rollback"] == [
        (8, "step_00000008", 11)]
    lrs = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl") if "lr" in r and "event" not in r}
    assert lrs[TOTAL_STEPS]["guard/lr_factor"] == 0.5
    assert lrs[TOTAL_STEPS]["lr"] == pytest.approx(0.5 * lrs[TOTAL_STEPS]["lr_scheduled"])


def test_early_stopping_keeps_best(tmp_path, tokenizer_json, offline_data, monkeypatch):
    fake = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8])

    def scripted(model, batches, device, autocast):
        loss = next(fake)
        return {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.1, "tokens": 10}

    monkeypatch.setattr(evaluate_mod, "evaluate", scripted)
    raw = raw_config(tokenizer_json, offline_data, eval_every=2, early_stopping_patience=2, eval_at_stage_change=False,
                     eval_reference_seq_len=16)
    result = train(from_dict(raw), tmp_path, quiet=True)
    assert result.reason.startswith("early stopping") and result.step == 8
    assert result.best_val_loss == 4.0
    assert json.loads((tmp_path / "checkpoints" / "best" / "meta.json").read_text())["step"] == 4


def test_save_best_false_writes_no_checkpoint_at_an_improved_evaluation(tmp_path, tokenizer_json, offline_data,
                                                                         monkeypatch):
    fake = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8])
    monkeypatch.setattr(evaluate_mod, "evaluate", lambda *a: {"loss": (x := next(fake)), "ppl": math.exp(x),
                                                               "accuracy": 0.1, "tokens": 10})
    raw = raw_config(tokenizer_json, offline_data, eval_every=2, early_stopping_patience=2, eval_at_stage_change=False,
                     eval_reference_seq_len=16, save_best=False, checkpoint_every=None)
    result = train(from_dict(raw), tmp_path, quiet=True)
    # Early stopping still follows the best loss; the only checkpoints are the stage end (6) and the stop (8).
    assert result.reason.startswith("early stopping") and result.step == 8 and result.best_val_loss == 4.0
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["step_00000006", "step_00000008"]


def test_sigterm_saves_and_exits_cleanly(tmp_path, tokenizer_json, offline_data):
    raw = raw_config(tokenizer_json, offline_data)
    for s in raw["curriculum"]["stages"]:
        s["tokens"] *= 40  # long enough to be interrupted
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(raw))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gradus.cli", "train", str(cfg_path), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = run / "metrics.jsonl"
        if m.is_file() and sum(1 for r in read_metrics(m) if "loss" in r) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped by SIGTERM" in out
    meta = json.loads((sorted((run / "checkpoints").glob("step_*"))[-1] / "meta.json").read_text())
    assert 3 <= meta["step"] < 16 * 40


def test_sigterm_during_set_up_is_said_and_exits_as_ctrl_c(tmp_path):
    """Before the training loop installs its own handler (set-up trains the demo's BPE for seconds), SIGTERM
    used to kill the process silently (rc -15): it now stops like Ctrl-C, with one line and exit 130."""
    env = {**os.environ, "GRADUS_CACHE_DIR": str(tmp_path / "cache")}  # an empty cache: the BPE is trained
    proc = subprocess.Popen([sys.executable, "-m", "gradus.cli", "train", "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:  # until the CLI's handler is in place (SigCgt's bit 15: SIGTERM is caught)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "gradus: interrupted by SIGTERM; to continue, run the same command again"
    assert "Traceback" not in err


def test_demo_runs_offline_through_four_stages(tmp_path, capsys):
    # The embedded default, shortened: two steps per stage (the budgets are 4096 tokens per step).
    sets = [f"curriculum.stages[{i}].tokens=8192" for i in range(4)]
    args = ["train", "--out", str(tmp_path), "--set", "curriculum.target_tokens=32768", "--set", "train.eval_every=4",
            "--set", "logging.log_every=1", "--set", "train.threads=1"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"run directory: {tmp_path}" in out
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert [r["curriculum/current_seq_len"] for r in records[1::2]] == [32, 64, 128, 256]
    assert {r["curriculum/current_batch_size"] for r in records} == {128, 64, 32, 16}
    assert (tmp_path / "checkpoints" / "best" / "model.safetensors").is_file()
    # A finished run writes its report and says what to do next (issue 31: the user's first week).
    assert f"report: {tmp_path / 'report' / 'report.html'} (" in out
    assert (tmp_path / "report" / "loss_tokens.png").is_file()
    for command in ("generate", "eval", "export"):
        assert f"gradus {command} {tmp_path} " in out


_LEAVES_NO_GLOO_THREAD = """
import json, os, sys
from gradus.config import load_config
from gradus.train.trainer import train

def gloo_threads():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{tid}/comm").read().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    return sorted(n for n in names if "gloo" in n)

train(load_config(sys.argv[1]), sys.argv[2], quiet=True)
# One write of the whole line: under PYTHONUNBUFFERED, print() writes the text and its newline apart, and the
# two ranks' lines on the shared pipe came out as "{...}{...}\\n\\n".
sys.stdout.write(json.dumps({"rank": int(os.environ["RANK"]), "gloo_threads": gloo_threads()}) + "\\n")
sys.stdout.flush()
"""  # and the interpreter finalises as usual: no os._exit


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process's threads from /proc")
def test_a_two_process_run_leaves_no_gloo_thread_behind(tmp_path, tokenizer_json, offline_data):
    """The intermittent abort at exit of a two-process run ("terminate called without an active exception",
    exit -6) came from gloo's worker threads outliving destroy_process_group: DDP's reducer still held the
    group, and torch._dynamo, imported by DDP while the group existed, kept a reference for good. A worker
    freeing a finished collective's tensors then needed the GIL while the interpreter finalised. Now train()
    releases the parts before leaving the group and dynamo is imported before joining, so the group is
    destroyed and its threads joined when train() returns, and a script's ordinary exit is safe."""
    raw = raw_config(tokenizer_json, offline_data)
    raw["curriculum"]["stages"] = raw["curriculum"]["stages"][:1]
    (tmp_path / "c.yaml").write_text(json.dumps(raw))
    (tmp_path / "script.py").write_text(_LEAVES_NO_GLOO_THREAD)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "script.py"), str(tmp_path / "c.yaml"), str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                 key=lambda r: r["rank"])
    assert got == [{"rank": 0, "gloo_threads": []}, {"rank": 1, "gloo_threads": []}]


def test_long_context_stage_switches_rope_scaling(tmp_path, tokenizer_json, offline_data, monkeypatch):
    raw = raw_config(tokenizer_json, offline_data)
    raw["curriculum"]["stages"][2]["rope_scaling"] = 4.0
    seen: dict[int, float] = {}
    real = trainer_mod.Trainer._train_step

    def spy(self, state, batch):
        out = real(self, state, batch)
        seen[state.step] = self.parts.model.shape.rope_scaling
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "_train_step", spy)
    train(from_dict(raw), tmp_path, quiet=True)
    assert [seen[s] for s in (0, 10, 11, 15)] == [1.0, 1.0, 4.0, 4.0]


def test_bf16_autocast_trains_on_cpu(tmp_path, tokenizer_json, offline_data):
    raw = raw_config(tokenizer_json, offline_data, precision="bf16")
    raw["curriculum"]["stages"] = raw["curriculum"]["stages"][:1]
    result = train(from_dict(raw), tmp_path, quiet=True)
    losses = losses_by_step(tmp_path / "metrics.jsonl")
    assert result.step == 6 and all(math.isfinite(v) for v in losses.values())
    assert losses[6] < losses[1]


def test_fp16_without_cuda_is_a_config_error(tmp_path, tokenizer_json, offline_data, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(raw_config(tokenizer_json, offline_data, precision="fp16")))
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradus: error: train.precision=fp16 needs a CUDA device") and err.count("\n") == 1


def test_cuda_probe_halves_on_oom_and_holds_adamw_moments_aside(tmp_path, tokenizer_json, offline_data, monkeypatch):
    # The probe runs on CUDA only; here its CUDA calls are no-ops and the "GPU" holds 4 rows of 16 tokens
    # next to AdamW's moments: a forward at more rows, or without the moments' bytes held, must not count.
    trainer = trainer_mod.Trainer(from_dict(raw_config(tokenizer_json, offline_data)), tmp_path, resume=False,
                                  quiet=True)
    try:
        trainer.setup()
        for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
            monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
        moments = 2 * 4 * sum(p.numel() for p in trainer.parts.model.parameters())
        held: list[int] = []
        real_empty = torch.empty

        def empty(*size, **kw):
            t = real_empty(*size, **kw)
            if kw.get("dtype") is torch.uint8:
                held.append(t.numel())
            return t

        monkeypatch.setattr(torch, "empty", empty)
        real_net, tried = trainer.parts.net, []  # the probe runs the run's module; here a stand-in for it

        def net(x, y):
            tried.append(x.shape[0])
            if x.shape[0] > 4 or sum(held) < moments:
                raise torch.OutOfMemoryError("fake: CUDA out of memory")
            return real_net(x, y)

        def probe(seq_len: int, micro: int) -> int | None:
            return micro_batch_mod.probe_micro_batch(net, trainer.parts.optimizer, trainer.rt, trainer.parts.shape.vocab_size,
                                                     seq_len, micro)

        assert probe(16, 16) == 4
        assert tried == [16, 8, 4] and held == [moments] * 3
        assert all(p.grad is None for p in trainer.parts.model.parameters())  # nothing left behind
        held.clear()
        trainer.parts.optimizer.state[next(trainer.parts.model.parameters())] = {"step": torch.tensor(1.0)}  # moments exist
        assert probe(16, 2) is None and held == []  # nothing held aside: fails for lack of the bytes
    finally:
        trainer.close()


def test_cpu_micro_batch_follows_the_hosts_free_memory(tmp_path, tokenizer_json, offline_data, monkeypatch, full_run):
    # A host with room for the model and 3 rows of the longest stage: that stage accumulates over smaller
    # micro-batches, and the run matches the whole-batch one up to float rounding.
    from gradus.plan.memory import HEADROOM, estimate_memory
    from gradus.sizes import resolve_shape

    cfg = from_dict(raw_config(tokenizer_json, offline_data))
    shape = resolve_shape(cfg.model, load_tokenizer(cfg.data).vocab_size)
    longest = max(resolve_schedule(cfg).stages, key=lambda s: s.seq_len)
    one = estimate_memory(shape, longest.seq_len, 1, "fp32")
    budget = int((one.total + 2 * one.activations) / HEADROOM)
    monkeypatch.setattr(micro_batch_mod, "host_memory_budget", lambda: budget)
    train(cfg, tmp_path, quiet=True)
    micro = {r["curriculum/current_seq_len"]: r["curriculum/micro_batch_size"]
             for r in read_metrics(tmp_path / "metrics.jsonl") if "curriculum/micro_batch_size" in r}
    assert micro[longest.seq_len] == 2 < longest.batch_size  # the largest divisor of the batch within 3 rows
    ours, whole = losses_by_step(tmp_path / "metrics.jsonl"), losses_by_step(full_run / "metrics.jsonl")
    assert ours.keys() == whole.keys()
    assert all(abs(ours[k] - whole[k]) < 1e-4 for k in ours)


def test_a_stage_that_cannot_fit_the_hosts_memory_is_a_one_line_error(tmp_path, tokenizer_json, offline_data,
                                                                    monkeypatch, capsys):
    monkeypatch.setattr(micro_batch_mod, "host_memory_budget", lambda: 1024)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(raw_config(tokenizer_json, offline_data)))
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("gradus: error: curriculum.stages[0]") and "GiB even at micro-batch 1" in err
    assert err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------------- two spawned ranks, one spawn
def _exit_spawned_worker() -> None:
    """End a spawned DDP test worker here, skipping interpreter shutdown: with gloo, a process whose group is
    already destroyed sometimes aborts during finalisation ("terminate called without an active exception",
    after all its work and results are done), which mp.spawn reports as a failure. The cause and the same
    exit for torchrun-started runs are in :func:`gradus.cli.entry`."""
    import os

    os._exit(0)


def _join(rank: int, init: str, seconds: int) -> None:
    import datetime
    import os

    import torch.distributed as dist

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    # A short timeout: ranks that disagree fail the test within a minute instead of hanging it.
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=seconds))


def _signalled_rank_case(rank: int, raw: dict, run: str, init: str) -> None:
    _join(rank, init, 60)
    real = trainer_mod.Trainer._train_step

    def step(self, state, batch):
        out = real(self, state, batch)
        if rank == 1 and state.step == 2:
            self.stop.reason = "stopped by SIGTERM; checkpoint saved"  # the signal reached rank 1 only
        return out

    trainer_mod.Trainer._train_step = step
    try:
        result = train(from_dict(raw), run, quiet=True)
    finally:
        trainer_mod.Trainer._train_step = real
    Path(run, f"result.{rank}").write_text(json.dumps([result.step, result.reason]))


def _disagreeing_eval_case(rank: int, raw: dict, run: str, init: str) -> None:
    _join(rank, init, 60)
    # Rank 1's evaluations come out a hair different (as GPU kernels may): at step 10 it alone would see an
    # improvement, save a checkpoint (an all-gather) and wait there for rank 0.
    reference = iter([[5.0, 5.0], [5.0, 4.99999]])  # the evaluations at steps 5 and 10, per rank

    def fake(model, batches, device, autocast):
        at_reference = batches[0].inputs.shape[1] == 16  # (the stage-length evaluation is not decided on)
        loss = next(reference)[rank] if at_reference else 6.0
        return {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.1, "tokens": 10}

    real, evaluate_mod.evaluate = evaluate_mod.evaluate, fake
    try:
        result = train(from_dict(raw), run, quiet=True)
    finally:
        evaluate_mod.evaluate = real
    Path(run, f"result.{rank}").write_text(json.dumps([result.step, result.best_val_loss]))


def _probe_oom_on_one_rank_case(rank: int, raw: dict, run: str, init: str) -> None:
    _join(rank, init, 30)
    stubbed = ("synchronize", "empty_cache", "reset_peak_memory_stats")
    real_cuda = {name: getattr(torch.cuda, name) for name in stubbed}
    trainer = trainer_mod.Trainer(from_dict(raw), Path(run) / f"r{rank}", resume=False, quiet=True)
    try:
        trainer.setup()
        for name in stubbed:
            setattr(torch.cuda, name, lambda *a, **k: None)
        real_forward = trainer.parts.model.forward

        def forward(x, y=None):  # rank 1's "GPU" takes 4 rows, rank 0's all 16
            if rank == 1 and x.shape[0] > 4:
                raise torch.OutOfMemoryError("fake: CUDA out of memory")
            return real_forward(x, y)

        trainer.parts.model.forward = forward  # inside DDP's forward, after its pre-forward collectives
        found = micro_batch_mod.probe_micro_batch(trainer.parts.net, trainer.parts.optimizer, trainer.rt,
                                                  trainer.parts.shape.vocab_size, 16, 16)
        agreed = trainer.rt.min_over_ranks(found or 0)
        Path(run, f"result.{rank}").write_text(json.dumps([found, agreed]))
    finally:
        trainer.close()
        for name, fn in real_cuda.items():
            setattr(torch.cuda, name, fn)


_TWO_RANK_CASES = {"signal": _signalled_rank_case, "mean_eval": _disagreeing_eval_case,
                   "probe_oom": _probe_oom_on_one_rank_case}


def _two_rank_cases_worker(rank: int, configs: dict[str, dict], root: str) -> None:
    """Each case of :data:`_TWO_RANK_CASES` in turn on this rank, each in a process group of its own (its own
    rendezvous file) and its own folder; a case that fails leaves its traceback there, and the next one runs."""
    import traceback

    import torch.distributed as dist

    for name, raw in configs.items():
        run = Path(root, name)
        try:
            _TWO_RANK_CASES[name](rank, raw, str(run), f"file://{run / 'rendezvous'}")
        except BaseException:  # noqa: BLE001 - reported by the case's test
            Path(run, f"error.{rank}").write_text(traceback.format_exc())
        finally:
            if dist.is_initialized():  # (left by a case that failed)
                dist.destroy_process_group()
    _exit_spawned_worker()


@pytest.fixture(scope="module")
def two_rank_cases(tmp_path_factory, tokenizer_json, offline_data) -> Path:
    """The cases below on two gloo ranks, in one mp.spawn: each spawned process imports torch and this module
    (~4 s on a busy 2-core box) against a second or two per case. A folder per case, with each rank's result."""
    mean_eval = raw_config(tokenizer_json, offline_data, checkpoint_every=None, eval_at_stage_change=False,
                           eval_every=5, eval_reference_seq_len=16)
    mean_eval["curriculum"]["stages"] = mean_eval["curriculum"]["stages"][:2]  # 11 steps: evaluations at 5 and 10
    configs = {"signal": raw_config(tokenizer_json, offline_data, checkpoint_every=None), "mean_eval": mean_eval,
               "probe_oom": raw_config(tokenizer_json, offline_data)}
    root = tmp_path_factory.mktemp("two-ranks")
    for name in configs:
        (root / name).mkdir()
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_cases_worker, args=(configs, str(root)), nprocs=2, join=True)
    return root


def _results(two_rank_cases: Path, case: str) -> list:
    """Each rank's result of ``case``, or the test's failure with the traceback of each rank that failed."""
    folder = two_rank_cases / case
    errors = [f"{case}, rank {e.suffix[1:]}:\n{e.read_text()}" for e in sorted(folder.glob("error.*"))]
    if errors:  # every rank's: the first to fail is not always rank 0
        pytest.fail("\n".join(errors), pytrace=False)
    return [json.loads((folder / f"result.{r}").read_text()) for r in range(2)]


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(two_rank_cases):
    results = _results(two_rank_cases, "signal")
    assert [r[0] for r in results] == [3, 3]
    assert results[1][1].startswith("stopped by SIGTERM") and results[0][1].startswith("stopped: another rank")
    meta = two_rank_cases / "signal" / "checkpoints" / "step_00000003" / "meta.json"
    assert json.loads(meta.read_text())["step"] == 3


def test_ranks_decide_on_the_mean_validation_loss(two_rank_cases):
    results = _results(two_rank_cases, "mean_eval")
    assert results[0] == results[1] and results[0][0] == 11
    assert results[0][1] == pytest.approx(4.999995)  # the mean improved: both saved the best together
    meta = two_rank_cases / "mean_eval" / "checkpoints" / "best" / "meta.json"
    assert json.loads(meta.read_text())["step"] == 10


def test_probe_out_of_memory_on_one_rank_keeps_the_ranks_in_step(two_rank_cases):
    # The CUDA probe's logic (its CUDA calls stubbed) inside real DDP on gloo: rank 1 runs out of memory
    # at 16 and 8 rows, rank 0 does not. With DDP's per-forward buffer broadcast on, rank 1 broadcast again
    # on every retry and the ranks hung; now both agree on 4.
    assert _results(two_rank_cases, "probe_oom") == [[16, 4], [4, 4]]


def test_the_same_command_continues_a_stopped_run(tmp_path, tokenizer_json, offline_data, monkeypatch, capsys):
    """The README's promise: a stopped run resumes by running the same command again (it used to start a new
    run); the stop says how. A changed config starts a new run instead of continuing the old one."""
    from gradus.cli import main

    monkeypatch.chdir(tmp_path)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(raw_config(tokenizer_json, offline_data)))
    assert main(["train", str(cfg_path), "--stop-at-step", "3"]) == 0
    out = capsys.readouterr().out
    (first,) = list((tmp_path / "runs").iterdir())
    assert f"to continue: run the same command again, or gradus train --out runs/{first.name}" in out
    assert main(["train", str(cfg_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"gradus: continuing the stopped run runs/{first.name}" in out
    assert list((tmp_path / "runs").iterdir()) == [first]
    steps = [r["step"] for r in read_metrics(first / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, TOTAL_STEPS + 1))
    # Finished now: the same command starts a new run.
    time.sleep(1.1)  # (run folders are named to the second)
    assert main(["train", str(cfg_path), "--stop-at-step", "1", "--quiet"]) == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2


@pytest.mark.parametrize("case, message", [
    ("glob", "path '{tmp}/nothing/*.jsonl' matches no files; check the path or glob"),
    ("empty", "data.tokenizer.name_or_path='{tmp}/tok.json': an empty file; give a tokenizer.json"),
    ("not-json", "data.tokenizer.name_or_path='{tmp}/tok.json': not a tokenizer file (expected ident at line 1 "
                 "column 2); give a tokenizer.json"),
    ("other-json", "data.tokenizer.name_or_path='{tmp}/tok.json': JSON, but not a tokenizer file (no \"model\" in "
                   "it); give a tokenizer.json"),
])
def test_a_failed_start_is_one_line_and_leaves_nothing_behind(case, message, tmp_path, tokenizer_json, offline_data,
                                                              capsys):
    """Nothing behind: not the run directory, nor the folders made above it (a first run's ./runs)."""
    from gradus.cli import main

    raw = raw_config(tokenizer_json, offline_data)
    if case == "glob":
        raw["data"]["sources"][0]["path"] = str(tmp_path / "nothing" / "*.jsonl")
    else:
        text = {"empty": "", "not-json": "not json", "other-json": '{"a": 1}'}[case]
        (tmp_path / "tok.json").write_text(text)
        raw["data"]["tokenizer"] = {"name_or_path": str(tmp_path / "tok.json")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(raw))
    assert main(["train", str(cfg), "--out", str(tmp_path / "runs" / "mine" / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(tmp=tmp_path) in err[0], err
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_during_set_up_leaves_nothing_behind(tmp_path, tokenizer_json, offline_data, monkeypatch, capsys):
    """Ctrl-C before the first step (at W&B's login prompt, or while a tokenizer loads): nothing was trained, so
    the folder this start made goes as a refused start's does, and the same command starts afresh."""
    import gradus.train.run as run_module
    from gradus.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "load_tokenizer_on_ranks", interrupted)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(raw_config(tokenizer_json, offline_data)))
    assert main(["train", str(cfg), "--out", str(tmp_path / "runs" / "mine" / "run")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_start_refused_because_the_folder_is_busy_removes_nothing(tmp_path, tokenizer_json, offline_data, capsys):
    """Two starts on one new --out: the second is refused (the folder is locked) and must not remove the folder
    the first created and is training in (only a folder this process created and locked is removed)."""
    from gradus.cli import main
    from gradus.train.storage.run_dir import RunLock

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("the first start's config\n")
    held = RunLock(run)  # the first start, still setting up
    try:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(json.dumps(raw_config(tokenizer_json, offline_data)))
        assert main(["train", str(cfg), "--out", str(run)]) == 2
        assert "is in use by" in capsys.readouterr().err
        assert (run / "config.yaml").read_text() == "the first start's config\n"
    finally:
        held.release()


def test_evaluation_rows_are_the_longest_stages_not_the_last_ones(tmp_path, tokenizer_json, offline_data):
    # Evaluation runs at the longest length; a last stage at a shorter length (an sft tail) fits more rows, and
    # its micro-batch sized the evaluation batches: 16 rows of 64 where the 64-token stage's step holds 4.
    raw = raw_config(tokenizer_json, offline_data)
    stages = raw["curriculum"]["stages"]
    raw["curriculum"]["stages"] = [stages[0], stages[2], dict(stages[0], name="tail")]
    trainer = trainer_mod.Trainer(from_dict(raw), tmp_path, resume=False, quiet=True)
    try:
        trainer.setup()
        schedule = trainer.parts.schedule
        assert [s.seq_len for s in schedule.stages] == [16, 64, 16] and schedule.stages[1].batch_size == 4
        assert trainer.parts.validation.reference_seq_len == 64 and trainer.parts.validation.max_rows == 4
    finally:
        trainer.close()
