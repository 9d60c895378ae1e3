"""Every shipped preset loads, schedules, round-trips through YAML, and keeps its plan's numbers."""

from __future__ import annotations

import pytest
import yaml

from gradus.config import dump_yaml, from_dict, load_config
from gradus.curriculum import lr_at, resolve_schedule
from gradus.errors import ConfigError
from gradus.presets import list_presets, load_preset, preset_description, preset_path

PRESETS = [
    "aggressive", "hybrid-1024", "lr-extreme", "wikipedia-9stage", "streaming-1b", "1b-compact", "7b-base",
    "baseline", "demo", "demo-adaptive", "demo-ramp", "ramp-1024",
]


def sig2(x: float) -> float:
    """Two significant digits, the plans' rounding (6.78e-3 -> 6.8e-3)."""
    return float(f"{x:.2g}")


def test_all_presets_ship():
    assert set(PRESETS) <= set(list_presets())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_schedules(name):
    cfg = load_preset(name)
    cur = resolve_schedule(cfg)
    assert cur.total_steps > 0 and cur.total_tokens >= (cur.target_tokens or 0)
    assert all(s.steps > 0 for s in cur.stages), f"{name}: a stage never runs"
    assert all(s.seq_len <= cfg.model.max_seq_len for s in cur.stages)
    # a size preset, or (7b-base) an explicit shape
    assert cfg.model.preset in {"tiny", "small", "124M", "270M", "1B"} or (cfg.model.preset is None and cfg.model.n_layers)
    assert cur.to_json()["stages"][-1]["end_tokens"] == cur.total_tokens


@pytest.mark.parametrize("name", PRESETS)
def test_preset_yaml_round_trip(name, tmp_path):
    cfg = load_preset(name)
    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    again = load_config(path)
    assert again == cfg
    assert resolve_schedule(again).to_json() == resolve_schedule(cfg).to_json()


@pytest.mark.parametrize("name", PRESETS)
def test_preset_says_where_it_comes_from(name):
    first = preset_path(name).read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(f"# {name} — ")
    assert preset_description(name)


def test_unknown_preset_has_a_did_you_mean():
    with pytest.raises(ConfigError, match="unknown preset; did you mean 'aggressive'"):
        preset_path("agressive")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_path("../config")


def test_preset_by_file_name():
    assert preset_path("demo.yaml") == preset_path("demo")


def test_aggressive_constant_tokens_per_step():
    cur = resolve_schedule(load_preset("aggressive"))
    assert [(s.batch_size, s.seq_len) for s in cur.stages] == [
        (512, 64), (256, 128), (128, 256), (64, 512), (32, 1024), (16, 2048)
    ]
    assert [s.start_step for s in cur.stages] == [0, 2000, 5000, 10_000, 20_000, 40_000]
    assert {s.tokens_per_step for s in cur.stages} == {32_768}
    assert {s.peak_lr for s in cur.stages} == {6e-4}  # the plan's linear rule at a constant 32,768 tokens
    assert not cur.warnings


def test_hybrid_stays_at_1024_or_less_for_80_percent():
    cur = resolve_schedule(load_preset("hybrid-1024"))
    assert [s.seq_len for s in cur.stages] == [64, 128, 256, 512, 1024, 2048]
    assert {s.tokens_per_step for s in cur.stages} == {16_384}
    last = cur.stages[-1]
    assert last.start_step == 0.8 * cur.total_steps


def test_lr_extreme_reproduces_the_lr_plan():
    cfg = load_preset("lr-extreme")
    cur = resolve_schedule(cfg)
    assert cfg.optim.base_lr == 6e-4
    assert [sig2(s.peak_lr) for s in cur.stages] == [6.8e-3, 4.2e-3, 2.1e-3, 9e-4, 4.2e-4]
    assert [st.lr_multiplier for st in cfg.curriculum.stages] == [11.3, 7.0, 3.5, 1.5, 0.7]
    assert [s.warmup_steps for s in cur.stages] == [500, 300, 200, 100, 100]
    assert [s.grad_clip for s in cur.stages] == [5.0, 2.0, 1.0, 0.5, 0.3]
    assert {(s.decay, s.min_lr_ratio) for s in cur.stages} == {("cosine", 0.1)}
    # the first stage's shape is the one the 11.3 comes from
    assert (cur.stages[0].seq_len, cur.stages[0].batch_size) == (64, 256)
    # warmup of stage 1 reaches the peak at step 499; the cosine ends near 0.1 × peak
    assert lr_at(cur, 0) == pytest.approx(6.78e-3 / 500)
    assert lr_at(cur, 499) == pytest.approx(6.78e-3)
    assert lr_at(cur, 1999) == pytest.approx(6.78e-4, rel=1e-3)


