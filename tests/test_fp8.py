"""``train.precision: fp8`` (issue 32 §1) on CPU, through torchao's float8 emulation: which layers convert, that
training lowers the loss, exact resume, checkpoints a bf16 run and ``gradus export`` read, and the one-line
refusals where FP8 cannot run. Under FSDP with float8 all-gather: tests/test_parallel.py (its two-process runs
share one launch there). The speed (FP8 ≥ 1.3× bf16 tokens/s at 270M) is a GPU figure:
benchmarks/gpu/fp8_vs_bf16.py measures it, never a unit test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import tiny_config

from gradus.cli import main
from gradus.config import from_dict
from gradus.model.gpt import GPT
from gradus.sizes import ModelShape, resolve_shape
from gradus.train import fp8
from gradus.train.metrics import read_metrics
from gradus.train.trainer import train

pytestmark = pytest.mark.usefixtures("no_faults")
needs_torchao = pytest.mark.skipif(not fp8.torchao_available(),
                                   reason="torchao is not installed (pip install 'gradus-lm[fp8]'): fp8 untested")

BLOCK_LAYERS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate", "mlp.up", "mlp.down")


def _cfg(tokenizer_json, offline_data, precision="fp8", recipe="tensorwise", **train):
    raw = tiny_config(offline_data, tokenizer_json)
    raw["train"].update({"precision": precision, "eval_every": 100, "checkpoint_every": 4,
                         "early_stopping_patience": None, "eval_at_stage_change": False, **train})
    if precision == "fp8":
        raw["train"]["fp8"] = {"recipe": recipe, "emulate": True}
    return from_dict(raw)


def _final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.safetensors"))


# ------------------------------------------------------------------------------------------ conversion
@needs_torchao
def test_the_filter_converts_the_blocks_aligned_linears_and_keeps_head_embedding_and_odd_widths():
    # ffn_hidden 100 is not a multiple of 16: the MLP stays in bf16; the attention projections (64 wide) convert.
    model = GPT(ModelShape(n_layers=2, d_model=64, n_heads=4, vocab_size=512, max_seq_len=32, ffn_hidden=100))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = fp8.convert_model(model, "tensorwise", emulate=True)
    assert converted == [f"blocks.{i}.attn.{n}" for i in range(2) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert fp8.float8_layers(model) == converted
    assert type(model.lm_head) is torch.nn.Linear and type(model.tok_emb) is torch.nn.Embedding
    assert type(model.blocks[0].mlp.gate) is torch.nn.Linear
    # Same names, same values, plain tensors: what a checkpoint saves does not change.
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all(type(p.data) is torch.Tensor for p in model.parameters())
    assert model.lm_head.weight is model.tok_emb.weight  # still tied

    aligned = GPT(ModelShape(n_layers=2, d_model=64, n_heads=4, vocab_size=512, max_seq_len=32, ffn_hidden=96))
    assert fp8.convert_model(aligned, "rowwise", emulate=True) == [
        f"blocks.{i}.{n}" for i in range(2) for n in BLOCK_LAYERS]
    note = fp8.fp8_note(aligned, "rowwise", emulate=True)
    assert note.startswith("fp8: 14 of 15 linear layers in float8 (rowwise scaling, emulated") and "1 kept" in note


@needs_torchao
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_float8_matmuls_round_but_stay_close(recipe):
    """The converted model computes something else than the fp32 one (float8 rounding is really applied) and
    close to it (e4m3 keeps ~2 significant digits): logits within a few percent."""
    shape = ModelShape(n_layers=2, d_model=64, n_heads=4, vocab_size=512, max_seq_len=32, ffn_hidden=96)
    torch.manual_seed(0)
    ref = GPT(shape)
    model = GPT(shape)
    model.load_state_dict(ref.state_dict())
    fp8.convert_model(model, recipe, emulate=True)
    ids = torch.randint(0, 512, (2, 32))
    with torch.no_grad():
        a, b = ref(ids)[0], model(ids)[0]
    rel = float((a - b).norm() / a.norm())
    assert 1e-4 < rel < 0.05, rel


@needs_torchao
def test_float8_all_gather_only_under_fsdp_and_only_tensorwise():
    assert fp8.float8_config("tensorwise", emulate=False, all_gather=True).enable_fsdp_float8_all_gather
    assert not fp8.float8_config("tensorwise", emulate=False, all_gather=False).enable_fsdp_float8_all_gather
    assert not fp8.float8_config("rowwise", emulate=False, all_gather=True).enable_fsdp_float8_all_gather
    assert fp8.float8_config("rowwise", emulate=True, all_gather=False).emulate
    # A micro-batch's tokens (the grad-weight GEMM's inner dim) need not be a multiple of 16: torchao pads them.
    assert all(fp8.float8_config(r, emulate=False, all_gather=False).pad_inner_dim for r in ("tensorwise", "rowwise"))


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def whole_runs(tmp_path_factory, tokenizer_json, offline_data) -> dict[str, tuple[Path, list]]:
    """The 16-step run in fp32 and in fp8 (tensorwise), uninterrupted: each precision's run directory and step
    reports, trained once for the loss comparisons and the exact resume below."""
    from gradus.train import faults

    root = tmp_path_factory.mktemp("fp8-whole")
    out = {}
    with pytest.MonkeyPatch.context() as mp:  # (as no_faults, which is set up after a module's fixtures)
        mp.delenv(faults.ENV, raising=False)
        faults.reset()
        for precision in ("fp32", "fp8"):
            seen = []
            train(_cfg(tokenizer_json, offline_data, precision), root / precision, quiet=True, on_step=seen.append)
            out[precision] = (root / precision, seen)
    return out


@needs_torchao
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_a_few_emulated_fp8_steps_lower_the_loss_like_fp32(recipe, whole_runs, tmp_path, tokenizer_json,
                                                          offline_data):
    fp32 = [r.loss for r in whole_runs["fp32"][1]]  # (the recipe is an fp8 setting: fp32 trains the same run)
    if recipe == "tensorwise":  # the default recipe: the module's fp8 run
        ours = [r.loss for r in whole_runs["fp8"][1]]
    else:
        seen = []
        train(_cfg(tokenizer_json, offline_data, "fp8", recipe), tmp_path / "fp8", quiet=True, on_step=seen.append)
        ours = [r.loss for r in seen]
    assert len(ours) == 16
    assert sum(ours[-4:]) / 4 < sum(ours[:4]) / 4 - 0.3  # it learns
    # and like fp32: the same data and init, float8 rounding only (a loss within 2% at every step)
    assert all(abs(a - b) / a < 0.02 for a, b in zip(fp32, ours, strict=True)), list(zip(fp32, ours, strict=True))
    assert ours != fp32  # but not the fp32 run itself


@needs_torchao
def test_an_fp8_run_resumes_exactly(whole_runs, tmp_path, tokenizer_json, offline_data):
    (whole, uninterrupted), split = whole_runs["fp8"], tmp_path / "split"
    resumed = []
    assert train(_cfg(tokenizer_json, offline_data), split, quiet=True, stop_at_step=7).step == 7
    train(_cfg(tokenizer_json, offline_data), split, quiet=True, on_step=resumed.append)
    assert [r.step for r in resumed] == list(range(8, 17))
    # Every step's loss and gradient norm after the resume, and the final weights, bit for bit.
    assert [(r.loss, r.grad_norm) for r in resumed] == [(r.loss, r.grad_norm) for r in uninterrupted[7:]]
    a, b = _final_weights(whole), _final_weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_torchao
def test_a_bf16_run_resumes_an_fp8_checkpoint_and_export_reads_it(tmp_path, tokenizer_json, offline_data, capsys):
    run = tmp_path / "run"
    assert train(_cfg(tokenizer_json, offline_data), run, quiet=True, stop_at_step=8).step == 8
    saved = _final_weights(run)
    # Plain fp32 tensors under the model's own names: nothing of torchao in the file.
    plain = GPT(resolve_shape(_cfg(tokenizer_json, offline_data).model, 512))
    names = set(plain.state_dict())
    assert set(saved) <= names and len(saved) == len(names) - 1  # (the tied embedding and head stored once)
    assert all(t.dtype == torch.float32 for t in saved.values())

    capsys.readouterr()
    assert main(["export", str(run / "checkpoints" / "step_00000008"), "--hf", str(tmp_path / "hf")]) == 0
    from gradus.export.hf import load_hf_weights

    exported = load_hf_weights(tmp_path / "hf").state_dict()
    assert all(torch.equal(exported[k], saved[k]) for k in saved)

    # The same run goes on in bf16 from the fp8 checkpoint (no --allow-config-change needed: same stages).
    result = train(_cfg(tokenizer_json, offline_data, "bf16"), run, quiet=True)
    assert result.step == 16
    resumed = [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "resume"]
    assert [r["step"] for r in resumed] == [8]


# ------------------------------------------------------------------------------------------ refusals
def test_fp8_on_cpu_without_emulation_is_one_line_naming_bf16(tmp_path, tokenizer_json, offline_data, capsys):
    import yaml

    raw = tiny_config(offline_data, tokenizer_json)
    raw["train"]["precision"] = "fp8"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    if fp8.torchao_available():
        assert "compute capability 8.9+" in err[0] and "this device is cpu" in err[0]
        assert "train.precision=bf16" in err[0] and "train.fp8.emulate=true" in err[0]
    else:
        assert "needs torchao" in err[0] and "pip install" in err[0]
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


@pytest.mark.parametrize(("capability", "name", "refused"), [
    ((8, 6), "NVIDIA A10G", True), ((8, 0), "NVIDIA A100-SXM4-80GB", True),
    ((8, 9), "NVIDIA L4", False), ((9, 0), "NVIDIA H100 80GB HBM3", False)])
def test_fp8_needs_compute_capability_8_9(monkeypatch, capability, name, refused):
    monkeypatch.setattr(fp8, "torchao_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    problem = fp8.fp8_problem(torch.device("cuda", 0), emulate=False)
    if refused:
        assert problem == (f"train.precision=fp8 needs FP8 tensor cores (compute capability 8.9+: L4, L40S, "
                           f"RTX 4090, H100); {name} has {capability[0]}.{capability[1]}; use train.precision=bf16")
    else:
        assert problem is None
    assert fp8.fp8_problem(torch.device("cuda", 0), emulate=True) is None  # emulation runs anywhere


def test_without_torchao_fp8_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(fp8, "torchao_available", lambda: False)
    for device in (torch.device("cpu"), torch.device("cuda", 0)):
        problem = fp8.fp8_problem(device, emulate=True)
        assert problem.startswith("train.precision=fp8 needs torchao: pip install 'gradus-lm[fp8]'")
        assert problem.endswith("use train.precision=bf16")


def test_an_unknown_recipe_is_a_config_error(offline_data, tokenizer_json):
    from gradus.errors import ConfigError

    raw = tiny_config(offline_data, tokenizer_json)
    raw["train"].update({"precision": "fp8", "fp8": {"recipe": "blockwise"}})
    with pytest.raises(ConfigError, match=r"train\.fp8\.recipe"):
        from_dict(raw)
