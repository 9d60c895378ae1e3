"""Config schema: loading, token counts, --set overrides, YAML round trip, and problems reported at once."""

from __future__ import annotations

import copy
import textwrap

import pytest
import yaml

from gradus.config import (
    GradusConfig,
    apply_overrides,
    config_problems,
    dump_yaml,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from gradus.errors import ConfigError

BASE = {
    "model": {"preset": "tiny", "max_seq_len": 256},
    "data": {
        "sources": [
            {"name": "prose", "builtin": "python-docs"},
            {"name": "code", "builtin": "python-stdlib"},
        ]
    },
    "curriculum": {
        "target_tokens": "1M",
        "stages": [
            {"step": 0, "seq_len": 64, "batch_size": 32},
            {"step": 100, "seq_len": 128, "tokens_per_batch": "4K"},
        ],
    },
}


def config(**sections) -> dict:
    data = copy.deepcopy(BASE)
    data.update(sections)
    return data


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_dict(data, origin="cfg")
    return info.value.problems


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- loading
def test_plans_step_form_loads_as_written():
    cfg = from_dict(config(curriculum={"target_tokens": "1M", "stages": [{"step": 0, "seq_len": 64, "batch_size": 512}]}))
    stage = cfg.curriculum.stages[0]
    assert (stage.step, stage.seq_len, stage.batch_size) == (0, 64, 512)


def test_token_counts_in_fields():
    cfg = from_dict(
        config(
            curriculum={
                "target_tokens": "1.5B",
                "stages": [
                    {"tokens": "10M", "seq_len": 8, "tokens_per_batch": 32_768},
                    {"tokens": "20M", "seq_len": 16, "tokens_per_batch": "32_768", "warmup_tokens": "2M"},
                ],
            }
        )
    )
    cur = cfg.curriculum
    assert cur.target_tokens == 1_500_000_000
    assert [s.tokens for s in cur.stages] == [10_000_000, 20_000_000]
    assert [s.tokens_per_batch for s in cur.stages] == [32_768, 32_768]
    assert cur.stages[1].warmup_tokens == 2_000_000


def test_step_counts_accept_units():
    cfg = from_dict(config(curriculum={"target_tokens": "1M", "stages": [
        {"step": 0, "seq_len": 64, "batch_size": 8}, {"step": "2k", "seq_len": 128, "batch_size": 8}]},
        train={"max_steps": "10k"}))
    assert cfg.curriculum.stages[1].step == 2000
    assert cfg.train.max_steps == 10_000


def test_lr_scale_is_an_alias_of_lr_multiplier():
    data = config()
    data["curriculum"]["stages"][0]["lr_scale"] = 11.3
    cfg = from_dict(data)
    assert cfg.curriculum.stages[0].lr_multiplier == 11.3
    assert "lr_multiplier: 11.3" in dump_yaml(cfg)


def test_defaults_fill_unset_sections():
    cfg = from_dict(config())
    assert cfg.optim.base_lr == 6e-4
    assert cfg.curriculum.schedule == "wsd"  # the default since 0.3 (issue 31: no restarts without warmup)
    assert cfg.train.seed == 0


# ---------------------------------------------------------------------------------------- overrides
def test_apply_overrides_nested_indexed_and_parsed_as_yaml():
    data = apply_overrides(
        config(),
        [
            "train.max_steps=100",
            "curriculum.stages[1].seq_len=256",
            "optim.base_lr=3e-3",
            "curriculum.target_tokens=2M",
            "train.early_stopping_patience=null",
            "curriculum.stages[0].mix={prose: 0.5, code: 0.5}",
            "name=my run",
        ],
    )
    assert data["train"]["max_steps"] == 100
    assert data["curriculum"]["stages"][1]["seq_len"] == 256
    assert data["train"]["early_stopping_patience"] is None
    assert data["curriculum"]["stages"][0]["mix"] == {"prose": 0.5, "code": 0.5}
    assert data["name"] == "my run"
    cfg = from_dict(data)
    assert cfg.optim.base_lr == 3e-3
    assert cfg.curriculum.target_tokens == 2_000_000
    assert cfg.curriculum.stages[1].seq_len == 256
    assert BASE["curriculum"]["stages"][1]["seq_len"] == 128  # the input is not modified


def test_apply_overrides_can_replace_a_whole_list():
    data = apply_overrides(config(), ["curriculum.stages=[{seq_len: 256, tokens_per_batch: 4096}]"])
    cfg = from_dict(data)
    assert len(cfg.curriculum.stages) == 1 and cfg.curriculum.stages[0].seq_len == 256


@pytest.mark.parametrize(
    ("item", "message"),
    [("train.max_steps", "expected key=value"), ("curriculum.stages[5].seq_len=1", "out of range")],
)
def test_apply_overrides_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(config(), [item])


def test_load_config_with_set(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config()), encoding="utf-8")
    cfg = load_config(path, ["curriculum.stages[0].seq_len=32", "optim.base_lr=1e-3"])
    assert cfg.curriculum.stages[0].seq_len == 32
    assert cfg.optim.base_lr == 1e-3


