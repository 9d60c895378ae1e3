"""The GPT decoder and its shapes: exact parameter counts, causality, loss at init, masking, RoPE scaling,
safetensors round trips, presets, FLOPs and the weight-decay groups. Tiny shapes; big ones on ``meta``."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradus.config import ModelConfig
from gradus.errors import CheckpointError, ConfigError
from gradus.model import GPT, param_groups
from gradus.model.gpt import rope_tables
from gradus.sizes import SIZE_PRESETS, ModelShape, default_ffn_hidden, resolve_shape, shape_for_params

V = 97


def tiny(**kw) -> ModelShape:
    base = dict(n_layers=2, d_model=32, n_heads=4, vocab_size=V, max_seq_len=64)
    base.update(kw)
    return ModelShape(**base)


def make(shape: ModelShape, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(shape).eval()


# ------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize(
    "kw",
    [{}, {"tie_embeddings": False}, {"n_kv_heads": 2}, {"n_kv_heads": 1, "ffn_hidden": 40}, {"n_layers": 3}],
)
def test_num_params_matches_shape_exactly(kw):
    shape = tiny(**kw)
    model = GPT(shape)
    assert model.num_params() == shape.params_total
    assert model.num_params(non_embedding=True) == shape.params_non_embedding
    # Count by hand: 2 layers of (2 norms + q,o + k,v + SwiGLU) + final norm (+ embedding, head).
    d, f, kv = shape.d_model, shape.ffn_hidden, shape.kv_dim
    per_layer = 2 * d + 2 * d * d + 2 * d * kv + 3 * d * f
    assert shape.params_non_embedding == shape.n_layers * per_layer + d
    assert shape.params_total == shape.params_non_embedding + V * d * (1 if shape.tie_embeddings else 2)


@pytest.mark.parametrize("name", ["124M", "270M", "1B"])
def test_preset_param_counts_on_meta_device(name):
    shape = resolve_shape(ModelConfig(preset=name), 50257)
    with torch.device("meta"):
        model = GPT(shape)
    assert model.num_params() == shape.params_total
    assert model.num_params(non_embedding=True) == shape.params_non_embedding


def test_preset_sizes_are_what_their_names_say():
    n = {p: resolve_shape(ModelConfig(preset=p), 50257) for p in SIZE_PRESETS}
    assert 0.1e6 <= n["tiny"].params_non_embedding <= 0.5e6
    assert (n["small"].n_layers, n["small"].d_model) == (4, 128)
    assert abs(n["124M"].params_total / 124e6 - 1) < 0.02  # GPT-2 small's 124M
    assert abs(n["270M"].params_total / 270e6 - 1) < 0.03
    assert abs(n["1B"].params_non_embedding / 1e9 - 1) < 0.05  # N within a few % of 1e9
    assert n["124M"].params_non_embedding == 12 * (2 * 768 + 4 * 768 * 768 + 3 * 768 * 2048) + 768


def test_flops_per_token_formula():
    s = tiny()
    n_mm = s.params_non_embedding + V * s.d_model
    assert s.flops_per_token(16) == 6 * n_mm + 6 * s.n_layers * 16 * s.d_model
    assert s.flops_per_token() == s.flops_per_token(s.max_seq_len)
    gpt2 = resolve_shape(ModelConfig(preset="124M"), 50257)
    # 6 × (84,953,856 non-embedding + 38,597,376 head) + attention 6·12·1024·768 = 56,623,104.
    assert gpt2.params_non_embedding == 84_953_856
    assert gpt2.flops_per_token(1024) == 6 * (84_953_856 + 38_597_376) + 56_623_104


# ----------------------------------------------------------------------------- resolve / presets
def test_resolve_shape_preset_and_overrides():
    s = resolve_shape(ModelConfig(preset="small"), 1000)
    assert (s.n_layers, s.d_model, s.n_heads, s.vocab_size) == (4, 128, 4, 1000)
    assert s.ffn_hidden == default_ffn_hidden(128) == 352
    # Explicit fields win; a preset's ffn_hidden follows its d_model only.
    s = resolve_shape(ModelConfig(preset="124M", d_model=256, n_heads=8, vocab_size=500), 1000)
    assert (s.n_layers, s.d_model, s.n_heads, s.vocab_size) == (12, 256, 8, 500)
    assert s.ffn_hidden == default_ffn_hidden(256)
    s = resolve_shape(ModelConfig(preset="1B", n_heads=16), 1000)
    assert s.n_kv_heads == 16  # the preset's 8 kv heads belonged to its 32 heads
    s = resolve_shape(ModelConfig(preset=None, n_layers=1, d_model=64, n_heads=2, max_seq_len=99, rope_scaling=2.0), 7)
    assert (s.max_seq_len, s.rope_scaling, s.vocab_size) == (99, 2.0, 7)


def test_resolve_shape_errors_name_the_field():
    with pytest.raises(ConfigError) as err:
        resolve_shape(ModelConfig(preset="2B"), 100)
    assert len(err.value.problems) == 1 and "model.preset='2B'" in err.value.problems[0]
    assert "tiny" in err.value.problems[0]
    with pytest.raises(ConfigError) as err:
        resolve_shape(ModelConfig(preset="tiny", d_model=100, n_heads=3), 100)
    assert "model.d_model=100" in str(err.value) and "model.n_heads=3" in str(err.value)
    with pytest.raises(ConfigError, match="model.n_kv_heads=3"):
        resolve_shape(ModelConfig(preset="tiny", n_kv_heads=3), 100)
    with pytest.raises(ConfigError, match="model.n_layers is missing"):
        resolve_shape(ModelConfig(preset=None, d_model=64, n_heads=4), 100)


@pytest.mark.parametrize("target", [1e7, 1.24e8, 1e9, 3e9, 7e9, 13e9, 70e9])
def test_shape_for_params_is_near_target(target):
    s = shape_for_params(target)
    assert abs(s.params_non_embedding / target - 1) < 0.06
    assert s.d_model % s.n_heads == 0 and s.head_dim in (64, 128)
    assert 20 <= s.d_model / s.n_layers <= 200


# -------------------------------------------------------------------------------------- forward
def test_causal_changing_token_t_never_changes_earlier_logits():
    model = make(tiny(n_kv_heads=2))
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base, _ = model(x)
        for t in (0, 7, 19):
            y = x.clone()
            y[:, t] = (y[:, t] + 1) % V
            changed, _ = model(y)
            assert torch.equal(changed[:, :t], base[:, :t])
            assert not torch.allclose(changed[:, t], base[:, t])


def test_loss_at_init_is_about_ln_vocab():
    vocab = 1000
    model = make(tiny(vocab_size=vocab, d_model=64))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (4, 64), generator=g)
    labels = torch.randint(0, vocab, (4, 64), generator=g)
    with torch.no_grad():
        logits, loss = model(x, labels)
    assert logits.shape == (4, 64, vocab) and logits.dtype == torch.float32
    assert abs(loss.item() - math.log(vocab)) < 0.1


def test_loss_ignores_masked_labels():
    model = make(tiny())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (2, 10), generator=g)
    labels = torch.randint(0, V, (2, 10), generator=g)
    labels[0, :4] = -100
    labels[1, 9] = -100
    with torch.no_grad():
        logits, loss = model(x, labels)
        keep = labels != -100
        expected = F.cross_entropy(logits[keep], labels[keep])
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        _, none = model(x)
        assert none is None
        _, zero = model(x, torch.full_like(labels, -100))
        assert zero.item() == 0.0  # all masked: 0, not NaN


def test_every_length_up_to_max_and_longer_is_a_clear_error():
    shape = tiny(max_seq_len=16)
    model = make(shape)
    with torch.no_grad():
        for t in (1, 5, 16):
            logits, _ = model(torch.zeros(1, t, dtype=torch.long))
            assert logits.shape == (1, t, V)
        with pytest.raises(ConfigError, match="sequence length 17 exceeds model.max_seq_len=16"):
            model(torch.zeros(1, 17, dtype=torch.long))


def test_backward_reaches_every_parameter_and_bf16_autocast_runs():
    model = GPT(tiny(n_kv_heads=2, tie_embeddings=False)).train()
    x = torch.randint(0, V, (2, 12))
    _, loss = model(x, x)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(x, x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)


def test_dropout_only_in_training():
    model = make(tiny(dropout=0.5))
    x = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(x)[0], model(x)[0])
        model.train()
        assert not torch.equal(model(x)[0], model(x)[0])


def test_init_scales_residual_projections():
    shape = tiny(n_layers=8, d_model=256, n_heads=4)
    model = make(shape)
    resid = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[0].attn.o_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert model.blocks[3].mlp.down.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert model.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.lm_head.weight is model.tok_emb.weight


# --------------------------------------------------------------------------------------- RoPE
def test_rope_scaling_divides_positions():
    cos1, sin1 = rope_tables(16, 64, 10000.0, 1.0)
    cos4, sin4 = rope_tables(16, 64, 10000.0, 4.0)
    # Position 4p with factor 4 gets exactly the angles of position p without it.
    assert torch.allclose(cos4[::4], cos1[:16], atol=1e-6)
    assert torch.allclose(sin4[::4], sin1[:16], atol=1e-6)
    # Position 1 with factor 4 sits a quarter of the way to position 1: angle = theta^(-2i/hd) / 4.
    inv = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    assert torch.allclose(sin4[1, :8].double(), torch.sin(inv / 4), atol=1e-6)


def test_model_rope_scaling_changes_outputs_and_can_be_set_in_place():
    a = make(tiny(), seed=3)
    b = make(tiny(rope_scaling=2.0), seed=3)
    x = torch.randint(0, V, (1, 24))
    with torch.no_grad():
        la, lb = a(x)[0], b(x)[0]
        assert torch.equal(la[:, 0], lb[:, 0])  # position 0 is not rotated either way
        assert not torch.allclose(la[:, 1:], lb[:, 1:])
        a.set_rope_scaling(2.0)
        assert torch.equal(a(x)[0], lb)
        assert a.shape.rope_scaling == 2.0
    assert "rope.cos" not in a.state_dict()  # derived tables are never saved


# -------------------------------------------------------------------------------- safetensors
@pytest.mark.parametrize("tie", [True, False])
def test_safetensors_round_trip_gives_identical_outputs(tmp_path, tie):
    shape = tiny(tie_embeddings=tie, n_kv_heads=2)
    model = make(shape, seed=5)
    path = tmp_path / "model.safetensors"
    model.save_safetensors(path)
    x = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        expected = model(x)[0]
        loaded = GPT.load_safetensors(path).eval()  # shape read from the file's metadata
        assert loaded.shape == shape
        assert torch.equal(loaded(x)[0], expected)
        again = make(shape, seed=99).load_safetensors_(path)
        assert torch.equal(again(x)[0], expected)
    if tie:
        assert again.lm_head.weight is again.tok_emb.weight
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            assert len([k for k in f.keys() if k.endswith("tok_emb.weight") or k.endswith("lm_head.weight")]) == 1


def test_loading_into_the_wrong_shape_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "m.safetensors"
    make(tiny()).save_safetensors(path)
    with pytest.raises(CheckpointError, match="do not fit"):
        make(tiny(d_model=64)).load_safetensors_(path)
    with pytest.raises(CheckpointError, match="not found"):
        GPT.load_safetensors(tmp_path / "missing.safetensors", tiny())
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        GPT.load_safetensors(tmp_path / "junk.safetensors", tiny())


# ------------------------------------------------------------------------------- param groups
@pytest.mark.parametrize("tie", [True, False])
def test_param_groups_decay_only_matmul_weights(tie):
    model = GPT(tiny(tie_embeddings=tie))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    ids = {id(p) for p in decay["params"]}
    assert id(model.tok_emb.weight) not in ids
    assert (id(model.lm_head.weight) in ids) == (not tie)
    assert all(p.dim() == 1 for p in no_decay["params"] if p is not model.tok_emb.weight)
    n_decay = sum(p.numel() for p in decay["params"])
    n_all = sum(p.numel() for p in decay["params"] + no_decay["params"])
    assert n_all == model.num_params()
    shape = model.shape
    assert n_decay == shape.n_layers * (shape.params_per_layer - 2 * shape.d_model) + (0 if tie else V * shape.d_model)
    torch.optim.AdamW([decay, no_decay], lr=1e-3)  # accepted as is


def test_sizes_import_without_torch():
    code = "import sys, gradus.model, gradus.sizes; from gradus.model import ModelShape; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shapes_live_below_the_model_which_re_exports_them():
    import gradus.model as model

    # One implementation in gradus.sizes (what plan/ and the model read); gradus.model re-exports it.
    assert model.resolve_shape is resolve_shape and model.ModelShape is ModelShape
    assert model.SIZE_PRESETS is SIZE_PRESETS and model.shape_for_params is shape_for_params
    assert not (Path(model.__file__).parent / "sizes.py").exists()  # the old shim's path is gone
    assert resolve_shape(ModelConfig(preset="small"), 1000).params_non_embedding == 4 * (
        4 * 128 * 128 + 3 * 128 * 352 + 2 * 128) + 128
