"""Chat/instruction records for supervised fine-tuning (stage D): render, mark the assistant spans, tokenise.

A chat source (``kind: chat``) reads records that carry a ``messages`` list of ``{role, content}`` (roles
``system``, ``user``, ``assistant``), or plain fields turned into one user and one assistant turn by
``prompt_template`` / ``response_template``. A record becomes *segments*: pieces of text, each either
trained on (the assistant's replies and the end of each reply) or not (everything else), so the loss
falls on the assistant spans only.

Why segments travel as marked text: the readers, the held-out hash, the shuffle buffer and exact resume all
deal in one string per document (:class:`gradus.data.reader.Piece`). A rendered record is therefore one
string in which private-use characters mark where trained spans begin (:data:`TRAIN_ON`) and end
(:data:`TRAIN_OFF`) and where the tokenizer's end token goes (:data:`EOS_MARK`); :func:`encode_marked`
turns it back into segments, tokenises each on its own (so no token straddles a span boundary) and
returns token ids with a per-token ``train`` flag (:func:`chat_dtype`). Characters of those three code
points inside a record are replaced (U+FFFD) before marking, so a record cannot forge a span.

Templates:

* ``builtin`` (always available, documented in the README)::

      <|system|>\\n{content}\\n      not trained
      <|user|>\\n{content}\\n        not trained
      <|assistant|>\\n               not trained
      {content}<EOS>                trained (the reply and the tokenizer's end token, as one token)

  A reply ends with the end token so that a fine-tuned model stops after answering.
* the tokenizer's own Hugging Face ``chat_template`` (Jinja, from ``tokenizer_config.json``), used when
  present unless the source says ``chat_template: builtin``. Each assistant reply's span is found by
  rendering the conversation up to it with ``add_generation_prompt`` (the prompt) and with the reply (the
  prompt + reply + the template's end-of-turn text), which needs a template whose renderings extend one
  another; one that does not is refused, naming the record. Special-token text in the rendering
  (``<|im_start|>`` …) is encoded as those tokens, as ``transformers`` does.

This module imports only the standard library and numpy at the top (the tokenising workers import it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gradus.errors import DataError

TRAIN_ON = "\ue000"
"""Marks the start of a trained span in a rendered record."""
TRAIN_OFF = "\ue001"
"""Marks the end of a trained span."""
EOS_MARK = "\ue002"
"""Stands for the tokenizer's end token (one token id, whatever its text)."""
_MARKS = TRAIN_ON + TRAIN_OFF + EOS_MARK
_MARK_RE = re.compile(f"([{_MARKS}])")
ROLES = ("system", "user", "assistant")
"""The roles a message may have."""


def chat_dtype(id_dtype) -> np.dtype:
    """The array type of a tokenised chat record: the token ``id`` and whether it is ``train``-ed on."""
    return np.dtype([("id", np.dtype(id_dtype)), ("train", np.bool_)])


def is_chat(tokens: np.ndarray) -> bool:
    """Whether a token array is a chat record (ids with train flags) rather than plain ids."""
    return tokens.dtype.names is not None


def strip_marks(text: str) -> str:
    """A rendered record as plain text (what a BPE is trained on): marks removed, the end token dropped."""
    return text.translate({ord(c): None for c in _MARKS})


BUILTIN_CHAT_JINJA = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""The built-in template as a Hugging Face chat template (Jinja): written by ``gradus export --hf`` when the
tokenizer has no template of its own, so ``apply_chat_template`` and TRL format prompts exactly as stage D
trained on them (the same text, the end token as ``eos_token``)."""


# ------------------------------------------------------------------------------------------ records
def record_messages(record: dict, cfg, where: str) -> list[dict[str, str]]:
    """The conversation of one record: its ``messages_field`` list, or the user/assistant pair made by the
    source's prompt/response templates. A malformed record is a DataError naming ``where`` and the fix."""
    if cfg.prompt_template is not None:
        turns = []
        for role, template in (("user", cfg.prompt_template), ("assistant", cfg.response_template)):
            template = template.replace("\\n", "\n").replace("\\t", "\t")
            try:
                turns.append({"role": role, "content": template.format_map(record)})
            except KeyError as exc:
                raise DataError(
                    f"{where}: record has no field {exc.args[0]!r} used by the {role} template of chat source "
                    f"{cfg.name!r} (fields: {', '.join(map(str, record)) or 'none'}); fix the record or the "
                    f"source's prompt_template/response_template"
                ) from None
        return turns
    field = cfg.messages_field
    messages = record.get(field)
    fix = (f"give each record {field}: [{{role, content}}, ...] with roles {'/'.join(ROLES)}, or set the "
           f"source's prompt_template and response_template")
    if not isinstance(messages, list) or not messages:
        got = "missing" if messages is None else f"a {type(messages).__name__}" if messages else "empty"
        raise DataError(f"{where}: chat record's {field!r} is {got} (source {cfg.name!r}); {fix}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: {field}[{i}] is {json.dumps(m)[:80]} (source {cfg.name!r}), not a "
                            f"{{role, content}} message with a string content; {fix}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: chat record has no assistant message, so nothing to train on (source "
                        f"{cfg.name!r}); {fix}")
    return out