def test_a_bad_override_is_blamed_on_the_set(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config()), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["curriculum.stages[0].seq_len=999"])
    assert info.value.problems == [
        f"{path} (--set): curriculum.stages[0].seq_len=999 exceeds model.max_seq_len=256; "
        "lower the stage's seq_len or raise model.max_seq_len"
    ]


def test_a_tokenizer_named_beside_train_vocab_size_is_refused_not_ignored():
    """The demo trains its BPE (train_vocab_size); a tokenizer given on top of it used to be ignored in silence."""
    data = config()
    data["data"]["tokenizer"] = {"name_or_path": "my/tokenizer.json", "train_vocab_size": 4096}
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    (line,) = info.value.problems
    assert "name_or_path='my/tokenizer.json' and train_vocab_size=4096 both given" in line
    assert "--set data.tokenizer.train_vocab_size=null" in line
    data["data"]["tokenizer"] = {"name_or_path": "gpt2", "train_vocab_size": 4096}  # what older configs wrote
    assert from_dict(data).data.tokenizer.train_vocab_size == 4096
    data["data"]["tokenizer"] = {"train_vocab_size": 4096}
    assert from_dict(data).data.tokenizer.train_vocab_size == 4096


# ---------------------------------------------------------------------------------------- round trip
def test_yaml_round_trip_keeps_nulls_that_override_defaults(tmp_path):
    data = config(train={"early_stopping_patience": None, "checkpoint_every": None})
    data["data"]["tokenizer"] = {"name_or_path": None, "train_vocab_size": 4096}
    data["model"]["preset"] = None
    cfg = from_dict(data)
    assert cfg.train.early_stopping_patience is None
    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    assert again.data.tokenizer.name_or_path is None
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_to_dict_leaves_out_unset_optionals():
    plain = to_dict(from_dict(config()))
    assert "batch_size" not in plain["curriculum"]["stages"][1]
    assert plain["curriculum"]["stages"][1]["tokens_per_batch"] == 4000


# ---------------------------------------------------------------------------------------- problems
def test_every_problem_is_reported_at_once():
    data = config(optim={"base_lr": 0})
    data["curriculum"]["stages"][0].update(tokens_per_batch=4096, seq_len=512, mix={"prose": -1, "cod": 1})
    data["curriculum"]["stages"][1]["grad_clip"] = -1
    data["modle"] = {}
    problems = problems_of(data)
    expected = [
        "cfg: curriculum.stages[1].grad_clip=-1: must be greater than 0",
        "cfg: optim.base_lr=0: must be greater than 0",
        "cfg: modle: unknown key 'modle'; did you mean 'model'?",
        "cfg: curriculum.stages[0]: both batch_size=32 and tokens_per_batch=4096 are given; keep one "
        "(batch_size fixes the examples per step, tokens_per_batch derives them from seq_len)",
        "cfg: curriculum.stages[0].mix.prose=-1: mix weights must be ≥ 0; use 0 to leave a source out",
        "cfg: curriculum.stages[0].seq_len=512 exceeds model.max_seq_len=256; "
        "lower the stage's seq_len or raise model.max_seq_len",
        "cfg: curriculum.stages[0].mix.cod: unknown source 'cod'; did you mean 'code'?",
    ]
    assert sorted(problems) == sorted(expected)


