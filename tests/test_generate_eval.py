"""``gradus generate`` (greedy is deterministic, seeds reproduce, top-k/top-p filter as documented, a prompt
longer than the context is refused) and ``gradus eval`` (numbers equal a direct cross-entropy over the
same windows, any length, JSON, sources without documents refused)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from run_fixtures import TEXT, tiny_model, tiny_tokenizer, write_run

from gradus.cli import main
from gradus.errors import ConfigError
from gradus.inference.generate import SamplingSettings, filter_logits, generate
from gradus.inference.scoring import source_from_spec


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture()
def run(tmp_path, tok):
    return write_run(tmp_path / "run", tiny_model(tok, seed=11), tok)


def test_filter_logits_keeps_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    keep = lambda out: torch.isfinite(out).nonzero().flatten().tolist()  # noqa: E731
    assert keep(filter_logits(logits, 2, None)) == [0, 1]
    assert keep(filter_logits(logits, None, 0.5)) == [0]  # the top token alone reaches 0.5
    assert keep(filter_logits(logits, None, 0.7)) == [0, 1]  # 0.5 < 0.7 ≤ 0.5 + 0.2
    assert keep(filter_logits(logits, None, 0.71)) == [0, 1, 2]
    assert keep(filter_logits(logits, 2, 0.9)) == [0, 1]


def test_greedy_is_deterministic_and_seeds_reproduce_sampling(tok):
    model = tiny_model(tok, seed=12)
    prompt = tok.encode("The quick brown")
    greedy = SamplingSettings(max_new_tokens=20, temperature=0.0, stop_at_eos=False)
    a = generate(model, prompt, greedy, tok.eos_id)
    assert a == generate(model, prompt, greedy, tok.eos_id) and len(a) == 20
    # Greedy: every token is the argmax after the ones before it.
    ids = torch.tensor([prompt + a])
    logits = model(ids)[0][0]
    assert [int(logits[len(prompt) - 1 + i].argmax()) for i in range(20)] == a
    hot = SamplingSettings(max_new_tokens=20, temperature=1.5, seed=1, stop_at_eos=False)
    s1 = generate(model, prompt, hot, tok.eos_id)
    assert s1 == generate(model, prompt, hot, tok.eos_id)
    assert s1 != generate(model, prompt, SamplingSettings(max_new_tokens=20, temperature=1.5, seed=2,
                                                          stop_at_eos=False), tok.eos_id)
    assert generate(model, prompt, SamplingSettings(max_new_tokens=20, temperature=1.5, top_k=1, seed=3,
                                                    stop_at_eos=False), tok.eos_id) == a


def test_generation_stops_at_eos_and_slides_past_the_context(tok):
    model = tiny_model(tok, seed=13, max_seq_len=16, tie_embeddings=False)
    with torch.no_grad():  # every logit 0: greedy's tie goes to the lowest id, which is EOS here
        model.lm_head.weight.zero_()
    assert tok.eos_id == 0
    out = generate(model, tok.encode("fox"), SamplingSettings(max_new_tokens=5, temperature=0.0), tok.eos_id)
    assert out == []
    long = generate(tiny_model(tok, seed=14, max_seq_len=16), tok.encode("fox"),
                    SamplingSettings(max_new_tokens=30, temperature=0.0, stop_at_eos=False), tok.eos_id)
    assert len(long) == 30  # 31 tokens of context > 16: the oldest slide out


def test_generate_cli_prints_the_continuation_and_refuses_a_too_long_prompt(run, tok, capsys):
    assert main(["generate", str(run), "--prompt", "The quick", "--greedy", "--max-tokens", "8", "--no-stop"]) == 0
    printed = capsys.readouterr().out
    model = tiny_model(tok, seed=11)
    expected = generate(model, tok.encode("The quick"), SamplingSettings(8, 0.0, stop_at_eos=False), tok.eos_id)
    assert printed == "The quick" + tok.decode(expected) + "\n"
    long_prompt = "fox " * 80  # > 64 tokens
    assert main(["generate", str(run), "--prompt", long_prompt]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "but the model's context is 64" in err[0]
    assert main(["generate", str(run), "--top-p", "1.5"]) == 2
    assert "--top-p=1.5: must be in (0, 1]" in capsys.readouterr().err


def _direct_loss(model, tokens: np.ndarray, seq_len: int) -> tuple[float, float, int]:
    count = (len(tokens) - 1) // seq_len
    total, correct, n = 0.0, 0, 0
    for i in range(count):
        win = torch.tensor(tokens[i * seq_len : i * seq_len + seq_len + 1], dtype=torch.long)
        logits = model(win[None, :-1])[0][0].detach()
        total += float(torch.nn.functional.cross_entropy(logits, win[1:], reduction="sum"))
        correct += int((logits.argmax(-1) == win[1:]).sum())
        n += seq_len
    return total / n, correct / n, n


def test_eval_matches_a_direct_cross_entropy_on_the_same_windows(run, tok, tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    docs = [TEXT, "def add(a, b):\n    return a + b\n", "12 + 30 = 42. " * 5]
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    assert main(["eval", str(run), "--data", str(data), "--seq-len", "16", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    stream = np.concatenate([np.array(tok.encode(d) + [tok.eos_id]) for d in docs])
    loss, acc, n = _direct_loss(tiny_model(tok, seed=11), stream, 16)
    assert got["tokens"] == n and got["windows"] == n // 16 and got["documents"] == 3
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert got["accuracy"] == pytest.approx(acc)
    # Beyond the model's 64-token context: the RoPE table is extended, the weights are the same.
    assert main(["eval", str(run), "--data", str(data), "--seq-len", "100"]) == 0
    out = capsys.readouterr().out
    assert "beyond the model's context 64" in out and "loss" in out


def test_eval_reads_inline_and_builtin_specs_and_refuses_empty_sources(run, tmp_path, capsys):
    src = source_from_spec("{path: x.jsonl, template: '{q} {a}'}")
    assert (src.config.path, src.config.template, src.role) == ("x.jsonl", "{q} {a}", "all")
    assert source_from_spec("builtin:arithmetic").config.builtin == "arithmetic"
    assert source_from_spec("hf:openai/gsm8k@test").config.split == "test"
    from run_fixtures import run_config

    from gradus.config import from_dict

    no_holdout = run_config()
    no_holdout["data"]["validation"]["fraction"] = 0.0
    with pytest.raises(ConfigError, match="the run held out none of this source's documents"):
        source_from_spec("math", from_dict(no_holdout))
    assert source_from_spec("math", from_dict(run_config())).role == "validation"
    with pytest.raises(ConfigError, match="no such source, file or glob"):
        source_from_spec(str(tmp_path / "missing.jsonl"))
    assert main(["eval", str(run), "--data", "builtin:arithmetic", "--seq-len", "32", "--tokens", "256",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["tokens"] == 256 and 0 < got["loss"] < 20
    # The run's own source name: its held-out documents.
    assert main(["eval", str(run), "--data", "math", "--seq-len", "16", "--tokens", "128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["what"] == "held-out documents of the run's source 'math'"
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "   "}) + "\n")
    assert main(["eval", str(run), "--data", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no documents; nothing to evaluate" in err[0]


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def test_eval_refuses_fewer_tokens_than_one_window(run, capsys):
    """``--tokens`` is "at most": fewer than one window was scored as a whole window (256 for --tokens 100)."""
    assert main(["eval", str(run), "--data", "builtin:arithmetic", "--seq-len", "32", "--tokens", "20"]) == 2
    assert "--tokens 20: less than one window of 32 (--seq-len)" in _one_line(capsys)
    assert main(["eval", str(run), "--data", "builtin:arithmetic", "--seq-len", "32", "--tokens", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 32


def test_a_run_without_a_checkpoint_is_called_that_not_a_stranger(tmp_path, tok, capsys):
    young = tmp_path / "young"
    write_run(young, tiny_model(tok, seed=11), tok, steps=())
    assert main(["generate", str(young), "--prompt", "hi"]) == 2
    assert "the run has no checkpoint yet (it stopped before its first save)" in _one_line(capsys)
    (tmp_path / "other").mkdir()
    assert main(["generate", str(tmp_path / "other"), "--prompt", "hi"]) == 2
    assert "not a gradus run or checkpoint" in _one_line(capsys)


def test_checkpoint_choice_on_an_exported_model_is_refused(run, tmp_path, capsys):
    """An exported folder holds one set of weights: ``--checkpoint`` was silently ignored there."""
    hf = tmp_path / "hf"
    assert main(["export", str(run), "--hf", str(hf)]) == 0
    capsys.readouterr()
    assert main(["generate", str(hf), "--checkpoint", "best", "--prompt", "hi"]) == 2
    assert f"--checkpoint best: {hf} is an exported model" in _one_line(capsys)
    assert main(["export", str(hf), "--checkpoint", "5", "--hf", str(tmp_path / "hf2")]) == 2
    assert "--checkpoint 5:" in _one_line(capsys)


def test_a_runs_chat_template_is_kept_with_its_tokenizer(tmp_path, capsys):
    """The template a run's chat records were rendered with is saved beside its tokenizer.json, so loading or
    exporting the run later (another machine, a cleared Hub cache) serves that template, not another."""
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    run = write_run(tmp_path / "run", tiny_model(tok, seed=11), tok)  # the config names another tokenizer folder
    from gradus.inference.load import load_model

    assert load_model(run).tokenizer.chat_template == tok.chat_template
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == tok.chat_template
    plain = tiny_tokenizer()
    bare = write_run(tmp_path / "bare", tiny_model(plain, seed=11), plain)
    assert not (bare / "tokenizer_config.json").exists()  # no template, no file


def test_eval_without_tokens_scores_at_least_one_window(run, capsys, monkeypatch):
    """The default budget (65,536 tokens) below the window (a long-context model) refused a plain ``eval``."""
    import gradus.commands.eval as eval_command

    monkeypatch.setattr(eval_command, "DEFAULT_TOKENS", 16)
    assert main(["eval", str(run), "--data", "builtin:arithmetic", "--seq-len", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 32
