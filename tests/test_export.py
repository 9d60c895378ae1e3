"""``gradus export`` without transformers: the name mapping, the HF -> GPT loader behind
``model.init_from``, which checkpoint a run resolves to, and every bad input (one line, exit 2, nothing
written)."""

from __future__ import annotations

import json

import pytest
import torch
from run_fixtures import TEXT, tiny_model, tiny_tokenizer, write_run

from gradus.cli import main
from gradus.errors import ConfigError
from gradus.export.hf import export_hf, load_hf, load_hf_weights
from gradus.export.llama import export_problems, gpt_name, llama_config, llama_name, shape_from_llama_config
from gradus.inference.load import load_model, resolve_checkpoint


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_every_gpt_tensor_has_a_llama_name_and_back(tok):
    model = tiny_model(tok, n_kv_heads=2, tie_embeddings=False)
    names = list(model.state_dict())
    assert len(names) == 2 + 2 * 9 + 1  # embedding, head, 9 per block, final norm
    mapped = [llama_name(n) for n in names]
    assert None not in mapped and len(set(mapped)) == len(names)
    assert [gpt_name(m) for m in mapped] == names
    assert llama_name("blocks.1.mlp.gate.weight") == "model.layers.1.mlp.gate_proj.weight"
    assert llama_name("blocks.0.mlp_norm.weight") == "model.layers.0.post_attention_layernorm.weight"


def test_init_from_loader_is_the_inverse_of_export(tmp_path, tok):
    for kw in ({}, {"n_kv_heads": 2, "tie_embeddings": False, "rope_scaling": 2.0, "rope_theta": 500.0,
                    "norm_eps": 1e-6, "ffn_hidden": 40}):
        model = tiny_model(tok, seed=5, **kw)
        out = export_hf(model, tok, tmp_path / f"hf{len(kw)}")
        back = load_hf_weights(out)
        assert back.shape == model.shape
        for name, tensor in model.state_dict().items():
            assert torch.equal(back.state_dict()[name], tensor), name
        ids = torch.tensor([tok.encode(TEXT)[:40]])
        assert torch.equal(back(ids)[0], model(ids)[0])
        again, tok2 = load_hf(out)
        assert tok2.encode(TEXT) == tok.encode(TEXT) and tok2.eos_id == tok.eos_id