def test_stage_checks_run_even_when_a_field_of_that_stage_fails():
    data = config()
    data["curriculum"]["stages"][1].update(seq_len=-5, batch_size=8)  # a field error and both batch forms
    problems = problems_of(data)
    assert any("stages[1].seq_len=-5: must be greater than 0" in p for p in problems)
    assert any("stages[1]: both batch_size=8 and tokens_per_batch=4K" in p for p in problems)


def test_typo_of_a_required_section_is_one_problem():
    data = config()
    data["curriculm"] = data.pop("curriculum")
    assert problems_of(data) == ["cfg: curriculm: unknown key 'curriculm'; did you mean 'curriculum'?"]


def test_unknown_nested_key_did_you_mean_includes_aliases():
    data = config()
    data["curriculum"]["stages"][0]["lr_scal"] = 2
    data["data"]["sources"][0]["buildin"] = "x"
    problems = problems_of(data)
    assert "cfg: curriculum.stages[0].lr_scal: unknown key 'lr_scal'; did you mean 'lr_scale'?" in problems
    assert "cfg: data.sources[0].buildin: unknown key 'buildin'; did you mean 'builtin'?" in problems


@pytest.mark.parametrize(
    ("stage", "fragment"),
    [
        ({"seq_len": 64}, "stages[0]: neither batch_size nor tokens_per_batch is given"),
        ({"seq_len": 64, "batch_size": 8, "peak_lr": 1e-3, "lr_rule": "seq_batch"}, "peak_lr and lr_rule are given"),
        ({"seq_len": 64, "batch_size": 8, "warmup_steps": 5, "warmup_tokens": "1M"}, "both warmup_steps and warmup_tokens"),
        ({"seq_len": 64, "batch_size": 8, "warmup_cap": 5}, "stages[0].warmup_cap=5: only bounds a warmup_tokens"),
        ({"seq_len": 64, "batch_size": 8, "grad_clip": 1, "clip_rule": "by_length"}, "both grad_clip=1 and clip_rule"),
        ({"seq_len": 64, "batch_size": 8, "mix": {"prose": 0, "code": 0}}, "stages[0].mix: the weights sum to 0"),
        ({"seq_len": 64, "batch_size": 8, "step": 0, "tokens": "1M"}, "both step=0 and tokens=1M are given"),
        ({"seq_len": 64, "batch_size": 8, "peak_lr": 0}, "stages[0].peak_lr=0: must be greater than 0"),
        ({"seq_len": 64, "batch_size": 8, "lr_scale": -2}, "stages[0].lr_scale=-2: must be greater than 0"),
        ({"seq_len": 64, "batch_size": 8, "tokens_per_batch": "ten"}, "tokens_per_batch='ten': token count must be"),
        ({"seq_len": 64, "batch_size": 8, "peak_lr": 1e30}, "stages[0].peak_lr=1e+30: must be less than or equal to 10"),
        ({"seq_len": 64, "batch_size": 8, "tokens": "1e30"}, "tokens='1e30': token count must be at most 1,000T"),
    ],
)
def test_stage_problems(stage, fragment):
    problems = problems_of(config(curriculum={"target_tokens": "1M", "stages": [stage]}))
    assert any(fragment in p for p in problems), problems


