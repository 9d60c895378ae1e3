"""The run's tokenizer: a fast (Rust) Hugging Face ``tokenizers`` tokenizer, fixed for the run.

:func:`load_tokenizer` resolves ``data.tokenizer``:

* ``train_vocab_size`` set: a byte-level BPE trained on the configured sources (the first
  ``train_max_documents`` documents of each, held-out documents excluded), loaded from the run directory
  if it already holds one (resume), else from a cache keyed by a hash of the sources and sizes;
* ``name_or_path`` a ``tokenizer.json`` file, or a folder with ``tokenizer.json`` or with GPT-2 style
  ``vocab.json`` + ``merges.txt`` (byte-level BPE);
* otherwise a Hugging Face Hub repository (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``).

Documents are encoded in batches with ``encode_batch_fast`` (no offsets: about twice as fast) and with
``encode_special_tokens`` on, so a document that happens to contain the text ``<|endoftext|>`` cannot
inject an EOS: the only EOS tokens in the stream are the ones placed between documents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from gradus.config import DataConfig
from gradus.data.chat import TOKENIZER_CONFIG, find_chat_template, strip_marks
from gradus.errors import DataError, first_line
from gradus.files import make_readable

log = logging.getLogger("gradus.data")

DEFAULT_EOS = "<|endoftext|>"
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]", "<|im_end|>")
IDENTITY_FILE = "tokenizer_identity.json"
TOKENIZER_FILE = "tokenizer.json"
"""The file :meth:`Tokenizer.save` writes the tokenizer itself into, in any folder."""


class Tokenizer:
    """A tokenizer fixed for a run: batch encoding, the EOS id, decoding, and an identity to check on resume.

    Wraps a ``tokenizers.Tokenizer`` (``backend``)."""

    chat_template: str | None = None
    """The Hugging Face chat template (Jinja) of the tokenizer's ``tokenizer_config.json``, if it has one;
    chat sources render with it (see :mod:`gradus.data.chat`)."""

    def __init__(self, backend, *, eos_id: int, kind: str, name_or_path: str):
        self.backend = backend
        self.eos_id = int(eos_id)
        self.kind = kind
        self.name_or_path = name_or_path
        self._json = backend.to_str()
        self._sha256 = hashlib.sha256(self._json.encode("utf-8")).hexdigest()
        # Not part of the serialised tokenizer (the identity above is unaffected): special-token text
        # inside a document is encoded as plain text.
        self.backend.encode_special_tokens = True
        self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        self.dtype = np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32

    @property
    def eos_token(self) -> str:
        """The end-of-document token's text."""
        return self.backend.id_to_token(self.eos_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no EOS added)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts at once (no EOS added); parallel in Rust unless TOKENIZERS_PARALLELISM=false."""
        return [e.ids for e in self.backend.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_arrays(self, texts: Sequence[str], eos: Sequence[bool] | None = None) -> list[np.ndarray]:
        """Token ids as compact numpy arrays (uint16 when the vocabulary fits), EOS appended where ``eos``."""
        encs = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        out = []
        for i, e in enumerate(encs):
            ids = e.ids
            if eos is not None and eos[i]:
                ids.append(self.eos_id)
            out.append(np.array(ids, dtype=self.dtype))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens shown)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        """The serialised tokenizer (``tokenizer.json`` content)."""
        return self._json

    def identity(self) -> dict:
        """What a checkpoint records: kind, name_or_path, vocab_size, eos, sha256 of the serialised
        tokenizer. Compare with :func:`check_identity` on resume."""
        return {
            "kind": self.kind,
            "name_or_path": self.name_or_path,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "eos_token": self.eos_token,
            "sha256": self._sha256,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_identity.json`` into ``directory`` and, when the tokenizer
        carries a chat template, ``tokenizer_config.json`` holding it; returns the json path.

        The template is kept with the tokenizer because it is read from where the tokenizer came from (a
        folder, the Hub's cache): an export or a load on another machine, or after the cache was cleared or
        the Hub's copy changed, would otherwise serve another template than the run's chat records had."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / TOKENIZER_FILE
        _atomic_write(path, self._json)
        _atomic_write(d / IDENTITY_FILE, json.dumps(self.identity(), indent=2) + "\n")
        if self.chat_template:
            _atomic_write(d / TOKENIZER_CONFIG, json.dumps({"chat_template": self.chat_template}, indent=2) + "\n")
        return path

    def __repr__(self) -> str:
        return f"Tokenizer({self.kind}: {self.name_or_path}, vocab {self.vocab_size}, eos {self.eos_id})"


def check_identity(saved: dict, tok: Tokenizer) -> None:
    """Raise a one-line DataError when ``saved`` (from a checkpoint) is not this tokenizer."""
    now = tok.identity()
    if saved.get("sha256") != now["sha256"]:
        raise DataError(
            f"tokenizer mismatch: the checkpoint was trained with {saved.get('name_or_path')!r} "
            f"(vocab {saved.get('vocab_size')}, sha256 {str(saved.get('sha256'))[:12]}) but the config gives "
            f"{now['name_or_path']!r} (vocab {now['vocab_size']}, sha256 {now['sha256'][:12]}); resume with "
            f"the original data.tokenizer settings"
        )


def _atomic_write(path: Path, text: str) -> None:
    # Several processes (ranks, tests) may write the same cache entry: write aside, then rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        make_readable(tmp)  # mkstemp creates 0600; a tokenizer is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ loading
def find_eos_id(backend, configured: str | None, where: str) -> int:
    """The end-of-document token's id in ``backend``: the ``configured`` token (``data.tokenizer.eos_token``),
    else the first of the usual names it knows; a one-line error naming ``where`` (the tokenizer's file or
    kind) when there is none."""
    if configured:
        tid = backend.token_to_id(configured)
        if tid is None:
            raise DataError(f"data.tokenizer.eos_token={configured!r} is not in the vocabulary of {where}")
        return tid
    for cand in _EOS_CANDIDATES:
        tid = backend.token_to_id(cand)
        if tid is not None:
            return tid
    raise DataError(f"{where} has no end-of-document token I recognise; set data.tokenizer.eos_token")


def _byte_level_bpe(vocab: Path, merges: Path):
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    backend = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # GPT-2's vocab.json has <|endoftext|>; registering it as special makes it one token, never merged.
    specials = [t for t in _EOS_CANDIDATES if backend.token_to_id(t) is not None]
    if specials:
        backend.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return backend


def _tokenizer_file(path: Path):
    """A tokenizers-library ``tokenizer.json``; a file that is not one (empty, not JSON, no model) is a one-line
    DataError naming it, not the library's Rust message ("EOF while parsing", "Model missing")."""
    from tokenizers import Tokenizer as HFTokenizer

    try:
        return HFTokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for every parse error
        what = "an empty file" if path.stat().st_size == 0 else _not_a_tokenizer(path, exc)
        raise DataError(f"data.tokenizer.name_or_path={str(path)!r}: {what}; give a tokenizer.json written by the "
                        "Hugging Face tokenizers library (a run directory's tokenizer.json, or gradus tokenizer "
                        "train's), or a folder with vocab.json and merges.txt") from None