def test_bf16_export_loads_back_as_float32_close_to_the_original(tmp_path, tok):
    model = tiny_model(tok, seed=6)
    out = export_hf(model, tok, tmp_path / "hf", dtype="bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = load_hf_weights(out)
    w = back.tok_emb.weight
    assert w.dtype == torch.float32
    assert 0 < float((w - model.tok_emb.weight).detach().abs().max()) < 0.01  # rounded to bf16, not garbled


def test_llama_config_fields_and_shapes_llama_cannot_hold(tok):
    shape = tiny_model(tok, n_kv_heads=2, rope_scaling=2.0).shape
    cfg = llama_config(shape, eos_id=0)
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"]) == (32, 96, 2)
    assert cfg["rope_scaling"]["factor"] == 2.0 and cfg["rms_norm_eps"] == 1e-5
    assert shape_from_llama_config(cfg, "x") == shape
    with pytest.raises(ConfigError, match="attention_bias=True: gradus has no biases"):
        shape_from_llama_config({**cfg, "attention_bias": True}, "x")
    with pytest.raises(ConfigError, match="rope type='yarn'"):
        shape_from_llama_config({**cfg, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "x")
    assert export_problems(shape.to_dict(), ["tok_emb.weight", "norm.weight"]) == []
    problems = export_problems({**shape.to_dict(), "qk_norm": True}, ["tok_emb.weight", "blocks.0.attn.q_norm.weight"])
    assert problems[0].startswith("model shape field qk_norm=True has no equivalent in the Llama layout")
    assert problems[1].startswith("tensor 'blocks.0.attn.q_norm.weight' has no place in the Llama layout")


def test_a_run_resolves_to_its_newest_checkpoint_or_the_one_asked_for(tmp_path, tok):
    run = write_run(tmp_path / "run", tiny_model(tok), tok, steps=(10, 20), best=True)
    ck = run / "checkpoints"
    assert resolve_checkpoint(run) == ck / "step_00000020"
    assert resolve_checkpoint(run, "best") == ck / "best"
    assert resolve_checkpoint(run, "10") == resolve_checkpoint(run, "step_10") == ck / "step_00000010"
    assert resolve_checkpoint(ck / "step_00000010") == ck / "step_00000010"
    with pytest.raises(ConfigError, match=r"has no such checkpoint \(steps: 10, 20; or best, latest\)"):
        resolve_checkpoint(run, "15")
    loaded = load_model(run, "best")
    assert loaded.meta["step"] == 10 and loaded.tokenizer.identity() == tok.identity()


def test_ema_weights_are_exported_when_asked(tmp_path, tok, capsys):
    from safetensors.torch import save_model

    model, ema = tiny_model(tok, seed=7), tiny_model(tok, seed=8)
    run = write_run(tmp_path / "run", model, tok)
    save_model(ema, str(run / "checkpoints" / "step_00000010" / "ema.safetensors"))
    assert main(["export", str(run), "--ema", "--hf", str(tmp_path / "hf")]) == 0
    assert torch.equal(load_hf_weights(tmp_path / "hf").tok_emb.weight, ema.tok_emb.weight)
    provenance = json.loads((tmp_path / "hf" / "gradus_export.json").read_text())
    assert provenance["ema"] is True and provenance["step"] == 10
    other = write_run(tmp_path / "plain", model, tok)
    assert main(["export", str(other), "--ema", "--hf", str(tmp_path / "hf2")]) == 2
    assert "holds no averaged weights" in capsys.readouterr().err
    assert not (tmp_path / "hf2").exists()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradus: error: "), err
    return err[0]


def test_export_of_something_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hi")
    assert main(["export", str(tmp_path / "notes"), "--hf", str(tmp_path / "out")]) == 2
    assert "not a gradus run or checkpoint" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["the run", "its parent", "another run"])
def test_force_never_replaces_a_folder_that_holds_a_run(tmp_path, tok, capsys, where):
    # `export run --hf run --force` deleted the run it exported, checkpoints and metrics with it (exit 0).
    run = write_run(tmp_path / "runs" / "run", tiny_model(tok), tok)
    other = write_run(tmp_path / "other" / "r", tiny_model(tok), tok)
    out = {"the run": run, "its parent": tmp_path / "runs", "another run": tmp_path / "other"}[where]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["export", str(run), "--hf", str(out), "--force"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"gradus: error: --hf {out}: holds ") and "which --force would delete" in line
    assert ("the run exported from" in line) == (where != "another run") and other.is_dir()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_export_to_a_non_empty_directory_needs_force(tmp_path, tok, capsys):
    run = write_run(tmp_path / "run", tiny_model(tok), tok)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(run), "--hf", str(out)]) == 2
    assert "directory exists and is not empty; pass --force" in _one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert main(["export", str(run), "--hf", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] and modes["config.json"] & 0o044 == 0o044  # shareable
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_export_of_a_shape_llama_cannot_express(tmp_path, tok, capsys):
    run = write_run(tmp_path / "run", tiny_model(tok), tok, shape_extra={"parallel_residual": True})
    assert main(["export", str(run / "checkpoints" / "step_00000010"), "--hf", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert "parallel_residual" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_init_from_copies_weights_into_a_model_of_the_same_shape(tmp_path, tok):
    from gradus.export.hf import init_from

    source = tiny_model(tok, seed=9, n_kv_heads=2)
    export_hf(source, tok, tmp_path / "hf")
    target = tiny_model(tok, seed=10, n_kv_heads=2, max_seq_len=128, rope_scaling=2.0)  # no-weight fields differ
    init_from(target, tmp_path / "hf")
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values(), strict=True))
    assert target.shape.max_seq_len == 128 and target.rope.cos.shape[0] == 128
    wrong = tiny_model(tok, seed=10, d_model=64)
    with pytest.raises(ConfigError, match=r"model.d_model=64 but the directory.s model has 32; model.n_kv_heads=4"):
        init_from(wrong, tmp_path / "hf")


def test_a_run_starts_from_an_exported_model_with_model_init_from(tmp_path, tok):
    """``model.init_from`` reaches the model the trainer builds (through the one builder of a run's parts)."""
    from gradus.config import OptimConfig
    from gradus.train.build import build_training_parts

    source = tiny_model(tok, seed=9)
    export_hf(source, tok, tmp_path / "hf")
    fresh = build_training_parts(source.shape, OptimConfig(), torch.device("cpu"), "fp32", seed=0)
    started = build_training_parts(source.shape, OptimConfig(), torch.device("cpu"), "fp32", seed=0,
                                   init_from=str(tmp_path / "hf"))
    assert all(torch.equal(a, b) for a, b in zip(started.model.state_dict().values(),
                                                  source.state_dict().values(), strict=True))
    # ... and without it the same seed gives other weights, so the equality above is the option's doing.
    assert not all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                      source.state_dict().values(), strict=True))