@pytest.mark.parametrize(
    ("stages", "fragment"),
    [
        ([{"step": 0, "seq_len": 64, "batch_size": 8}, {"step": 0, "seq_len": 64, "batch_size": 8}],
         "curriculum.stages[1].step=0 is not after stages[0].step=0; stage starts must increase"),
        ([{"step": 5, "seq_len": 64, "batch_size": 8}], "curriculum.stages[0].step=5: the first stage must start at step 0"),
        ([{"step": 0, "seq_len": 64, "batch_size": 8}, {"seq_len": 64, "batch_size": 8}], "stages[1].step is missing"),
        ([{"step": 0, "seq_len": 64, "batch_size": 8}, {"tokens": "1M", "seq_len": 64, "batch_size": 8}],
         "mix of step starts and token budgets"),
    ],
)
def test_stage_order_problems(stages, fragment):
    problems = problems_of(config(curriculum={"target_tokens": "1M", "stages": stages}))
    assert any(fragment in p for p in problems), problems


def test_step_stages_need_a_stopping_rule():
    problems = problems_of(config(curriculum={"stages": [{"step": 0, "seq_len": 64, "batch_size": 8}]}))
    assert any("curriculum.target_tokens is missing" in p for p in problems)
    # train.max_steps is enough
    from_dict(config(curriculum={"stages": [{"step": 0, "seq_len": 64, "batch_size": 8}]}, train={"max_steps": 10}))


def test_cross_section_problems():
    data = config(model={"preset": "124m", "d_model": 100, "n_heads": 3, "max_seq_len": 256},
                  train={"eval_reference_seq_len": 1024})
    problems = problems_of(data)
    assert "cfg: model.preset='124m': unknown model preset; did you mean '124M'? known: tiny, small, 124M, 270M, 1B" in problems
    assert "cfg: model.d_model=100 is not divisible by model.n_heads=3; pick a divisor" in problems
    assert any("train.eval_reference_seq_len=1024 exceeds model.max_seq_len=256" in p for p in problems)


def test_config_problems_is_empty_for_a_valid_config():
    assert config_problems(config()) == []
    assert isinstance(from_dict(config()), GradusConfig)


