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
from gradus.curriculum.rules import SEQ_BATCH_RULE

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
    footnote = [line for line in out.splitlines() if line.startswith("LR rule seq_batch:")]
    assert footnote == [f"LR rule seq_batch: {SEQ_BATCH_RULE}"]  # the rules' own words (gradus.curriculum.rules)


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


def with_data(**fields) -> dict:
    """GOOD with extra ``data`` fields."""
    data = json.loads(json.dumps(GOOD))
    data["data"].update(fields)
    return data


# The dataset GOOD is planned against below: 1,000 documents, 20% held out, so 800 train; 2M tokens.
SIZED = with_data(dataset_documents=1000, dataset_tokens="2M", validation={"fraction": 0.2})


def test_dataset_size_gives_coverage_and_chunks_per_document(capsys, tmp_path):
    code, out, err = run_cli(capsys, str(write_yaml(tmp_path, SIZED)), "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert (data["dataset_documents"], data["dataset_training_documents"]) == (1000, 800)
    assert data["dataset_tokens"] == 2_000_000  # the config's figure stands in for --dataset-tokens
    # stage 0: 100 steps × 32 = 3,200 examples / 800 = 4.0; stage 1: 195 steps × 32 = 6,240 / 800 = 7.8
    assert [s["examples"] for s in data["stages"]] == [3200, 6240]
    assert [s["dataset_coverage"] for s in data["stages"]] == pytest.approx([4.0, 7.8])
    assert data["dataset_coverage"] == pytest.approx(9440 / 800)
    # 2M tokens / 1,000 documents = 2,000 tokens a document: 31.25 windows of 64, 15.625 of 128
    assert [s["chunks_per_document"] for s in data["stages"]] == pytest.approx([31.25, 15.625])
    # by tokens: 204,800 and 798,720 of the 2M
    assert [s["dataset_fraction"] for s in data["stages"]] == pytest.approx([0.1024, 0.39936])


def test_dataset_tokens_flag_wins_over_the_config(capsys, tmp_path):
    code, out, _ = run_cli(capsys, str(write_yaml(tmp_path, SIZED)), "--json", "--dataset-tokens", "4M")
    data = json.loads(out)
    assert code == 0 and data["dataset_tokens"] == 4_000_000
    assert [s["chunks_per_document"] for s in data["stages"]] == pytest.approx([62.5, 31.25])
    assert data["stages"][0]["dataset_fraction"] == pytest.approx(0.0512)


def test_documents_without_tokens_give_coverage_only(capsys, tmp_path):
    code, out, _ = run_cli(capsys, str(write_yaml(tmp_path, with_data(dataset_documents="1.6k"))), "--json")
    data = json.loads(out)
    assert code == 0 and data["dataset_tokens"] is None
    # the default held-out share 0.005: 1,600 × 0.995 = 1,592 training documents
    assert data["dataset_training_documents"] == 1592
    assert data["stages"][0]["dataset_coverage"] == pytest.approx(3200 / 1592)
    assert all("chunks_per_document" not in s and "dataset_fraction" not in s for s in data["stages"])


def test_no_dataset_size_adds_no_stage_columns(capsys):
    code, out, _ = run_cli(capsys, "--preset", "aggressive", "--json")
    data = json.loads(out)
    assert code == 0 and data["dataset_documents"] is None and data["dataset_training_documents"] is None
    assert not {"dataset_coverage", "chunks_per_document", "dataset_fraction"} & set(data["stages"][0])
    _, out, _ = run_cli(capsys, "--preset", "aggressive")
    assert "coverage" not in out and "dataset:" not in out


def test_table_shows_coverage_and_the_dataset(capsys, tmp_path):
    code, out, _ = run_cli(capsys, str(write_yaml(tmp_path, SIZED)))
    assert code == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("#"))
    assert header.endswith("data epochs  coverage ×")
    assert next(line for line in lines if line.startswith("0 ")).endswith(" 4")
    assert next(line for line in lines if line.startswith("1 ")).endswith(" 7.8")
    assert next(line for line in lines if line.strip().startswith("total")).endswith(" 11.8")
    assert "dataset: 1,000 documents, 800 for training after the 20% held out, 2M tokens" in out


def test_json_model_and_optim_blocks(capsys, tmp_path):
    code, out, _ = run_cli(capsys, str(write_yaml(tmp_path, GOOD)), "--json")
    data = json.loads(out)
    assert code == 0
    model = data["model"]
    assert model["preset"] == "tiny" and model["vocab_from"] == "the gpt2 tokenizer"
    shape = model["shape"]
    assert (shape["n_layers"], shape["d_model"], shape["n_heads"], shape["ffn_hidden"]) == (4, 64, 4, 176)
    assert (shape["vocab_size"], shape["max_seq_len"]) == (50257, 256)
    # per block 2·64² (q, o) + 2·64² (k, v) + 3·64·176 (SwiGLU) + 2·64 (norms) = 50,304; ×4 + 64 (final norm)
    assert model["params_non_embedding"] == 201_280
    assert model["params_total"] == 201_280 + 50257 * 64  # the tied embedding, once
    assert model["dropout"] == 0.0
    assert data["optim"] == {"base_lr": 6e-4, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1}


