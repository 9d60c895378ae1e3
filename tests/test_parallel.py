"""DDP and FSDP2 (also in fp8 with float8 all-gather), activation checkpointing, sharded checkpoints and exact
resumes (CPU, gloo, two processes through torchrun).

The tiny curriculum here runs 22 steps over three stages (two stage changes). FSDP and DDP differ only in
how gradients are reduced (reduce-scatter of each parameter's shard against an all-reduce of buckets), so
their losses agree to float rounding: within ``LOSS_TOL`` (1e-5 on losses of about 6; measured: ~5e-7).
Activation checkpointing recomputes the same operations, so it changes nothing at all on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from builders import tiny_config
from safetensors.torch import load_file

from gradus.cli import main
from gradus.config import from_dict
from gradus.plan.memory import checkpointed_blocks
from gradus.train.fp8 import torchao_available
from gradus.train.metrics import losses_by_step, read_metrics
from gradus.train.storage.sharded_checkpoint import consolidate, is_sharded_checkpoint
from gradus.train.trainer import train

LOSS_TOL = 1e-5
STAGES = [  # 8 + 7 + 7 = 22 steps of 256 tokens; local batches 8, 4 and 2 rows on two processes
    {"name": "s16", "tokens": 8 * 256, "seq_len": 16, "tokens_per_batch": 256, "mix": {"wiki": 0.8, "math": 0.2}},
    {"name": "s32", "tokens": 7 * 256, "seq_len": 32, "tokens_per_batch": 256, "mix": {"wiki": 0.5, "math": 0.5}},
    {"name": "s64", "tokens": 7 * 256, "seq_len": 64, "tokens_per_batch": 256, "mix": {"wiki": 0.3, "math": 0.7}},
]
STEPS = 22
DDP_STOP = 12  # inside the second stage (steps 9 to 15)
FSDP_STOP = 9
ADAPTIVE_STOP = 8  # the adaptive FSDP run: inside its first verification window (proposed at step 4, decided at 12)


def raw_config(tok: str, data: Path, **train) -> dict:
    """The tiny model on :data:`STAGES`, logging every step, a checkpoint every 4 steps."""
    cfg = tiny_config(data, tok, stages=STAGES)
    cfg["train"].update({"eval_every": 5, "checkpoint_every": 4, "early_stopping_patience": None, **train})
    cfg["logging"]["log_every"] = 1
    return cfg


def fp8_config(tok: str, data: Path) -> dict:
    """The tiny model on the shared tiny curriculum (16 steps) in fp8 through torchao's emulation under FSDP:
    tensorwise scaling, so the weights are all-gathered in float8; a checkpoint every 8 steps."""
    cfg = tiny_config(data, tok)
    cfg["train"].update({"precision": "fp8", "fp8": {"emulate": True}, "parallel": "fsdp", "eval_every": 100,
                         "checkpoint_every": 8, "early_stopping_patience": None, "eval_at_stage_change": False})
    return cfg


def adaptive_config(tok: str, data: Path) -> dict:
    """The curriculum under FSDP with the adaptive batch rule firing at once (rho tiny) and its branch accepted
    (z 50), up to twice the tokens per step; micro-batches of 2 rows give the noise scale 2+ per step."""
    cfg = raw_config(tok, data, parallel="fsdp", micro_batch_size=2)
    # A first stage long enough for a verification window (at least 4 doubled steps) inside it.
    cfg["curriculum"]["stages"] = [dict(s, tokens=n * 256) for s, n in zip(STAGES, (24, 8, 8), strict=True)]
    cfg["curriculum"].update(schedule="wsd", global_warmup_fraction=0.05, cooldown_fraction=0.2, adaptive={
        "check_every_tokens": 512,
        "batch": {"rho": 0.01, "patience": 2, "min_samples": 2, "max_tokens_per_step": 512,
                  "verify": {"fraction": 0.05, "z": 50.0}}})
    return cfg


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(json.dumps(raw))
    return path


def torchrun_train(cfg_path: Path, run: Path, *extra: str, nproc: int = 2, env: dict | None = None,
                   ok: bool = True) -> subprocess.CompletedProcess:
    """``gradus train`` in ``nproc`` gloo processes through torchrun (a free port: --standalone)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "gradus.cli", "train", str(cfg_path), "--out", str(run), "--quiet", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def step_losses(run: Path) -> dict[int, float]:
    return losses_by_step(run / "metrics.jsonl")