def _clean(text: str) -> str:
    """Record text with the mark characters replaced, so a record cannot open or close a span."""
    return text.translate({ord(c): "\ufffd" for c in _MARKS})


def builtin_segments(messages: Sequence[dict[str, str]]) -> list[tuple[str, bool]]:
    """The built-in template's segments (text, trained); :data:`EOS_MARK` is the end token."""
    segs: list[tuple[str, bool]] = []
    for m in messages:
        if m["role"] == "assistant":
            segs.append(("<|assistant|>\n", False))
            segs.append((_clean(m["content"]) + EOS_MARK, True))
        else:
            segs.append((f"<|{m['role']}|>\n{_clean(m['content'])}\n", False))
    return segs


class HFChatTemplate:
    """A Hugging Face Jinja chat template, rendered as ``transformers`` renders it (sandboxed, trimmed)."""

    def __init__(self, source: str, eos_token: str, bos_token: str = ""):
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as exc:  # pragma: no cover - jinja2 comes with transformers and datasets
            raise DataError(f"the tokenizer's chat_template needs jinja2 ({exc}); install it, or set the "
                            f"source's chat_template: builtin") from None

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(source)
        self.eos_token, self.bos_token = eos_token, bos_token

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        """The template's text for ``messages``."""
        return self.template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                    eos_token=self.eos_token, bos_token=self.bos_token)

    def segments(self, messages: Sequence[dict[str, str]], where: str) -> list[tuple[str, bool]]:
        """(text, trained) segments: each assistant reply with the template's end-of-turn text is trained."""
        messages = [{"role": m["role"], "content": _clean(m["content"])} for m in messages]
        try:
            full = self.render(messages, False)
            segs: list[tuple[str, bool]] = []
            done = 0
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                prompt = self.render(messages[:i], True)
                upto = self.render(messages[: i + 1], False)
                if not (upto.startswith(prompt) and full.startswith(upto) and len(prompt) >= done):
                    raise DataError(
                        f"{where}: the tokenizer's chat_template renders message {i} so that the conversation "
                        f"up to it is not a prefix of the whole, so its assistant span cannot be found; set the "
                        f"source's chat_template: builtin"
                    )
                segs += [(prompt[done:], False), (upto[len(prompt):], True)]
                done = len(upto)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - Jinja raises several types; all one line for people
            raise DataError(f"{where}: the tokenizer's chat_template failed ({type(exc).__name__}: {exc}); fix "
                            f"the record or set the source's chat_template: builtin") from None
        segs.append((full[done:], False))
        return [(t, trained) for t, trained in segs if t]


TOKENIZER_CONFIG = "tokenizer_config.json"
"""The Hugging Face tokenizer folder's settings file: where a tokenizer's ``chat_template`` is read from, and
where :meth:`gradus.data.Tokenizer.save` records the one a run's chat records were rendered with."""


def find_chat_template(name_or_path: str | None) -> str | None:
    """The ``chat_template`` of the tokenizer's ``tokenizer_config.json`` (beside a tokenizer.json file, in
    a tokenizer folder), or None when there is none. A Hub tokenizer's config is read from the local cache
    only: a missing one is no reason to reach the network in the middle of a run."""
    if not name_or_path:
        return None
    path = Path(name_or_path).expanduser()
    folder = path if path.is_dir() else path.parent if path.is_file() else None
    config = folder / TOKENIZER_CONFIG if folder is not None else None
    if config is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, TOKENIZER_CONFIG)
            config = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - no cache, no hub library: the built-in template serves
            config = None
    if config is None or not config.is_file():
        return None
    try:
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{config}: cannot read its chat_template ({exc}); fix the file, or set the chat "
                        f"sources' chat_template: builtin") from None
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) and template.strip() else None


