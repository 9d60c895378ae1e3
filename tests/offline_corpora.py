"""Small corpora generated from what every Python install carries, laid out like ../shared/data.

The tests that only need *some* prose, math, code, plays, web pages and a byte-level BPE read this tree
(the ``offline_data`` fixture in conftest.py), so the suite runs on a fresh clone with nothing beside it.
Only the tests that need the real files (GPT-2's own vocabulary) read ../shared/data.

Sources, all deterministic for a given Python install:

* ``gsm8k/{test,train}.jsonl`` — {"question", "answer"} records from gradus's built-in ``arithmetic``
  corpus (GSM8K-style, ``#### result``), as many as the real splits (1,319 and 7,473), disjoint.
* ``wikitext-2/{train,valid,test}.jsonl`` — {"text", "title"} articles in WikiText's ``= Title =`` form,
  cut from the interpreter's help topics (``pydoc_data.topics``, the prose of the built-in ``python-docs``).
* ``tinyshakespeare/input.txt`` + ``input.jsonl`` — speeches ("SPEAKER:\\nline\\nline") separated by a
  blank line, their lines the standard library's comments; the jsonl splits input.txt on "\\n\\n" exactly
  as the real SOURCE.md does (one speech follows three newlines, as in the real file).
* ``python-code-networkx/networkx_py.jsonl`` — {"text"} standard-library source files (``python-stdlib``).
* ``web-sample/`` — 4 gzipped JSON-lines files of 10 documents and JSON-lines files of 10, 10 and 60
  (the real folder's counts and names), documents of arithmetic problems.
* ``gpt2-tokenizer/{vocab.json,merges.txt}`` — a stand-in with GPT-2's *file layout* (byte-level BPE,
  ``<|endoftext|>``), trained on the corpora above; not GPT-2's vocabulary.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from gradus.data.builtin import arithmetic_problem, stdlib_files

GSM8K_TEST, GSM8K_TRAIN = 1319, 7473
"""Records in the generated GSM8K splits: the real splits' sizes, which the tests assert."""
WIKI_ARTICLES = {"train": 240, "valid": 30, "test": 30}
PLAYS_BYTES = 250_000
"""Size of the generated input.txt: under the 300 kB the huge-document tests cut, so the whole play is used."""
CODE_BYTES = 1_500_000
STANDIN_VOCAB = 8192
"""The stand-in BPE's vocabulary: big enough that the plays encode at ~4 bytes a token, as GPT-2 does."""
WEB_FILES = {  # name -> documents, as in the real web-sample folder
    "dolma_cc_en_head-0091.jsonl": 10,
    "dolma_cc_en_head-0174.jsonl": 10,
    "web_sample.jsonl": 60,
    "dolma_provided_documents_000.json.gz": 10,
    "olmo_c4-sample.01.json.gz": 10,
    "olmo_c4-sample.02.json.gz": 10,
    "olmo_c4-sample.03.json.gz": 10,
}
_SPEAKERS = ["First Citizen", "Second Citizen", "MENENIUS", "CORIOLANUS", "VOLUMNIA", "BRUTUS", "SICINIUS",
             "All", "Messenger", "LUCIUS", "JULIET", "ROMEO", "Nurse", "GLOUCESTER", "KING RICHARD III"]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _problem(index: int) -> dict:
    question, answer = arithmetic_problem(index).rstrip("\n").split("\n", 1)
    return {"question": question, "answer": answer}


def _gsm8k(count: int) -> list[dict]:
    """The first ``count`` problems with distinct questions (as in GSM8K; a few templates repeat a question
    now and then, and tests compare sets of questions)."""
    out, seen, index = [], set(), 0
    while len(out) < count:
        record = _problem(index)
        index += 1
        if record["question"] not in seen:
            seen.add(record["question"])
            out.append(record)
    return out