# ------------------------------------------------------------------------------------- files, lines
def test_schema_problems_carry_line_numbers(tmp_path):
    path = write(tmp_path, """\
        model: {preset: tiny, max_seq_len: 256}
        data:
          sources:
            - {name: prose, builtin: python-docs}
        curriculum:
          target_tokens: 1M
          stages:
            - {step: 0, seq_len: 64, batch_size: 8}
            - {step: 0, seq_len: 512, batch_size: 8}
        optim:
          base_lr: -1
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert f"{path}: line 11: optim.base_lr=-1: must be greater than 0" in problems
    assert any(p.startswith(f"{path}: line 9: curriculum.stages[1].seq_len=512 exceeds") for p in problems)
    assert any(p.startswith(f"{path}: line 9: curriculum.stages[1].step=0 is not after") for p in problems)


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "data:\n  sources: [\n    {name: a\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}: line 4, column 1: malformed YAML")


def test_duplicate_keys_are_problems(tmp_path):
    path = write(tmp_path, yaml.safe_dump(config()) + "optim: {base_lr: 1.0e-3}\noptim: {base_lr: 2.0e-3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("optim: duplicate key (lines" in p for p in info.value.problems)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "the file is empty"), ("- a\n- b\n", "expected a mapping at the top")],
)
def test_empty_or_non_mapping_file(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_model_presets_come_from_one_table():
    import gradus.model
    import gradus.sizes
    from gradus.config import MODEL_PRESETS, SIZE_PRESETS, ModelConfig

    assert MODEL_PRESETS == ("tiny", "small", "124M", "270M", "1B") == tuple(SIZE_PRESETS)
    assert gradus.model.SIZE_PRESETS is SIZE_PRESETS and gradus.sizes.SIZE_PRESETS is SIZE_PRESETS
    description = ModelConfig.model_fields["preset"].description
    assert description == "Size preset (tiny, small, 124M, 270M, 1B) filling unset shape fields."
    assert SIZE_PRESETS["124M"] == {"n_layers": 12, "d_model": 768, "n_heads": 12, "ffn_hidden": 2048}


def test_field_value_reads_a_raw_value_as_the_schema_does():
    from gradus.config import ModelConfig, StageConfig, field_value

    assert field_value(StageConfig, {"step": "2k"}, "step") == 2000  # the schema's unit parser
    assert field_value(StageConfig, {"tokens_per_batch": "4K"}, "tokens_per_batch") == 4000
    assert field_value(ModelConfig, {}, "max_seq_len") == 2048  # absent: the field's default
    assert field_value(StageConfig, {}, "seq_len") is None  # absent and required
    assert field_value(StageConfig, {"seq_len": -5}, "seq_len") is None  # invalid: the schema reports it
    assert field_value(StageConfig, {"step": "ten"}, "step") is None
    assert field_value(ModelConfig, {"max_seq_len": "256"}, "max_seq_len") == 256


def test_cross_checks_read_unit_counts_when_another_field_fails():
    # optim.base_lr fails, so the whole-config check runs on the raw mapping: "1k" is still read as 1000.
    data = config(optim={"base_lr": 0}, curriculum={"target_tokens": "1M", "stages": [
        {"step": "1k", "seq_len": 64, "batch_size": 8}, {"step": "500", "seq_len": 64, "batch_size": 8}]})
    problems = problems_of(data)
    assert "cfg: curriculum.stages[0].step=1k: the first stage must start at step 0" in problems
    assert "cfg: curriculum.stages[1].step=500 is not after stages[0].step=1k; stage starts must increase" in problems
    assert "cfg: optim.base_lr=0: must be greater than 0" in problems


def test_mix_weights_are_checked_by_the_schema():
    from pydantic import ValidationError

    from gradus.config import StageConfig

    with pytest.raises(ValidationError, match="finite number"):  # no config field takes NaN/inf (issue 17)
        StageConfig(seq_len=64, batch_size=8, mix={"a": float("nan")})
    with pytest.raises(ValidationError, match="the weights sum to 0"):
        StageConfig(seq_len=64, batch_size=8, mix={"a": 0, "b": 0.0})
    assert StageConfig(seq_len=64, batch_size=8, mix={"a": 0, "b": 2}).mix == {"a": 0.0, "b": 2.0}
    # beside another stage's field error, every mix problem is still one line with its path
    data = config()
    data["curriculum"]["stages"][0]["mix"] = {"prose": -0.5, "code": 1}
    data["curriculum"]["stages"][1].update(mix={"prose": 0, "code": 0}, seq_len=0)
    problems = problems_of(data)
    assert "cfg: curriculum.stages[0].mix.prose=-0.5: mix weights must be ≥ 0; use 0 to leave a source out" in problems
    assert ("cfg: curriculum.stages[1].mix: the weights sum to 0; give at least one source a positive weight"
            in problems)
    assert "cfg: curriculum.stages[1].seq_len=0: must be greater than 0" in problems


def test_lanes_default_and_document_mode():
    assert from_dict(BASE).data.packing.lanes == 256
    doc = config(data={**BASE["data"], "packing": {"mode": "document"}})
    assert from_dict(doc).data.packing.mode == "document"  # the default lanes do not apply to document mode
    doc["data"]["packing"]["lanes"] = 8
    assert any("lanes > 1 needs mode: concat" in p and "data.packing" in p for p in problems_of(doc)), problems_of(doc)


def test_bare_on_off_in_yaml_mean_the_words_for_switches():
    # YAML 1.1 reads `--set train.compile=off` as False; the switch takes it as "off", and still refuses nonsense.
    from gradus.config import OptimConfig, TrainConfig

    assert TrainConfig(compile=False).compile == "off" and TrainConfig(compile=True).compile == "on"
    assert OptimConfig(fused=False).fused == "off"
    with pytest.raises(ValueError):
        TrainConfig(compile="maybe")


def test_a_base_lr_or_target_beyond_any_run_is_refused():
    problems = problems_of(config(optim={"base_lr": 1e30}, curriculum={"target_tokens": "1e30",
                                                                      "stages": [{"seq_len": 64, "batch_size": 8}]}))
    assert any("optim.base_lr=1e+30: must be less than or equal to 10" in p for p in problems), problems
    assert any("target_tokens='1e30': token count must be at most 1,000T" in p for p in problems), problems