def test_wikipedia_9stage_reproduces_its_plan():
    cfg = load_preset("wikipedia-9stage")
    cur = resolve_schedule(cfg)
    assert [s.start_step for s in cur.stages] == [0, 2000, 4000, 8000, 12_000, 18_000, 25_000, 35_000, 50_000]
    assert [s.batch_size for s in cur.stages] == [256, 128, 64, 32, 21, 16, 10, 8, 8]
    assert [st.lr_multiplier for st in cfg.curriculum.stages] == [11.3, 7.0, 3.5, 1.5, 1.0, 0.7, 0.5, 0.4, 0.3]
    assert cur.stages[0].seq_len == 64 and cur.stages[-1].seq_len == 2048
    assert cfg.data.sources[0].dataset == "wikimedia/wikipedia"
    assert cfg.data.sources[0].dataset_config == "20231101.en"


def test_streaming_1b_reproduces_its_plan():
    cfg = load_preset("streaming-1b")
    cur = resolve_schedule(cfg)
    assert [st.tokens for st in cfg.curriculum.stages] == [
        n * 1_000_000 for n in (10, 20, 30, 40, 75, 100, 125, 150, 200, 250)
    ]
    assert cur.target_tokens == 1_000_000_000
    assert cur.stages[0].seq_len == 8 and cur.stages[-1].seq_len == 2048
    seq = [s.seq_len for s in cur.stages]
    assert seq == sorted(seq)
    assert cur.stages[0].mix == pytest.approx({"fineweb": 0.95, "math": 0.05, "code": 0.0})
    assert cur.stages[-1].mix == pytest.approx({"fineweb": 0.55, "math": 0.25, "code": 0.20})
    for a, b in zip(cur.stages, cur.stages[1:], strict=False):  # the mix only moves one way
        assert b.mix["fineweb"] <= a.mix["fineweb"] and b.mix["math"] >= a.mix["math"] and b.mix["code"] >= a.mix["code"]
    assert {(s.name, s.dataset, s.dataset_config) for s in cfg.data.sources} == {
        ("fineweb", "HuggingFaceFW/fineweb-edu", "sample-10BT"),
        ("math", "Yxanul/cc-math-finest", None),
        ("code", "Yxanul/python-finest-pretrain", None),
    }
    assert cfg.data.tokenizer.name_or_path == "gpt2"


def test_baseline_has_no_curriculum():
    cfg = load_preset("baseline")
    cur = resolve_schedule(cfg)
    assert len(cur.stages) == 1 and cur.stages[0].seq_len == cfg.model.max_seq_len
    aggressive = resolve_schedule(load_preset("aggressive"))
    assert cur.stages[0].tokens_per_step == 32_768 and cur.target_tokens == aggressive.target_tokens


def test_demo_is_offline_and_small():
    cfg = load_preset("demo")
    cur = resolve_schedule(cfg)
    assert {s.builtin for s in cfg.data.sources} == {"python-docs", "python-stdlib", "arithmetic"}
    assert all(s.dataset is None and s.path is None for s in cfg.data.sources)
    assert cfg.data.tokenizer.name_or_path is None and cfg.data.tokenizer.train_vocab_size == 4096
    assert (cfg.model.preset, cfg.model.max_seq_len) == ("tiny", 256)
    assert [s.seq_len for s in cur.stages] == [32, 64, 128, 256]
    assert len({st.tokens_per_batch for st in cfg.curriculum.stages}) == 1
    assert 2_000_000 <= cur.target_tokens <= 3_000_000
    mixes = [s.mix for s in cur.stages]
    assert [m["prose"] for m in mixes] == sorted((m["prose"] for m in mixes), reverse=True)
    assert mixes[-1]["code"] > mixes[0]["code"] and mixes[-1]["math"] > mixes[0]["math"]
    assert cfg.train.early_stopping_patience is None
    assert 50 <= cfg.train.eval_every <= 200 and 100 <= cfg.train.checkpoint_every <= 400
    assert not cur.warnings


def test_ramp_1024_is_the_benchmarks_fastest_arm_scaled_up():
    """The preset is the arm `benchmarks/curriculum_speedup.py` measured fastest, built by the benchmark's own
    code at the preset's budget and tokens per step: the same stages, batch ramp and WSD schedule."""
    from gradus.experiments.speedup_arms import ARMS, Settings

    cfg = load_preset("ramp-1024")
    settings = Settings(final_len=1024, budget=2_621_440_000, tokens_per_step=524_288)
    arm = ARMS["seqwarm-long-ramp-wsd"].build(settings)
    got = cfg.curriculum
    assert [(s.seq_len, s.tokens, s.tokens_per_batch) for s in got.stages] == [
        (s["seq_len"], s["tokens"], s["tokens_per_batch"]) for s in arm["stages"]]
    assert (got.batch_ramp.direction, got.batch_ramp.alpha) == (arm["batch_ramp"]["direction"], arm["batch_ramp"]["alpha"])
    for key in ("schedule", "global_warmup_fraction", "cooldown_fraction", "cooldown_shape", "decay_to", "grad_clip"):
        assert getattr(got, key) == arm[key], key
    cur = resolve_schedule(cfg)
    assert cur.total_tokens == cur.target_tokens == 2_621_440_000
    assert [s.batch_size for s in cur.stages] == [2048, 1024, 1024, 1024, 512]
    assert not cur.warnings
