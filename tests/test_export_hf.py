"""The exported directory in ``transformers`` itself: logits within 1e-4 in fp32, greedy generation,
tokenizer round trip, and one test each for RoPE scaling, grouped-query attention and tied embeddings.

Importing transformers takes seconds, so these few tests share one import; all tiny, all offline."""

from __future__ import annotations

import json

import pytest
import torch
from run_fixtures import TEXT, run_config, tiny_model, tiny_tokenizer, write_run

from gradus.cli import main
from gradus.export.hf import export_hf

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def hf_model(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def max_logit_diff(model, hf, tokens: list[int]) -> float:
    ids = torch.tensor([tokens])
    with torch.no_grad():
        return float((model(ids)[0] - hf(ids).logits).abs().max())


def test_logits_and_greedy_generation_match_gradus_generate(tmp_path, tok, capsys):
    model = tiny_model(tok, seed=1)
    run = write_run(tmp_path / "run", model, tok)
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    hf = hf_model(tmp_path / "hf")
    ids = tok.encode(TEXT)[:60]
    assert max_logit_diff(model, hf, ids) < 1e-4
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "The quick", "--greedy", "--max-tokens", "12", "--no-stop",
                 "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    prompt = torch.tensor([ours["prompt_ids"]])
    theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, prompt.shape[1]:]
    assert ours["ids"] == theirs.tolist()
    assert len(ours["ids"]) == 12
    # The exported directory loads back into gradus too, and generates the same.
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "hf"), "--prompt", "The quick", "--greedy", "--max-tokens", "12",
                 "--no-stop", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == ours["ids"]


def test_rope_scaling_of_the_saved_stage_is_exported_as_linear(tmp_path, tok):
    stages = [{"name": "short", "tokens": 1024, "seq_len": 16, "tokens_per_batch": 256},
              {"name": "long", "tokens": 1024, "seq_len": 64, "tokens_per_batch": 256, "rope_scaling": 4.0}]
    model = tiny_model(tok, seed=2)  # trained (here: initialised) at factor 1; the long stage runs at 4
    write_run(tmp_path / "run", model, tok, stage=1, config=run_config(stages=stages))
    assert main(["export", str(tmp_path / "run"), "--hf", str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["rope_parameters"] == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    hf = hf_model(tmp_path / "hf")
    ids = tok.encode(TEXT)[:64]
    scaled = tiny_model(tok, seed=2, rope_scaling=4.0)
    assert max_logit_diff(scaled, hf, ids) < 1e-4
    assert max_logit_diff(model, hf, ids) > 1e-3  # the unscaled model is measurably different


def test_grouped_query_attention_maps_each_kv_head_to_its_query_group(tmp_path, tok):
    model = tiny_model(tok, seed=3, n_heads=8, n_kv_heads=2)
    export_hf(model, tok, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (8, 2, 4)
    assert max_logit_diff(model, hf_model(tmp_path / "hf"), tok.encode(TEXT)[:50]) < 1e-4


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_embeddings(tmp_path, tok, tied):
    from safetensors import safe_open

    model = tiny_model(tok, seed=4, tie_embeddings=tied)
    export_hf(model, tok, tmp_path / "hf")
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert ("lm_head.weight" in names) is (not tied)
    hf = hf_model(tmp_path / "hf")
    assert hf.config.tie_word_embeddings is tied
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) is tied
    assert max_logit_diff(model, hf, tok.encode(TEXT)[:40]) < 1e-4


def test_tokenizer_round_trips_through_transformers(tmp_path, tok):
    export_hf(tiny_model(tok), tok, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    text = "def add(a, b):\n    return a + b  # 12 + 30 = 42, the quick  fox."
    for t in (hf_tok, fast):
        assert t.encode(text) == tok.encode(text)
        assert t.decode(t.encode(text)) == text
        assert t.eos_token == "<|endoftext|>" and t.eos_token_id == tok.eos_id


def test_a_tokenizer_that_adds_bos_exports_without_it(tmp_path):
    # A Llama-style tokenizer (post-processor "<s> $A"): transformers applied it on every tokenizer(text), so the
    # exported model saw a BOS it never trained with. The export writes a post-processor that adds nothing.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    from gradus.data.tokenizer import Tokenizer

    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, min_frequency=1, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([TEXT] * 4, trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = Tokenizer(HFTokenizer.from_str(backend.to_str()), eos_id=1, kind="file", name_or_path="llama-like")
    export_hf(tiny_model(tok), tok, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "The quick brown fox"
    assert hf_tok(text)["input_ids"] == tok.encode(text) and tok.encode(text)[0] != 0


def test_the_export_serves_the_chat_template_stage_d_rendered_with(tmp_path):
    # The chat source asks for the built-in template while the tokenizer carries its own: stage D trained on the
    # built-in one, and the export wrote the tokenizer's.
    from gradus.data.chat import BUILTIN_CHAT_JINJA

    tok = tiny_tokenizer()
    tokdir = tmp_path / "tok"
    tok.save(tokdir)
    own = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    (tokdir / "tokenizer_config.json").write_text(json.dumps({"chat_template": own}))
    cfg = run_config()
    cfg["data"]["tokenizer"] = {"name_or_path": str(tokdir)}
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "yo"}]}) + "\n")
    cfg["data"]["sources"].append({"name": "chat", "path": str(tmp_path / "chat.jsonl"), "kind": "chat",
                                   "chat_template": "builtin"})
    for st in cfg["curriculum"]["stages"]:
        st["mix"] = {"prose": 1, "math": 1, "chat": 0}
    cfg["curriculum"]["stages"].append({"name": "sft", "kind": "sft", "tokens": 1024, "seq_len": 32,
                                        "tokens_per_batch": 256, "mix": {"chat": 1.0}})
    run = write_run(tmp_path / "run", tiny_model(tok), tok, stage=2, config=cfg)
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    written = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"]
    assert written == BUILTIN_CHAT_JINJA