def last_checkpoint(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1]


_TRAIN_IN_ONE_LAUNCH = """
import json, os, sys
import torch.distributed as dist
from gradus.config import load_config
from gradus.train.trainer import train

# Every run on the one process group torchrun set up for this launch: train() joins it when none exists and
# leaves it at its end, and gloo cannot join twice over torchrun's store (its old keys answer the new
# connections), so the group is left once, when every run is done.
leave, dist.destroy_process_group = dist.destroy_process_group, lambda *args, **kwargs: None
for config, run, stop in json.loads(open(sys.argv[1]).read()):
    train(load_config(config), run, quiet=True, stop_at_step=stop)
dist.barrier()
leave()
os._exit(0)  # as gradus.cli.entry leaves a joined process: no interpreter finalisation
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_json, offline_data) -> dict[str, Path]:
    """The same curriculum under DDP, FSDP, FSDP with every block's activations recomputed and FSDP with lagged
    reads, each to its end, and DDP and FSDP stopped inside a stage (for the resume tests to continue). All in
    one torchrun launch of two processes: a launch costs ~10 s of start-up on a busy 2-core box, the 22 steps
    under a second. The resumes, kills and refusals below run ``gradus train`` in their own launches."""
    root = tmp_path_factory.mktemp("parallel")
    configs = {name: write_config(root / f"{name}.json", raw_config(tokenizer_json, offline_data, **train_cfg))
               for name, train_cfg in {"ddp": {}, "fsdp": {"parallel": "fsdp"},
                                       "fsdp_ac": {"parallel": "fsdp", "activation_checkpointing": "full"},
                                       "fsdp_gns": {"parallel": "fsdp", "noise_scale": {"micro_batches": 2}}}.items()}
    # FSDP with the figures read one step late between sync points (logged every 7th step only), the fused
    # AdamW skipping on the device: every rank must take the same sync points, or a collective would hang.
    lagged = raw_config(tokenizer_json, offline_data, parallel="fsdp", host_sync="lagged")
    lagged["optim"]["fused"], lagged["logging"]["log_every"] = "on", 7
    configs["fsdp_lagged"] = write_config(root / "fsdp_lagged.json", lagged)
    configs["fsdp_adaptive"] = write_config(root / "fsdp_adaptive.json", adaptive_config(tokenizer_json, offline_data))
    stopped = {"ddp_stopped": ("ddp", DDP_STOP), "fsdp_stopped": ("fsdp", FSDP_STOP),
               "fsdp_adaptive_stopped": ("fsdp_adaptive", ADAPTIVE_STOP)}
    if torchao_available():  # last: nothing else in the launch trains after torchao is imported
        configs["fsdp_fp8"] = write_config(root / "fsdp_fp8.json", fp8_config(tokenizer_json, offline_data))
        stopped["fsdp_fp8_stopped"] = ("fsdp_fp8", 8)
    plan = [(str(configs[name]), str(root / name), None) for name in configs if name != "fsdp_fp8"]
    plan += [(str(configs[of]), str(root / name), stop) for name, (of, stop) in stopped.items()]
    (root / "plan.json").write_text(json.dumps(plan))
    (root / "train_all.py").write_text(_TRAIN_IN_ONE_LAUNCH)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "train_all.py"), str(root / "plan.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {name: root / name for name in [*configs, *stopped] if name != "fsdp_fp8"}
    out["config"], out["ddp_config"], out["fp8_config"] = configs["fsdp"], configs["ddp"], configs.get("fsdp_fp8")
    out["adaptive_config"] = configs["fsdp_adaptive"]
    return out


def continue_stopped(runs: dict[str, Path], name: str, to: Path) -> Path:
    """A fresh copy of the fixture's run ``name``, stopped with a checkpoint inside a stage, to resume."""
    shutil.copytree(runs[name], to)
    return to