@pytest.mark.parametrize(
    ("fields", "vocab", "source"),
    [
        ({"model": {"vocab_size": 1000}}, 1000, "model.vocab_size"),
        ({"data": {"tokenizer": {"name_or_path": None, "train_vocab_size": 4096}}}, 4096,
         "data.tokenizer.train_vocab_size"),
        ({"data": {"tokenizer": {"name_or_path": "my/tok"}}}, 50257, "assumed GPT-2's"),
    ],
)
def test_model_vocabulary_comes_from_the_config(capsys, tmp_path, fields, vocab, source):
    data = json.loads(json.dumps(GOOD))
    for section, values in fields.items():
        data[section].update(values)
    code, out, _ = run_cli(capsys, str(write_yaml(tmp_path, data)), "--json")
    model = json.loads(out)["model"]
    assert code == 0 and model["shape"]["vocab_size"] == vocab and model["vocab_from"].startswith(source)
    assert model["params_total"] == 201_280 + vocab * 64
    _, out, _ = run_cli(capsys, str(write_yaml(tmp_path, data)))
    assert ("vocab assumed" in out) == source.startswith("assumed")


def test_table_header_has_the_model_and_optimizer(capsys):
    code, out, _ = run_cli(capsys, "--preset", "7b-base")
    assert code == 0
    line = out.splitlines()[2]
    assert line.startswith("model: 32 layers × 4096 wide, 32 heads (8 kv) of 128, SwiGLU 14336, vocab 50257;")
    assert "N=6.98B non-embedding, 7.19B total · dropout 0.1 · AdamW β1 0.9, β2 0.95, weight decay 0.05" in line


def test_header_says_the_stages_own_decay(capsys):
    # 7b-base overrides the curriculum's cosine to 0.1× in every stage: A to 2e-5/1.5e-4, B to 2e-5/1e-4, C constant
    code, out, _ = run_cli(capsys, "--preset", "7b-base")
    assert code == 0
    assert out.splitlines()[1].endswith(
        "LR per stage: warmup, then cosine to 0.133× (floor 2e-5) in stage 0; cosine to 0.2× (floor 2e-5) in "
        "stage 1; constant in stage 2"
    )
    # stages sharing one decay keep the one phrase (wikipedia-9stage: nine peaks, so no single floor)
    _, out, _ = run_cli(capsys, "--preset", "wikipedia-9stage")
    assert out.splitlines()[1].endswith("LR per stage: warmup, then cosine to 0.1× the stage's peak")
    # a stage overriding the floor of a config whose default is 0.1
    _, out, _ = run_cli(capsys, "--preset", "lr-extreme", "--set", "curriculum.stages[4].min_lr_ratio=0.5",
                        "--set", "curriculum.stages[3].decay=linear")
    assert out.splitlines()[1].endswith(
        "cosine to 0.1× in stages 0, 1, 2; linear to 0.1× (floor 9e-5) in stage 3; "
        "cosine to 0.5× (floor 2.1e-4) in stage 4"
    )


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
    "zero dataset documents": (
        with_data(dataset_documents=0),
        ["data.dataset_documents=0: must be greater than 0"],
    ),
    "bad dataset tokens": (
        with_data(dataset_tokens="lots"),
        ["data.dataset_tokens='lots': token count must be a number such as 10M"],
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


def test_model_without_a_shape(capsys, tmp_path):
    # the model block of --json needs a shape: preset null and no n_layers is refused, as `gradus train` would
    data = json.loads(json.dumps(GOOD))
    data["model"] = {"preset": None, "d_model": 64, "n_heads": 4, "max_seq_len": 256}
    assert_bad(*run_cli(capsys, str(write_yaml(tmp_path, data))), "model.n_layers is missing; give it")


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


def test_a_local_tokenizer_file_gives_its_own_vocabulary_everywhere_in_one_schedule(capsys, tmp_path,
                                                                                   tokenizer_json):
    """gradus schedule used to take GPT-2's 50,257 for a local tokenizer file in its GPU projection while its
    header read the file (two sizes in one output, issue 28/31): one guess now, the file's own count."""
    data = json.loads(json.dumps(GOOD))
    data["data"]["tokenizer"] = {"name_or_path": tokenizer_json}
    code, out, _ = run_cli(capsys, str(write_yaml(tmp_path, data)), "--json", "--gpu", "h100")
    report = json.loads(out)
    assert code == 0 and report["model"]["shape"]["vocab_size"] == 512
    assert report["model"]["vocab_from"] == tokenizer_json
    assert (report["cost"]["vocab_size"], report["cost"]["vocab_source"]) == (512, tokenizer_json)


def test_the_header_says_where_a_warmup_in_tokens_comes_from(capsys, tmp_path):
    # It printed "(0.02 of the run)", the unused default fraction, for a warmup given in tokens (10% of the run).
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"preset": "tiny", "max_seq_len": 256}, "data": {"sources": [{"name": "a", "builtin": "arithmetic"}]},
        "curriculum": {"schedule": "global", "global_warmup_tokens": 25_600, "target_tokens": 256_000,
                       "stages": [{"seq_len": 64, "batch_size": 4, "tokens": 256_000}]}}))
    code, out, _ = run_cli(capsys, str(path))
    assert code == 0 and "warmup 100 steps (its first 25.6K tokens)" in out and "0.02 of the run" not in out
