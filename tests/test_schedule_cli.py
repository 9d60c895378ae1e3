"""`gradus schedule` end to end, and every bad-input case of the issue through the command line.

Bad input must give exit code 2 and one `gradus: error:` line per problem naming the field path and the
value, with no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from gradus.cli import main

GOOD = {
    "model": {"preset": "tiny", "max_seq_len": 256},
    "data": {"sources": [{"name": "prose", "builtin": "python-docs"}, {"name": "code", "builtin": "python-stdlib"}]},
    "curriculum": {
        "target_tokens": "1M",
        "stages": [
            {"step": 0, "seq_len": 64, "batch_size": 32, "mix": {"prose": 0.8, "code": 0.2}},
            {"step": 100, "seq_len": 128, "tokens_per_batch": 4096, "mix": {"prose": 0.5, "code": 0.5}},
        ],
    },
}
STAGE_KEYS = {
    "index", "name", "start_step", "end_step", "start_tokens", "end_tokens", "seq_len", "batch_size",
    "tokens_per_step", "peak_lr", "warmup_steps", "grad_clip", "mix",
}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["schedule", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_yaml(tmp_path, data=None, text: str | None = None):
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text) if text is not None else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def with_stage(index: int, **changes) -> dict:
    data = json.loads(json.dumps(GOOD))
    stage = data["curriculum"]["stages"][index]
    for key, value in changes.items():
        if value is None:
            stage.pop(key, None)
        else:
            stage[key] = value
    return data


# -------------------------------------------------------------------------------------- the table
def test_table_for_aggressive(capsys):
    code, out, err = run_cli(capsys, "--preset", "aggressive")
    assert code == 0 and err == ""
    rows = [line for line in out.splitlines() if line[:1].isdigit()]
    assert len(rows) == 6
    assert all("32,768" in row for row in rows)
    assert "40,000–100,000" in rows[-1] and "2048" in rows[-1]
    assert "6e-4" in rows[0] and "1× base" in rows[0]  # the plan's linear rule: 6e-4 × 32,768 / 32,768
    # The seq_batch rule's own column and warning, on the first two stages switched to it.
    rule = ["--set", "curriculum.stages[0].lr_multiplier=null", "--set", "curriculum.stages[0].lr_rule=seq_batch",
            "--set", "curriculum.stages[1].lr_multiplier=null", "--set", "curriculum.stages[1].lr_rule=seq_batch"]
    code, out, err = run_cli(capsys, "--preset", "aggressive", *rule)
    rows = [line for line in out.splitlines() if line[:1].isdigit()]
    assert code == 0 and err == ""
    assert "9.6e-3" in rows[0] and "16× = 4 × 4 (seq_batch)" in rows[0]
    assert any(line.startswith("warning: lr_rule seq_batch") and "twice" in line for line in out.splitlines())


def test_table_with_time_and_dataset_coverage(capsys):
    code, out, _ = run_cli(capsys, "--preset", "demo", "--tokens-per-sec", "4096", "--dataset-tokens", "1M")
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("#"))
    assert "time" in header and "data epochs" in header
    first = next(line for line in out.splitlines() if line.startswith("0 "))
    assert "1m 00s" in first  # 245,760 tokens at 4096 tokens/s
    assert "warning: the run reads 2.46M tokens from a 1M-token dataset: 2.46 epochs" in out


def test_json_shape(capsys):
    code, out, _ = run_cli(capsys, "--preset", "lr-extreme", "--json")
    assert code == 0
    data = json.loads(out)
    assert {"stages", "target_tokens", "total_steps", "warnings"} <= set(data)
    assert all(STAGE_KEYS <= set(stage) for stage in data["stages"])
    assert [round(s["peak_lr"], 6) for s in data["stages"]] == [0.00678, 0.0042, 0.0021, 0.0009, 0.00042]
    last = data["stages"][-1]
    assert last["end_tokens"] == data["target_tokens"] == 491_520_000 and last["end_step"] == data["total_steps"]
    assert data["stages"][1]["start_step"] == data["stages"][0]["end_step"] == 2000


def test_json_with_throughput(capsys):
    code, out, _ = run_cli(capsys, "--preset", "streaming-1b", "--json", "--tokens-per-sec", "100k", "--dataset-tokens", "2B")
    data = json.loads(out)
    assert code == 0 and data["tokens_per_sec"] == 100_000 and data["dataset_tokens"] == 2_000_000_000
    assert data["total_seconds"] == pytest.approx(data["total_tokens"] / 100_000)
    assert data["stages"][-1]["dataset_epochs_after"] == pytest.approx(data["total_tokens"] / 2e9)


def test_list(capsys):
    code, out, _ = run_cli(capsys, "--list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert {"aggressive", "demo", "streaming-1b"} <= set(names)


def test_set_overrides_reach_the_table(capsys, tmp_path):
    code, out, _ = run_cli(capsys, str(write_yaml(tmp_path, GOOD)), "--set", "curriculum.stages[1].seq_len=256", "--json")
    assert code == 0 and json.loads(out)["stages"][1]["seq_len"] == 256


def test_mix_not_summing_to_one_is_normalised_with_a_note(capsys, tmp_path):
    path = write_yaml(tmp_path, with_stage(0, mix={"prose": 3, "code": 1}))
    code, out, err = run_cli(capsys, str(path), "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["stages"][0]["mix"] == {"prose": 0.75, "code": 0.25}
    assert "curriculum.stages[0].mix sums to 4; weights normalised to sum to 1" in data["warnings"]
    code, out, _ = run_cli(capsys, str(path))
    assert "warning: curriculum.stages[0].mix sums to 4; weights normalised" in out


def test_schedule_imports_no_torch():
    code = (
        "import sys; from gradus.cli import main; rc = main(['schedule', '--preset', 'wikipedia-9stage']); "
        "assert 'torch' not in sys.modules, 'gradus schedule imported torch'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------- bad input
def assert_bad(code: int, out: str, err: str, *fragments: str) -> list[str]:
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("gradus: error: ") for line in lines), err
    for fragment in fragments:
        assert any(fragment in line for line in lines), f"{fragment!r} not in:\n{err}"
    return lines


CASES = {
    "unknown key": (
        {**GOOD, "optimizer": {"base_lr": 1e-3}},
        ["optimizer: unknown key 'optimizer'; did you mean 'optim'?"],
    ),
    "unknown stage key": (with_stage(0, seqlen=64), ["curriculum.stages[0].seqlen: unknown key 'seqlen'; did you mean 'seq_len'?"]),
    "stage starts not increasing": (
        with_stage(1, step=0),
        ["curriculum.stages[1].step=0 is not after stages[0].step=0; stage starts must increase"],
    ),
    "both batch forms": (
        with_stage(1, batch_size=16),
        ["curriculum.stages[1]: both batch_size=16 and tokens_per_batch=4096 are given; keep one"],
    ),
    "neither batch form": (
        with_stage(0, batch_size=None),
        ["curriculum.stages[0]: neither batch_size nor tokens_per_batch is given"],
    ),
    "seq_len above max": (
        with_stage(1, seq_len=4096),
        ["curriculum.stages[1].seq_len=4096 exceeds model.max_seq_len=256"],
    ),
    "zero LR": (with_stage(0, peak_lr=0), ["curriculum.stages[0].peak_lr=0: must be greater than 0"]),
    "negative LR": ({**GOOD, "optim": {"base_lr": -0.001}}, ["optim.base_lr=-0.001: must be greater than 0"]),
    "negative multiplier": (with_stage(0, lr_scale=-2), ["curriculum.stages[0].lr_scale=-2: must be greater than 0"]),
    "zero clip": (with_stage(1, grad_clip=0), ["curriculum.stages[1].grad_clip=0: must be greater than 0"]),
    "negative clip": (with_stage(0, grad_clip=-1.5), ["curriculum.stages[0].grad_clip=-1.5: must be greater than 0"]),
    "negative mix weight": (
        with_stage(0, mix={"prose": 1.2, "code": -0.2}),
        ["curriculum.stages[0].mix.code=-0.2: mix weights must be ≥ 0"],
    ),
    "unknown mix source": (
        with_stage(1, mix={"prose": 0.5, "cdoe": 0.5}),
        ["curriculum.stages[1].mix.cdoe: unknown source 'cdoe'; did you mean 'code'?"],
    ),
    "bad token count": (
        with_stage(1, tokens_per_batch="4 thousand"),
        ["curriculum.stages[1].tokens_per_batch='4 thousand': token count must be a number such as 10M"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config(case, capsys, tmp_path):
    data, fragments = CASES[case]
    path = write_yaml(tmp_path, data)
    lines = assert_bad(*run_cli(capsys, str(path)), *fragments)
    assert all(line.startswith(f"gradus: error: {path}: line ") for line in lines), lines


def test_all_problems_at_once(capsys, tmp_path):
    data = with_stage(1, seq_len=4096, batch_size=16)
    data["optim"] = {"base_lr": 0}
    data["curriculum"]["stages"][0]["mix"] = {"prose": 1, "cdoe": 1}
    lines = assert_bad(
        *run_cli(capsys, str(write_yaml(tmp_path, data))),
        "optim.base_lr=0",
        "stages[1]: both batch_size=16",
        "stages[1].seq_len=4096 exceeds",
        "stages[0].mix.cdoe: unknown source",
    )
    assert len(lines) == 4


def test_unknown_preset(capsys):
    assert_bad(*run_cli(capsys, "--preset", "agressive"), "--preset 'agressive': unknown preset; did you mean 'aggressive'?")


def test_missing_file(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_bad(*run_cli(capsys, str(missing)), f"{missing}: config file not found")


def test_malformed_yaml_has_the_line(capsys, tmp_path):
    path = write_yaml(tmp_path, text="""\
        model:
          preset: tiny
        curriculum:
          stages:
            - {seq_len: 64, batch_size: 8
        """)
    (line,) = assert_bad(*run_cli(capsys, str(path)), "malformed YAML")
    assert line.startswith(f"gradus: error: {path}: line 6, column 1: malformed YAML")


def test_bad_set_and_flags(capsys, tmp_path):
    path = str(write_yaml(tmp_path, GOOD))
    assert_bad(*run_cli(capsys, path, "--set", "train.max_steps"), "--set 'train.max_steps': expected key=value")
    assert_bad(*run_cli(capsys, path, "--set", "optim.base_lr=-1"), "(--set): optim.base_lr=-1: must be greater than 0")
    assert_bad(*run_cli(capsys, path, "--tokens-per-sec", "fast"), "--tokens-per-sec=fast")
    assert_bad(*run_cli(capsys, path, "--preset", "demo"), "give either a config file")
    assert_bad(*run_cli(capsys), "no config given")


def test_console_exit_code_and_no_traceback(tmp_path):
    path = write_yaml(tmp_path, with_stage(1, seq_len=4096))
    done = subprocess.run(
        [sys.executable, "-m", "gradus.cli", "schedule", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    line = path.read_text().splitlines().index("    seq_len: 4096") + 1  # the line of the offending key
    assert done.stderr.strip() == (
        f"gradus: error: {path}: line {line}: curriculum.stages[1].seq_len=4096 exceeds model.max_seq_len=256; "
        "lower the stage's seq_len or raise model.max_seq_len"
    )