def test_two_processes_keep_identical_weights_and_resume_exactly(runs, tmp_path):
    run = runs["ddp"]
    (event,) = [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "dist/weights_checksum"]
    assert event["in_sync"] is True and len(event["checksums"]) == 2
    steps = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert steps[-1]["step"] == STEPS and steps[-1]["tokens"] == STEPS * 256
    # Stopped inside stage 1 and resumed: every rank continues its own shard (each rank's data state is
    # saved), so the run ends with the uninterrupted run's weights, bit for bit.
    resumed = continue_stopped(runs, "ddp_stopped", tmp_path / "resumed")
    assert last_checkpoint(resumed).name == f"step_{DDP_STOP:08d}"
    state = torch.load(last_checkpoint(resumed) / "state.pt", weights_only=False)
    assert isinstance(state["data"], list) and [d["fingerprint"]["rank"] for d in state["data"]] == [0, 1]
    torchrun_train(runs["ddp_config"], resumed)
    a, b = (load_file(str(last_checkpoint(r) / "model.safetensors")) for r in (run, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_gives_ddps_losses_across_stage_changes(runs):
    ddp, fsdp = step_losses(runs["ddp"]), step_losses(runs["fsdp"])
    assert sorted(ddp) == sorted(fsdp) == list(range(1, STEPS + 1))
    stages = {r["step"]: r["curriculum/stage"] for r in read_metrics(runs["fsdp"] / "metrics.jsonl")
              if "curriculum/stage" in r and "event" not in r}
    assert [stages[s] for s in (8, 9, 15, 16, 22)] == [0, 1, 1, 2, 2]
    assert max(abs(ddp[s] - fsdp[s]) for s in ddp) < LOSS_TOL
    assert fsdp[STEPS] < fsdp[1] - 0.3  # it learned


def test_fsdp_measures_the_noise_scale_from_two_micro_batches(runs):
    """Under FSDP each step split in two micro-batches gives the noise scale (each micro-batch over both ranks
    from the sharded gradients) at every step, and the losses stay FSDP's."""
    records = read_metrics(runs["fsdp_gns"] / "metrics.jsonl")
    steps = [r for r in records if "loss" in r and "step" in r]
    assert len(steps) == STEPS and all(r["gns/b_simple"] > 0 for r in steps)
    assert all(r["curriculum/micro_batch_size"] * 2 == r["curriculum/current_batch_size"] // 2 for r in steps)
    assert not any(r.get("event") == "gns/unmeasured" for r in records)
    plain, measured = step_losses(runs["fsdp"]), step_losses(runs["fsdp_gns"])
    assert max(abs(plain[s] - measured[s]) for s in plain) < LOSS_TOL


def test_an_adaptive_run_under_fsdp_verifies_a_doubling_on_a_branch_and_finishes(runs):
    """The noise scale from the sharded gradients drives the batch rule under FSDP: a proposal, its branch
    trained and every sharded part put back, the doubling accepted, and the run to its target."""
    run = runs["fsdp_adaptive"]
    decisions = [json.loads(line) for line in (run / "decisions.jsonl").read_text().splitlines()]
    verdicts = [d["verdict"] for d in decisions if d["kind"] == "batch"]
    assert "accepted" in verdicts, decisions
    # judged on held-out rows, every rank's sums averaged (the same verdict on both)
    judged = [d["comparison"] for d in decisions if d["kind"] == "batch" and d["verdict"] != "skipped"]
    assert judged and all(c["held_out_rows"] >= 2 and c["branch_loss"] > 0 for c in judged), judged
    records = read_metrics(run / "metrics.jsonl")
    assert any(r.get("event") == "adaptive/branch" and r["branch_steps"] > 0 for r in records)
    steps = [r for r in records if "loss" in r and "step" in r]
    assert max(r["curriculum/tokens_per_step"] for r in steps) == 512
    assert steps[-1]["tokens"] == 40 * 256


def test_an_adaptive_run_under_fsdp_stopped_inside_a_verification_resumes_to_the_same_decisions(runs, tmp_path):
    run = continue_stopped(runs, "fsdp_adaptive_stopped", tmp_path / "run")
    torchrun_train(runs["adaptive_config"], run)
    uninterrupted, resumed = step_losses(runs["fsdp_adaptive"]), step_losses(run)
    assert sorted(resumed) == sorted(uninterrupted)
    assert all(resumed[s] == uninterrupted[s] for s in uninterrupted if s > ADAPTIVE_STOP)
    assert (run / "decisions.jsonl").read_text() == (runs["fsdp_adaptive"] / "decisions.jsonl").read_text()


def test_fsdp_with_lagged_reads_gives_the_same_losses(runs):
    fsdp, lagged = step_losses(runs["fsdp"]), step_losses(runs["fsdp_lagged"])
    assert sorted(lagged) == [7, 14, 21, 22]  # (logged steps only: every 7th, and the last)
    assert max(abs(fsdp[s] - lagged[s]) for s in lagged) < LOSS_TOL  # (the fused AdamW: not bit-identical)
    assert last_checkpoint(runs["fsdp_lagged"]).name == last_checkpoint(runs["fsdp"]).name


def test_fsdp_with_activation_checkpointing_gives_the_same_losses(runs):
    plain, ac = step_losses(runs["fsdp"]), step_losses(runs["fsdp_ac"])
    assert sorted(plain) == sorted(ac)
    assert max(abs(plain[s] - ac[s]) for s in plain) <= 1e-6


def test_fsdp_checkpoints_are_sharded_and_export_as_one_model(runs, offline_data, tmp_path, capsys, monkeypatch):
    ckpt = last_checkpoint(runs["fsdp"])
    assert is_sharded_checkpoint(ckpt) and not (ckpt / "model.safetensors").exists()
    assert sorted(p.name for p in (ckpt / "shards").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert (meta["format"], meta["shards"], meta["step"]) == ("sharded", 2, STEPS)
    state = torch.load(ckpt / "state.pt", weights_only=False)  # every rank's data position, as under DDP
    assert [d["fingerprint"]["rank"] for d in state["data"]] == [0, 1]
    # One process, no process group: the shards become the whole model, which is the DDP run's to rounding.
    sharded_copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, sharded_copy)
    whole = load_file(str(consolidate(sharded_copy)))
    ddp = load_file(str(last_checkpoint(runs["ddp"]) / "model.safetensors"))
    assert sorted(whole) == sorted(ddp)
    assert max(float((whole[k] - ddp[k]).abs().max()) for k in ddp) < 1e-5
    # A checkpoint folder that cannot be written (a read-only run directory; as root, os.access stands in for
    # the permissions): the whole model goes to the temp folder, and the checkpoint is left as it was.
    readonly, real_access = tmp_path / "readonly", os.access
    shutil.copytree(ckpt, readonly)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != readonly and real_access(p, mode))
    aside = consolidate(readonly)
    assert aside.parent.parent == tmp_path / "tmp" / f"gradus-consolidated-{os.getuid()}"
    assert not (readonly / "model.safetensors").exists() and aside.parent.parent.stat().st_mode & 0o777 == 0o700
    assert all(torch.equal(load_file(str(aside))[k], whole[k]) for k in whole)
    assert consolidate(readonly) == aside  # made once
    monkeypatch.undo()
    # gradus eval and export read a sharded checkpoint directly.
    data = str(offline_data / "wikitext-2" / "train.jsonl")
    losses = []
    for run in (runs["fsdp"], runs["ddp"]):
        assert main(["eval", str(run), "--data", data, "--tokens", "2048", "--json"]) == 0
        losses.append(json.loads(capsys.readouterr().out)["loss"])
    assert abs(losses[0] - losses[1]) < 1e-4
    assert main(["export", str(runs["fsdp"]), "--hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()


def test_killed_after_a_sharded_checkpoint_resumes_exactly(runs, tmp_path):
    run = continue_stopped(runs, "fsdp_stopped", tmp_path / "run")  # stopped at step 9 (FSDP_STOP)
    # Killed (SIGKILL, every rank) with its shards half-way to disk: the partial save is never listed.
    killed = torchrun_train(runs["config"], run, env={"GRADUS_FAULTS": "kill@after_model"}, ok=False)
    assert killed.returncode != 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))[-1] == "step_00000009"
    assert any(p.name.startswith(".tmp-step_") for p in (run / "checkpoints").iterdir())
    torchrun_train(runs["config"], run)
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    uninterrupted, resumed = step_losses(runs["fsdp"]), step_losses(run)
    assert all(resumed[s] == uninterrupted[s] for s in range(FSDP_STOP + 1, STEPS + 1))
    a = load_file(str(consolidate(last_checkpoint(runs["fsdp"]))))
    b = load_file(str(consolidate(last_checkpoint(run))))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torchao_available(),
                    reason="torchao is not installed (pip install 'gradus-lm[fp8]'): fp8 untested")
def test_fsdp_with_float8_all_gather_writes_plain_shards_that_export_and_a_bf16_run_read(runs, tmp_path):
    """train.precision fp8 (tests/test_fp8.py) under FSDP2 with float8 all-gather (tensorwise), stopped at step 8:
    the weights are torchao wrappers while training, but the shards hold plain tensors, so export and a bf16
    resume read them."""
    from gradus.export.hf import load_hf_weights

    run = continue_stopped(runs, "fsdp_fp8_stopped", tmp_path / "run")
    shards = sorted((run / "checkpoints" / "step_00000008" / "shards").glob("*.distcp"))
    assert len(shards) == 2 and not any(b"torchao" in f.read_bytes() for f in shards)
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    exported = load_hf_weights(tmp_path / "hf")
    assert all(type(p.data) is torch.Tensor and p.dtype == torch.float32 for p in exported.parameters())

    raw = json.loads(runs["fp8_config"].read_text())
    torchrun_train(write_config(tmp_path / "bf16.json", {**raw, "train": {**raw["train"], "precision": "bf16"}}), run)
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("event") == "resume"] == [8]
    assert max(r["step"] for r in records if "loss" in r and "step" in r) == 16