def _not_a_tokenizer(path: Path, exc: Exception) -> str:
    """Why ``path`` is not a tokenizer file: not JSON (the parser's place), or JSON without a tokenizer's
    ``model`` (the library's message there is a parse detail about the first key, which misleads)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = None  # not JSON: the parser's place says where
    if data is not None and (not isinstance(data, dict) or "model" not in data):
        return "JSON, but not a tokenizer file (no \"model\" in it)"
    return f"not a tokenizer file ({str(exc).splitlines()[0]})"


def _byte_level_pair(path: Path):
    try:
        return _byte_level_bpe(path / "vocab.json", path / "merges.txt")
    except Exception as exc:  # noqa: BLE001 - as above
        raise DataError(f"data.tokenizer.name_or_path={str(path)!r}: its vocab.json and merges.txt do not make a "
                        f"BPE ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); give GPT-2's "
                        "format (vocab.json mapping tokens to ids, merges.txt one merge per line)") from None


def _from_local(path: Path):
    if path.is_file():
        return _tokenizer_file(path), "file"
    if (path / "tokenizer.json").is_file():
        return _tokenizer_file(path / "tokenizer.json"), "file"
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return _byte_level_pair(path), "vocab-merges"
    raise DataError(
        f"data.tokenizer.name_or_path={str(path)!r}: the folder has neither tokenizer.json nor "
        f"vocab.json + merges.txt"
    )


def _from_hub(name: str):
    """``tokenizer.json`` from a Hub repository, else its ``vocab.json`` + ``merges.txt``."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with datasets
        raise DataError(f"tokenizer {name!r}: huggingface_hub is not installed ({exc})") from None
    hint = (
        "give data.tokenizer.name_or_path a local tokenizer.json (every gradus run directory keeps its own: "
        "runs/<run>/tokenizer.json) or a folder with vocab.json + merges.txt, or set "
        "data.tokenizer.train_vocab_size (e.g. 8192) to train a BPE on your sources"
    )
    offline = any(os.environ.get(v, "") not in ("", "0", "false") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))

    def fetch(local_only: bool):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return HFTokenizer.from_file(hf_hub_download(name, "tokenizer.json", local_files_only=local_only)), "hub"
        except EntryNotFoundError as exc:
            # Not cached is not "the repository has no tokenizer.json" (LocalEntryNotFoundError subclasses
            # EntryNotFoundError): only the latter falls back to vocab + merges, or a cached pair would win over
            # the repository's tokenizer.json and its special tokens.
            if local_only and type(exc).__name__ == "LocalEntryNotFoundError":
                raise
            vocab = hf_hub_download(name, "vocab.json", local_files_only=local_only)
            merges = hf_hub_download(name, "merges.txt", local_files_only=local_only)
            return _byte_level_bpe(Path(vocab), Path(merges)), "hub"

    try:
        try:
            return fetch(local_only=True)  # the local cache first: no network, no wait
        except Exception:  # noqa: BLE001 - not cached (any of the library's errors): ask the Hub
            if offline:
                raise
        unreachable = _hub_unreachable()
        if unreachable:
            # Fail at once: the library's retries would spend most of a minute before saying the same.
            raise DataError(f"tokenizer {name!r}: the Hugging Face Hub cannot be reached from here ({unreachable}) "
                            f"and it is not in the local cache; {hint}")
        return fetch(local_only=False)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, network: all one line for people
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = "offline mode is on and it is not in the local cache" if offline else first  # whole: never cut
        raise DataError(f"tokenizer {name!r} could not be loaded from the Hugging Face Hub ({why}); {hint}") from None


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub's host cannot be reached (a TCP connection within ``timeout`` seconds), or None when it can."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:  # noqa: BLE001 - an old huggingface_hub: the default endpoint
        endpoint = urlparse("https://huggingface.co")
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                        "all_proxy")):
        return None  # through a proxy a direct connection says nothing: let the client try
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    outcome: dict[str, object] = {}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome["ok"] = True
        except OSError as exc:
            outcome["error"] = f"{host}:{port}: {exc.strerror or type(exc).__name__}"

    # In a thread: the timeout does not cover the name lookup, which a broken resolver can stall for long.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        return f"{host}:{port}: no answer within {timeout:g} s"
    return outcome.get("error")