class ChatRenderer:
    """Turns a chat source's records into marked text (see the module docstring)."""

    def __init__(self, cfg, hf_template: str | None = None, eos_token: str = "<|endoftext|>"):
        self.cfg = cfg
        use_hf = hf_template is not None and cfg.chat_template == "auto"
        # A template's {{ bos_token }} is the end token's text: gradus models have no BOS, and the export declares
        # the end token as bos_token, so apply_chat_template on the exported model renders what was trained
        # (an empty BOS here and "<|endoftext|>" there put a token at every chat's start it never saw).
        self.hf = (HFChatTemplate(hf_template, eos_token, bos_token=eos_token)  # type: ignore[arg-type]
                   if use_hf else None)

    def render(self, record: dict, where: str) -> str:
        """One record as marked text: trained spans between :data:`TRAIN_ON` and :data:`TRAIN_OFF`."""
        messages = record_messages(record, self.cfg, where)
        segs = self.hf.segments(messages, where) if self.hf is not None else builtin_segments(messages)
        return "".join(f"{TRAIN_ON}{t}{TRAIN_OFF}" if trained else t for t, trained in segs)


# ------------------------------------------------------------------------------------------ tokens
def special_ids(backend) -> dict[str, int]:
    """The tokenizer's special tokens by text: rendered template text holding one is encoded as that token."""
    return {tok.content: int(i) for i, tok in backend.get_added_tokens_decoder().items() if tok.special}


def encode_marked(backend, texts: Sequence[str], eos_id: int, dtype, specials: dict[str, int]) -> list[np.ndarray]:
    """Token arrays (:func:`chat_dtype`) of marked chat records: every segment encoded on its own, in one
    batch call; :data:`EOS_MARK` becomes ``eos_id`` and special-token text its token."""
    special_re = re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")") \
        if specials else None
    plans: list[list[tuple[str | int, bool]]] = []  # per record: (text to encode | token id, trained)
    pieces: list[str] = []
    for text in texts:
        plan: list[tuple[str | int, bool]] = []
        trained = False
        for part in _MARK_RE.split(text):
            if part == TRAIN_ON or part == TRAIN_OFF:
                trained = part == TRAIN_ON
            elif part == EOS_MARK:
                plan.append((eos_id, trained))
            elif part:
                for sub in special_re.split(part) if special_re is not None else [part]:
                    if sub in specials:
                        plan.append((specials[sub], trained))
                    elif sub:
                        plan.append((sub, trained))
                        pieces.append(sub)
        plans.append(plan)
    encoded = iter(backend.encode_batch_fast(pieces, add_special_tokens=False) if pieces else [])
    out = []
    rec_dtype = chat_dtype(dtype)
    for plan in plans:
        ids: list[int] = []
        flags: list[bool] = []
        for item, trained in plan:
            got = [item] if isinstance(item, int) else next(encoded).ids
            ids += got
            flags += [trained] * len(got)
        arr = np.empty(len(ids), dtype=rec_dtype)
        arr["id"], arr["train"] = ids, flags
        out.append(arr)
    return out


def chat_loss_rows(records: Sequence[np.ndarray], seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One record per row: (inputs, labels) int64 ``[len(records), seq_len]`` and the tokens cut off.

    A record of n tokens fills inputs with its first n-1 (at most seq_len) and labels with the next token
    where that token is trained, else -100; the rest of the row is ``pad_id`` / -100. Padding comes after
    the record, so under causal attention no real token attends to it, and a row holds one record only:
    no attention can cross records, with no mask beyond the causal one. A record longer than seq_len + 1
    tokens is cut (its tail counted in the third value)."""
    rows = len(records)
    inputs = np.full((rows, seq_len), pad_id, dtype=np.int64)
    labels = np.full((rows, seq_len), -100, dtype=np.int64)
    cut = 0
    for r, rec in enumerate(records):
        n = min(len(rec), seq_len + 1)
        cut += len(rec) - n
        if n < 2:
            continue
        ids = rec["id"][:n].astype(np.int64)
        inputs[r, : n - 1] = ids[:-1]
        labels[r, : n - 1] = np.where(rec["train"][1:n], ids[1:], -100)
    return inputs, labels, cut