def test_another_world_size_is_refused_unless_allowed(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["fsdp"], run)
    for late in sorted((run / "checkpoints").glob("step_*"))[-2:]:  # resume inside the last stage (step 16)
        shutil.rmtree(late)
    start = int(json.loads((last_checkpoint(run) / "meta.json").read_text())["step"])
    assert main(["train", str(runs["config"]), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "world size 2 → 1" in err and "--allow-config-change" in err and err.count("\n") == 1
    # Allowed, on four processes: DCP reshards the weights and AdamW, the data order restarts, the
    # counters (and so the curriculum) continue.
    torchrun_train(runs["config"], run, "--allow-config-change", nproc=4)
    losses = step_losses(run)
    assert sorted(s for s in losses if s > start) == list(range(start + 1, STEPS + 1))
    assert json.loads((last_checkpoint(run) / "meta.json").read_text())["shards"] == 4
    # The trained weights came back (a fresh model starts near the first step's loss), on new data.
    assert losses[start + 1] < step_losses(runs["fsdp"])[1] - 0.3


def test_fsdp_on_one_process_trains_unsharded_with_a_note(tmp_path, tokenizer_json, offline_data, capsys):
    raw = raw_config(tokenizer_json, offline_data, parallel="fsdp", max_steps=3)
    path = write_config(tmp_path / "c.json", raw)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "parallel: fsdp on one process: nothing to shard across, training unsharded" in out
    assert (last_checkpoint(tmp_path / "run") / "model.safetensors").is_file()


def test_activation_checkpointing_changes_no_loss_on_one_process(tmp_path, tokenizer_json, offline_data):
    losses = []
    for i, mode in enumerate(["none", "every_k"]):
        raw = raw_config(tokenizer_json, offline_data, activation_checkpointing=mode, max_steps=10,
                         activation_checkpointing_every_k=3)
        train(from_dict(raw), tmp_path / str(i), quiet=True)
        losses.append(step_losses(tmp_path / str(i)))
    assert losses[0] == losses[1] and len(losses[0]) == 10


def test_which_blocks_are_checkpointed():
    assert checkpointed_blocks(8, "none", 2) == []
    assert checkpointed_blocks(8, "full", 2) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert checkpointed_blocks(8, "every_k", 3) == [0, 3, 6]


@pytest.mark.parametrize(("train_cfg", "expected"), [
    ({"activation_checkpointing": "some"}, "train.activation_checkpointing"),
    ({"parallel": "zero3"}, "train.parallel"),
    ({"parallel": "fsdp", "ema": {"decay": 0.99}}, "train.ema: the weights' average is not kept under"),
])
def test_bad_parallel_settings_are_one_line_errors(tmp_path, tokenizer_json, offline_data, capsys, train_cfg,
                                                    expected):
    path = write_config(tmp_path / "c.json", raw_config(tokenizer_json, offline_data, **train_cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_a_batch_the_world_size_does_not_divide_is_said_once_before_the_run_directory_exists(
        tmp_path, tokenizer_json, offline_data):
    """Under torchrun every rank finds it; rank 0 alone says it (one line, not one per process), every rank
    exits 2, and nothing is written."""
    raw = raw_config(tokenizer_json, offline_data)
    raw["curriculum"]["stages"][1]["tokens_per_batch"] = 3 * 32  # batch 3 at seq_len 32, over two processes
    run = tmp_path / "run"
    proc = torchrun_train(write_config(tmp_path / "odd.json", raw), run, ok=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gradus: error:")]
    assert errors == ["gradus: error: curriculum.stages[1] batch 3 does not divide by world size 2; choose a "
                      "batch (or tokens_per_batch) divisible by the number of processes"], proc.stderr[-2500:]
    assert "exitcode  : 2" in proc.stderr and proc.returncode != 0  # torchrun reports the workers' exit 2
    assert not run.exists()


def test_a_failed_sharded_save_stops_every_rank_with_one_line(runs, tmp_path):
    run = tmp_path / "run"
    proc = torchrun_train(runs["config"], run, env={"GRADUS_FAULTS": "save_fail@after_model"}, ok=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gradus: error:")]
    # Every rank stops; rank 0 alone says it (the others leave after it, so torchrun cannot cut it short).
    assert len(errors) == 1 and "could not write checkpoint" in errors[0] and "step_00000004" in errors[0]
    assert "no earlier checkpoint exists" in errors[0] and "exitcode  : 2" in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == []  # the partial save is gone


def test_the_probe_holds_aside_only_this_ranks_shard_of_adamw():
    class Shard:  # what FSDP2 gives AdamW: a DTensor whose local part is 1/world of the parameter
        requires_grad = True

        def __init__(self, rows: int):
            self.local = torch.zeros(rows, 8)

        def to_local(self) -> torch.Tensor:
            return self.local

    from gradus.train.micro_batch import adamw_state_bytes

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    optimizer.param_groups[0]["params"] = [Shard(3), Shard(5)]
    assert adamw_state_bytes(optimizer) == 2 * 4 * 8 * (3 + 5)