def load_tokenizer(cfg: DataConfig, run_dir: str | Path | None = None,
                   log: Callable[[str], None] | None = None, *, run_config: Path | None = None) -> Tokenizer:
    """The tokenizer ``cfg.tokenizer`` names (see the module docstring); a trained one is saved into
    ``run_dir`` when given, so the run directory always holds the tokenizer it was trained with. ``log``
    (e.g. the trainer's console) is told, in one line, before a BPE is trained: that can take a while.
    ``run_config``: the config the run started with (its path is the run directory's business:
    :class:`gradus.train.storage.run_dir.RunDir`); a resumed BPE trained at another ``train_vocab_size`` is refused."""
    tcfg = cfg.tokenizer
    if tcfg.train_vocab_size is not None:
        return _trained(cfg, Path(run_dir) if run_dir is not None else None, log, run_config)
    name = tcfg.name_or_path
    if not name:
        raise DataError("data.tokenizer: give name_or_path (a Hub name or local path) or train_vocab_size")
    path = Path(os.path.expanduser(name))
    if path.exists():
        backend, kind = _from_local(path)
        where = str(path)
    elif "/" in name and (name.startswith((".", "/", "~")) or name.endswith(".json")):
        raise DataError(f"data.tokenizer.name_or_path={name!r}: no such file or folder")
    else:
        backend, kind = _from_hub(name)
        where = f"Hub tokenizer {name!r}"
    tok = Tokenizer(backend, eos_id=find_eos_id(backend, tcfg.eos_token, where), kind=kind, name_or_path=name)
    tok.chat_template = find_chat_template(name)
    return tok


# ----------------------------------------------------------------------------------------- training
def training_texts(cfg: DataConfig, max_documents: int | None = None) -> Iterator[str]:
    """Texts a BPE is trained on: the first ``max_documents`` training documents of each source (held-out
    documents excluded, pieces of huge documents as separate texts)."""
    from gradus.data.sources import open_reader

    limit = max_documents or cfg.tokenizer.train_max_documents
    for src in cfg.sources:
        reader = open_reader(src, role="train", holdout=cfg.validation.fraction, retries=cfg.retries,
                             backoff=cfg.retry_backoff)
        docs = 0
        for piece in reader.scan(None):
            if piece.end_of_pass:
                break
            if piece.first:
                docs += 1
                if docs > limit:
                    break
            yield strip_marks(piece.text) if reader.chat is not None else piece.text  # type: ignore[arg-type]