def _topic_paragraphs() -> list[tuple[str, str]]:
    """(topic, paragraph) pairs of the interpreter's help topics, sorted by topic."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a stripped-down interpreter: fall back on generated prose
        topics = {f"problem {i}": arithmetic_problem(i) for i in range(200_000, 200_400)}
    out = []
    for name in sorted(topics):
        for para in topics[name].split("\n\n"):
            para = " ".join(para.split())
            if len(para) > 40:
                out.append((name, para))
    return out


def _wiki_articles(count: int) -> list[dict]:
    """``count`` articles of about equal size, WikiText-style: " \\n = Title = \\n \\n paragraph \\n ..."."""
    paras = _topic_paragraphs()
    per = max(1, len(paras) // count)
    articles = []
    for k in range(count):
        chunk = paras[k * per : (k + 1) * per]
        title = f"{chunk[0][0].title()} {k}"
        body = "".join(f" {p} \n" for _, p in chunk)
        articles.append({"text": f" \n = {title} = \n \n{body}", "title": title})
    return articles


def _comment_lines():
    """The standard library's comment lines, as prose, in file order."""
    for path in stdlib_files():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line.startswith("# ") and len(line) > 24 and line.isascii():
                yield line[2:]


def _plays() -> str:
    r = random.Random("gradus-tests-plays")
    lines = _comment_lines()
    speeches: list[str] = []
    size = 0
    while size < PLAYS_BYTES:
        body = "\n".join(next(lines) for _ in range(r.randint(1, 4)))
        speech = f"{r.choice(_SPEAKERS)}:\n{body}"
        if len(speeches) == 7:  # the real file has a run of three newlines: a speech that starts with one
            speech = "\n" + speech
        speeches.append(speech)
        size += len(speech) + 2
    return "\n\n".join(speeches) + "\n"


def _code(limit: int) -> list[dict]:
    out, size = [], 0
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        out.append({"text": text})
        size += len(text)
        if size >= limit:
            break
    return out


def _web_document(index: int) -> dict:
    # Three problems per page (~700 bytes): the 10 documents of one file are ~2.5k tokens, a source the
    # mixture tests exhaust within a few dozen small batches (the real olmo_c4 sample is ~4k GPT-2 tokens).
    return {"text": "\n".join(arithmetic_problem(300_000 + 3 * index + k) for k in range(3))}


def _train_standin_tokenizer(folder: Path, texts: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=STANDIN_VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))  # vocab.json + merges.txt, as GPT-2 ships them


def write_offline_corpora(root: Path) -> Path:
    """Write the tree described in the module docstring under ``root``; returns ``root``."""
    problems = _gsm8k(GSM8K_TEST + GSM8K_TRAIN)
    _write_jsonl(root / "gsm8k" / "test.jsonl", problems[:GSM8K_TEST])
    _write_jsonl(root / "gsm8k" / "train.jsonl", problems[GSM8K_TEST:])

    articles = _wiki_articles(sum(WIKI_ARTICLES.values()))
    start = 0
    for split, n in WIKI_ARTICLES.items():
        _write_jsonl(root / "wikitext-2" / f"{split}.jsonl", articles[start : start + n])
        start += n

    plays = _plays()
    (root / "tinyshakespeare").mkdir(parents=True, exist_ok=True)
    (root / "tinyshakespeare" / "input.txt").write_text(plays, encoding="utf-8")
    _write_jsonl(root / "tinyshakespeare" / "input.jsonl", [{"text": s} for s in plays[:-1].split("\n\n")])

    code = _code(CODE_BYTES)
    _write_jsonl(root / "python-code-networkx" / "networkx_py.jsonl", code)

    web, index = root / "web-sample", 0
    for name, n in WEB_FILES.items():
        records = [_web_document(index + i) for i in range(n)]
        index += n
        if name.endswith(".gz"):
            web.mkdir(parents=True, exist_ok=True)
            with gzip.open(web / name, "wt", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        else:
            _write_jsonl(web / name, records)

    texts = [a["text"] for a in articles] + plays.split("\n\n") + [r["text"] for r in code[:200]]
    texts += [p["question"] + "\n" + p["answer"] for p in problems[:GSM8K_TEST]]
    _train_standin_tokenizer(root / "gpt2-tokenizer", texts)
    return root
