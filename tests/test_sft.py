"""Stage D, supervised fine-tuning: chat records rendered by a template, the loss on assistant tokens only,
one record per row (no attention across records), bad records in one line, exact resume, and a tiny model
that learns the assistant format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from run_fixtures import tiny_model, tiny_tokenizer

from gradus.cli import main
from gradus.config import from_dict
from gradus.curriculum import resolve_schedule, state_at, tokens_at_step
from gradus.data import DataPipeline
from gradus.data.chat import ChatRenderer, chat_loss_rows, encode_marked, special_ids
from gradus.train.metrics import losses_by_step, read_metrics
from gradus.train.trainer import train


def write_chat(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` templated records: a sum asked by the user, answered in one fixed format by the assistant."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"Answer: {a} + {b} = {a + b}."}]}) + "\n")
    return path


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> Path:
    """A 320-token BPE as a tokenizer.json (a small vocabulary keeps the tiny runs fast)."""
    folder = tmp_path_factory.mktemp("tok")
    return tiny_tokenizer().save(folder)


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    return write_chat(tmp_path_factory.mktemp("chat") / "chat.jsonl", 1200)


def sft_config(tok: Path, chat: Path, text: Path, a_steps: int = 4, d_steps: int = 4, **train_cfg) -> dict:
    """Stage A (pretraining on text, 8 × 32) then stage D (sft on the chat records, 8 × 64: a record is
    about 57 tokens of the small BPE)."""
    return {
        "model": {"preset": "tiny", "max_seq_len": 64},
        "data": {
            "sources": [{"name": "text", "path": str(text)}, {"name": "chat", "path": str(chat), "kind": "chat"}],
            "tokenizer": {"name_or_path": str(tok)},
            "shuffle_buffer": 64,
            "validation": {"fraction": 0.05, "tokens": 2048, "max_documents": 32},
        },
        "curriculum": {"schedule": "per_stage", "stages": [
            {"name": "A", "tokens": a_steps * 256, "seq_len": 32, "tokens_per_batch": 256,
             "mix": {"text": 1, "chat": 0}},
            {"name": "D", "kind": "sft", "tokens": d_steps * 512, "seq_len": 64, "batch_size": 8, "peak_lr": 3e-3,
             "warmup_steps": 5, "mix": {"text": 0, "chat": 1}},
        ]},
        "optim": {"base_lr": 3e-3},
        "train": {"device": "cpu", "threads": 1, "seed": 1, "eval_every": 10_000, **train_cfg},
        "logging": {"tensorboard": False, "progress_bar": False, "log_every": 1},
    }


# ------------------------------------------------------------------------------------- rendering
def test_builtin_template_trains_on_the_reply_and_its_end_token_only(tmp_path):
    tok = tiny_tokenizer()
    src = from_dict(sft_config(tmp_path, tmp_path / "c.jsonl", tmp_path / "t.jsonl")).data.sources[1]
    record = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 3."},
                           {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4?"},
                           {"role": "assistant", "content": "9"}]}
    text = ChatRenderer(src).render(record, "x:1")
    (rec,) = encode_marked(tok.backend, [text], tok.eos_id, tok.dtype, special_ids(tok.backend))
    whole = tok.decode(rec["id"])
    assert whole == ("<|system|>\nBe brief.\n<|user|>\nAdd 2 and 3.\n<|assistant|>\n5<|endoftext|>"
                     "<|user|>\nAnd 4?\n<|assistant|>\n9<|endoftext|>")
    trained = rec["id"][rec["train"]]
    assert tok.decode(trained) == "5<|endoftext|>9<|endoftext|>"
    assert list(trained).count(tok.eos_id) == 2
    # Labels: the token after each position, -100 unless that token is trained.
    inputs, labels, cut = chat_loss_rows([rec], 128, tok.eos_id)
    assert len(rec) < 128
    assert cut == 0 and int((labels != -100).sum()) == len(trained)
    assert tok.decode([t for t in labels[0] if t != -100]) == "5<|endoftext|>9<|endoftext|>"
    # Cut to a short row: the record's first 9 tokens only, the rest counted as cut.
    _, short, cut = chat_loss_rows([rec], 8, tok.eos_id)
    assert cut == len(rec) - 9 and short.shape == (1, 8)


def test_prompt_and_response_templates_make_one_exchange(tmp_path):
    tok = tiny_tokenizer()
    cfg = sft_config(tmp_path, tmp_path / "c.jsonl", tmp_path / "t.jsonl")
    cfg["data"]["sources"][1].update(prompt_template="Q: {question}", response_template="{answer}")
    src = from_dict(cfg).data.sources[1]
    text = ChatRenderer(src).render({"question": "2+2?", "answer": "4"}, "x:1")
    (rec,) = encode_marked(tok.backend, [text], tok.eos_id, tok.dtype, {})
    assert tok.decode(rec["id"]) == "<|user|>\nQ: 2+2?\n<|assistant|>\n4<|endoftext|>"
    assert tok.decode(rec["id"][rec["train"]]) == "4<|endoftext|>"


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_the_tokenizers_own_chat_template_is_used_with_its_special_tokens(tmp_path):
    from tokenizers import AddedToken

    from gradus.data.tokenizer import Tokenizer

    backend = tiny_tokenizer().backend
    backend.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    folder = tmp_path / "tok"
    Tokenizer(backend, eos_id=backend.token_to_id("<|endoftext|>"), kind="file", name_or_path="x").save(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    chat = write_chat(tmp_path / "chat.jsonl", 40)
    raw = sft_config(folder, chat, chat)
    raw["data"]["sources"] = [raw["data"]["sources"][1]]
    raw["data"]["validation"]["fraction"] = 0.0
    raw["curriculum"] = {"stages": [{"kind": "sft", "tokens": 512, "seq_len": 64, "batch_size": 4}]}
    cfg = from_dict(raw)
    from gradus.data import load_tokenizer

    loaded = load_tokenizer(cfg.data)
    assert loaded.chat_template == CHATML
    schedule = resolve_schedule(cfg)
    with DataPipeline(cfg.data, loaded, schedule, prefetch=0) as pipe:
        batch = pipe.next_batch(state_at(schedule, 0, 0))
    start, end = loaded.backend.token_to_id("<|im_start|>"), loaded.backend.token_to_id("<|im_end|>")
    row, labels = batch.inputs[0], batch.labels[0]
    assert row[0] == start and list(row).count(end) == 2  # specials as single tokens, not their letters
    text = loaded.decode(row[: list(row).index(end, list(row).index(end) + 1) + 1])
    assert text.startswith("<|im_start|>user\nWhat is ") and "<|im_start|>assistant\nAnswer: " in text
    # Trained: the reply and the template's end of turn ("<|im_end|>\n"), nothing of the prompt.
    reply = loaded.decode([t for t in labels if t != -100])
    assert reply.startswith("Answer: ") and reply.endswith(".<|im_end|>\n") and "user" not in reply


# ------------------------------------------------------------------------------- loss and masking
def _rows(tok, n_rows: int = 3, seq_len: int = 64):
    records = []
    rng = random.Random(5)
    for i in range(n_rows):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        msgs = [{"role": "user", "content": f"What is {a} plus {b}?" + " Please." * i},
                {"role": "assistant", "content": f"{a + b}"}]
        src = from_dict(sft_config(Path("t"), Path("c"), Path("x"))).data.sources[1]
        records.append(ChatRenderer(src).render({"messages": msgs}, f"r:{i}"))
    recs = encode_marked(tok.backend, records, tok.eos_id, tok.dtype, {})
    inputs, labels, cut = chat_loss_rows(recs, seq_len, tok.eos_id)
    assert cut == 0 and all(len(r) < seq_len for r in recs)  # whole records, each followed by padding
    return torch.from_numpy(inputs), torch.from_numpy(labels), [len(r) - 1 for r in recs]


def test_masked_tokens_add_exactly_zero_loss_and_zero_gradient():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2).train()
    inputs, labels, _ = _rows(tok)
    mask = labels != -100
    assert 0 < int(mask.sum()) < 0.3 * labels.numel()  # the prompt and padding really are most of a row
    logits, loss = model(inputs, labels)
    logits.retain_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    # The masked positions' logits get no gradient at all.
    assert torch.count_nonzero(logits.grad[~mask]) == 0
    assert torch.count_nonzero(logits.grad[mask]) > 0
    # The same loss and gradient as a cross-entropy over the assistant tokens alone.
    model.zero_grad()
    logits2, _ = model(inputs)
    only = F.cross_entropy(logits2[mask].float(), labels[mask])
    only.backward()
    assert float(loss.detach()) == pytest.approx(float(only.detach()), rel=1e-6, abs=0)
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-8), n
    # Changing the label of a masked position's token (-100 stays -100) or the tokens the mask hides
    # after a record (its padding) leaves the loss bit-identical.
    padded = inputs.clone()
    first_pad = int(mask[0].nonzero().max()) + 1
    padded[0, first_pad:] = 7
    _, loss2 = model(padded, labels)
    assert torch.equal(loss2, loss)


def test_no_attention_crosses_records():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3)
    inputs, _, lengths = _rows(tok)
    n0 = lengths[0]  # the first row's input positions that hold its record (padding after them)
    with torch.no_grad():
        base = model(inputs)[0]
        other = inputs.clone()
        other[1:] = torch.randint(0, tok.vocab_size, other[1:].shape)  # the other records
        other[0, n0:] = torch.randint(0, tok.vocab_size, (other.shape[1] - n0,))  # its padding
        changed = model(other)[0]
    assert torch.equal(changed[0, :n0], base[0, :n0])
    assert not torch.equal(changed[1], base[1])


# ------------------------------------------------------------------------------------ training
def test_a_tiny_model_learns_the_assistant_format(tmp_path, tok_path, chat_file, offline_data):
    text = offline_data / "wikitext-2" / "train.jsonl"
    run = tmp_path / "run"
    train(from_dict(sft_config(tok_path, chat_file, text, a_steps=30, d_steps=200)), run, quiet=True)
    evals = {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if "val/chat/loss" in r}
    pretrained, tuned = evals[30]["val/chat/loss"], evals[230]["val/chat/loss"]
    # Loss on held-out assistant tokens: the pretrained model's, then after 200 sft steps.
    assert pretrained > 3.0 and tuned < 0.25 * pretrained, (pretrained, tuned)  # measured: 5.17 -> 0.56
    assert evals[230]["val/chat/accuracy"] > 0.6 > evals[30]["val/chat/accuracy"]  # measured: 0.21 -> 0.79
    steps = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert [r["curriculum/current_seq_len"] for r in steps[29:31]] == [32, 64]


def test_an_sft_stage_resumes_bit_for_bit(tmp_path, tok_path, chat_file, offline_data):
    text = offline_data / "wikitext-2" / "train.jsonl"
    cfg = from_dict(sft_config(tok_path, chat_file, text, a_steps=3, d_steps=6, checkpoint_every=5))
    full = train(cfg, tmp_path / "full", quiet=True)
    assert full.step == 9
    first = train(cfg, tmp_path / "resumed", quiet=True, stop_at_step=6)  # inside stage D
    assert first.step == 6
    train(cfg, tmp_path / "resumed", quiet=True)
    expected = losses_by_step(tmp_path / "full" / "metrics.jsonl")
    assert losses_by_step(tmp_path / "resumed" / "metrics.jsonl") == expected
    assert len(expected) == 9


def test_the_pipeline_state_resumes_inside_an_sft_stage(tmp_path, tok_path, chat_file, offline_data):
    cfg = from_dict(sft_config(tok_path, chat_file, offline_data / "wikitext-2" / "train.jsonl", 2, 6))
    schedule = resolve_schedule(cfg)
    from gradus.data import load_tokenizer

    tok = load_tokenizer(cfg.data)
    states = [state_at(schedule, k, tokens_at_step(schedule, k)) for k in range(8)]
    with DataPipeline(cfg.data, tok, schedule, seed=4) as pipe:
        batches = [pipe.next_batch(s) for s in states[:4]]
        saved = pipe.state_dict()
        batches += [pipe.next_batch(s) for s in states[4:]]
    with DataPipeline(cfg.data, tok, schedule, seed=4) as again:
        again.load_state_dict(saved)
        resumed = [again.next_batch(s) for s in states[4:]]
    for a, b in zip(batches[4:], resumed, strict=True):
        assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, b.labels)
    assert batches[2].tokens_by_source["chat"] > 0 and batches[1].tokens_by_source["chat"] == 0


# ------------------------------------------------------------------------------------- bad input
def _one_line_error(capsys, cfg: dict, tmp_path: Path) -> str:
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("record, expected", [
    ({"text": "no messages"}, "chat record's 'messages' is missing"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "chat record has no assistant message"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0] is"),
])
def test_a_bad_record_is_one_line_naming_file_and_line(tmp_path, capsys, tok_path, chat_file, offline_data,
                                                         record, expected):
    bad = tmp_path / "bad.jsonl"
    lines = chat_file.read_text().splitlines()[:30]
    lines.insert(6, json.dumps(record))
    bad.write_text("\n".join(lines) + "\n")
    cfg = sft_config(tok_path, bad, offline_data / "wikitext-2" / "train.jsonl", 1, 2)
    cfg["data"]["validation"]["fraction"] = 0.0
    line = _one_line_error(capsys, cfg, tmp_path)
    assert f"{bad}:7: " in line and expected in line and "messages: [{role, content}" in line


def test_a_prompt_template_field_missing_from_a_record_is_named(tmp_path, capsys, tok_path, offline_data):
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n" + json.dumps({"question": "2+2?"}) + "\n")
    cfg = sft_config(tok_path, bad, offline_data / "wikitext-2" / "train.jsonl", 1, 2)
    cfg["data"]["sources"][1].update(prompt_template="{question}", response_template="{answer}")
    cfg["data"]["validation"]["fraction"] = 0.0
    line = _one_line_error(capsys, cfg, tmp_path)
    assert f"{bad}:2: record has no field 'answer' used by the assistant template" in line


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["curriculum"]["stages"][0]["mix"].update(chat=1),
     "curriculum.stages[0].mix.chat: source 'chat' is kind: chat, read only by stages with kind: sft"),
    (lambda c: c["curriculum"]["stages"][1]["mix"].update(text=1),
     "curriculum.stages[1].mix.text: source 'text' is kind: text"),
    (lambda c: c["data"]["sources"][1].update(kind="text"),
     "curriculum.stages[1].kind=sft: no source of kind: chat"),
    (lambda c: c["data"]["sources"][1].update(prompt_template="{q}"),
     "set both prompt_template and response_template"),
])
def test_chat_sources_and_sft_stages_go_together(tmp_path, capsys, tok_path, chat_file, offline_data, change,
                                                 expected):
    cfg = sft_config(tok_path, chat_file, offline_data / "wikitext-2" / "train.jsonl")
    change(cfg)
    assert expected in _one_line_error(capsys, cfg, tmp_path)


# ------------------------------------------------------------------------------------- export
def test_the_export_carries_the_builtin_template_that_transformers_renders_alike(tmp_path):
    """The exported chat_template (for TRL's DPOTrainer, apply_chat_template) renders the text and token ids
    stage D trained on, and its segments match the built-in ones."""
    transformers = pytest.importorskip("transformers")
    from gradus.data.chat import BUILTIN_CHAT_JINJA, EOS_MARK, HFChatTemplate, builtin_segments
    from gradus.export.hf import export_hf

    tok = tiny_tokenizer()
    export_hf(tiny_model(tok), tok, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == BUILTIN_CHAT_JINJA
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 3."},
                {"role": "assistant", "content": "5"}]
    ours: list[tuple[str, bool]] = []
    for t, trained in builtin_segments(messages):  # untrained neighbours merged, as the Jinja path yields them
        t = t.replace(EOS_MARK, "<|endoftext|>")
        ours[-1:] = [(ours[-1][0] + t, trained)] if ours and ours[-1][1] == trained else [*ours[-1:], (t, trained)]
    assert ours[-1] == ("5<|endoftext|>", True)
    assert HFChatTemplate(BUILTIN_CHAT_JINJA, "<|endoftext|>").segments(messages, "x") == ours
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    src = from_dict(sft_config(Path("t"), Path("c"), Path("x"))).data.sources[1]
    (rec,) = encode_marked(tok.backend, [ChatRenderer(src).render({"messages": messages}, "x")], tok.eos_id,
                           tok.dtype, special_ids(tok.backend))
    rendered = hf_tok.apply_chat_template(messages, tokenize=False)
    assert rendered == "".join(t for t, _ in ours)
    assert hf_tok(rendered, add_special_tokens=False)["input_ids"] == [int(i) for i in rec["id"]]
    prompt = hf_tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("Add 2 and 3.\n<|assistant|>\n")


def test_gradus_schedule_shows_the_sft_stage(tmp_path, capsys, tok_path, chat_file, offline_data):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(sft_config(tok_path, chat_file, offline_data / "wikitext-2" / "train.jsonl")))
    assert main(["schedule", str(path), "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert ["kind" in s for s in stages] == [False, True] and stages[1]["kind"] == "sft"
    assert (stages[1]["seq_len"], stages[1]["batch_size"], stages[1]["peak_lr"]) == (64, 8, 3e-3)
    assert main(["schedule", str(path)]) == 0
    assert "D (sft)" in capsys.readouterr().out


def test_worker_processes_tokenise_chat_records_alike(tmp_path, tok_path, chat_file, offline_data):
    cfg = from_dict(sft_config(tok_path, chat_file, offline_data / "wikitext-2" / "train.jsonl", 1, 3))
    schedule = resolve_schedule(cfg)
    from gradus.data import load_tokenizer

    tok = load_tokenizer(cfg.data)
    states = [state_at(schedule, k, tokens_at_step(schedule, k)) for k in range(4)]
    got = []
    for workers in (0, 1):
        with DataPipeline(cfg.data, tok, schedule, seed=2, prefetch=0, num_workers=workers) as pipe:
            got.append([pipe.next_batch(s) for s in states])
    for a, b in zip(*got, strict=True):
        assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, b.labels)
    assert int((got[1][3].labels != -100).sum()) > 8 * 15  # 8 records of ~19 trained tokens each


def test_a_template_that_opens_with_bos_renders_as_the_exported_model_renders_it(tmp_path):
    """Llama-style templates open with ``{{ bos_token }}``: training rendered it empty while the export declares
    the end token as bos_token, so transformers put a token at every chat's start the model never trained on."""
    transformers = pytest.importorskip("transformers")
    from gradus.data import load_tokenizer
    from gradus.data.chat import EOS_MARK, TRAIN_OFF, TRAIN_ON
    from gradus.data.tokenizer import Tokenizer
    from gradus.export.hf import export_hf

    template = "{{ bos_token }}" + CHATML
    backend = tiny_tokenizer().backend
    folder = tmp_path / "tok"
    Tokenizer(backend, eos_id=backend.token_to_id("<|endoftext|>"), kind="file", name_or_path="x").save(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    raw = sft_config(folder, tmp_path / "c.jsonl", tmp_path / "t.jsonl")
    cfg = from_dict(raw)
    loaded = load_tokenizer(cfg.data)
    assert loaded.chat_template == template
    messages = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]
    marked = ChatRenderer(cfg.data.sources[1], loaded.chat_template, loaded.eos_token).render({"messages": messages},
                                                                                              "x")
    trained_text = marked.replace(TRAIN_ON, "").replace(TRAIN_OFF, "").replace(EOS_MARK, "<|endoftext|>")
    assert trained_text.startswith("<|endoftext|><|im_start|>user\n")
    export_hf(tiny_model(loaded), loaded, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok.apply_chat_template(messages, tokenize=False) == trained_text