def train_tokenizer(cfg: DataConfig, vocab_size: int, max_documents: int | None = None) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` (EOS ``<|endoftext|>`` included) on the configured sources."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[cfg.tokenizer.eos_token or DEFAULT_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(training_texts(cfg, max_documents), trainer)
    eos = find_eos_id(backend, cfg.tokenizer.eos_token, "the trained BPE")
    return Tokenizer(backend, eos_id=eos, kind="trained", name_or_path=f"bpe-{vocab_size}")


def cache_dir() -> Path:
    """Where trained tokenizers are cached: ``$GRADUS_CACHE_DIR`` or ``~/.cache/gradus``, then ``tokenizers/``."""
    root = os.environ.get("GRADUS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gradus"
    )
    return Path(root) / "tokenizers"


def training_key(cfg: DataConfig) -> str:
    """Hash of everything a trained BPE depends on: sources (and their files' sizes and times), vocab
    size, documents per source, held-out fraction, library and (for builtin corpora) Python versions."""
    import tokenizers

    from gradus.data.local_files import expand_paths

    files = []
    for src in cfg.sources:
        if src.path:
            try:
                for f in expand_paths(src.path, src.name):
                    st = f.stat()
                    files.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
            except DataError:
                files.append([src.path, None, None])
    payload = {
        "v": 1,
        "sources": [s.model_dump(mode="json") for s in cfg.sources],
        "files": files,
        "vocab_size": cfg.tokenizer.train_vocab_size,
        "max_documents": cfg.tokenizer.train_max_documents,
        "eos": cfg.tokenizer.eos_token or DEFAULT_EOS,
        "holdout": cfg.validation.fraction,
        "tokenizers": tokenizers.__version__,
        "python": list(sys.version_info[:2]) if any(s.builtin for s in cfg.sources) else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _run_train_vocab(run_config: Path | None) -> int | None:
    """The ``data.tokenizer.train_vocab_size`` the run started with (its saved config ``run_config``), or None
    when that file is not given, absent or unreadable (the tokenizer file alone then decides)."""
    import yaml

    if run_config is None:
        return None
    try:
        raw = yaml.safe_load(run_config.read_text(encoding="utf-8"))
        value = raw["data"]["tokenizer"].get("train_vocab_size")
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def _trained(cfg: DataConfig, run_dir: Path | None, log_line: Callable[[str], None] | None = None,
             run_config: Path | None = None) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    vocab = cfg.tokenizer.train_vocab_size
    assert vocab is not None
    if run_dir is not None and (run_dir / "tokenizer.json").is_file():
        # Resume: the run directory's tokenizer is the one its checkpoints were trained with.
        path = run_dir / "tokenizer.json"
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise DataError(
                f"{path} is not a readable tokenizer ({first_line(exc)}); restore the run's tokenizer.json, "
                f"or start a new run with another --out"
            ) from None
        saved = _run_train_vocab(run_config)
        if saved is not None and saved != vocab:
            raise DataError(
                f"data.tokenizer.train_vocab_size={vocab}, but the run in {run_dir} trained its tokenizer with "
                f"{saved} (its config.yaml); set it back to {saved} to continue, or start a new run with another --out"
            )
        eos = find_eos_id(backend, cfg.tokenizer.eos_token, f"{path}")
        tok = Tokenizer(backend, eos_id=eos, kind="trained", name_or_path=f"bpe-{vocab}")
        if tok.vocab_size != vocab:  # a corpus too small for the requested merges: the run's own tokenizer stands
            log.warning("%s has %d tokens but data.tokenizer.train_vocab_size=%d; using the run's own tokenizer",
                        path, tok.vocab_size, vocab)
        return tok
    key = training_key(cfg)
    cached = cache_dir() / key[:24] / "tokenizer.json"
    if cached.is_file():
        backend = HFTokenizer.from_file(str(cached))
        tok = Tokenizer(backend, eos_id=find_eos_id(backend, cfg.tokenizer.eos_token, str(cached)), kind="trained",
                        name_or_path=f"bpe-{vocab}")
    else:
        log.info("training a byte-level BPE of %d tokens on %d sources", vocab, len(cfg.sources))
        if log_line is not None:
            log_line(f"tokenizer: training a byte-level BPE of {vocab:,} tokens on up to "
                     f"{cfg.tokenizer.train_max_documents:,} documents of each of {len(cfg.sources)} sources "
                     f"(once; cached in {cached.parent.parent})")
        tok = train_tokenizer(cfg, vocab)
        try:
            tok.save(cached.parent)
        except OSError as exc:  # a read-only cache is no reason to stop; the run dir keeps a copy
            log.warning("could not cache the trained tokenizer in %s: %s", cached.parent, exc)
    if run_dir is not None:
        tok.save(run_dir)
    return tok
