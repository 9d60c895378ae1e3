"""The run directory has one owner (gradus/train/storage/run_dir.py): its layout, lock, status file and leftovers.

The layout test parses every module under gradus/ (no module is imported) and fails on a run file's name
spelt anywhere but run_dir.py, so a new reader or writer of a run directory asks :class:`RunDir` instead
of growing a second copy of the layout.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from gradus.errors import ConfigError
from gradus.train.storage import run_dir as rd
from gradus.train.storage.run_dir import CheckpointFiles, RunDir, RunLock

PACKAGE = Path(__file__).resolve().parents[1] / "gradus"
OWNER = PACKAGE / "train" / "storage" / "run_dir.py"

# Names distinctive enough to be a run file wherever they appear as a whole string literal.
FILE_NAMES = {rd.CONFIG, rd.TOKENIZER, rd.METRICS, rd.STATUS, rd.LOCK, rd.CHECKPOINTS, rd.WANDB_ID,
              rd.MODEL, rd.OPTIMIZER, rd.STATE, rd.META, rd.EMA_WEIGHTS}
# Words that are also config keys, Stateful part names or record keys ("ema", "best", "tensorboard",
# "shards"): a run folder's name only where a path is built with them (``x / "best"``, ``Path("best")``).
FOLDER_NAMES = {rd.TENSORBOARD, rd.BEST, rd.EMA, rd.SHARDS, rd.WANDB}

ALLOWED = {
    # The Hugging Face folder layout transformers reads (an export, not a run directory).
    ("export/hf.py", rd.TOKENIZER): "a Hugging Face export's tokenizer file",
    ("export/hf.py", rd.MODEL): "a Hugging Face export's weights file",
    # The tokenizer's own file name in any folder it is saved to or read from (a tokenizer folder, the
    # cache, the Hub, a run); data/ sits below train/ and cannot ask RunDir. RunDir.tokenizer is checked
    # against what Tokenizer.save writes (test_the_tokenizer_file_is_where_the_tokenizer_saves_it).
    ("data/tokenizer.py", rd.TOKENIZER): "the tokenizer's own file in any folder",
    # `gradus plan` guesses the vocabulary from a tokenizer folder named by data.tokenizer.name_or_path.
    ("commands/plan.py", rd.TOKENIZER): "a tokenizer folder, not a run directory",
}


def _spelt(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every run-directory name a module spells."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FILE_NAMES:
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            right = node.right
            if isinstance(right, ast.Constant) and right.value in FOLDER_NAMES:
                found.append((right.lineno, right.value))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                "Path", "joinpath"):
            found += [(a.lineno, a.value) for a in node.args
                      if isinstance(a, ast.Constant) and a.value in FOLDER_NAMES]
    return found


def test_no_module_but_run_dir_spells_a_run_file_name():
    problems, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == OWNER or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        for line, name in _spelt(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if (rel, name) in ALLOWED:
                used.add((rel, name))
            else:
                problems.append(f"gradus/{rel}:{line} spells {name!r}; ask gradus.train.storage.run_dir.RunDir")
    assert not problems, "\n".join(problems)
    assert used == set(ALLOWED), f"stale exceptions: {sorted(set(ALLOWED) - used)}"


def test_the_check_sees_a_spelt_name():
    tree = ast.parse('p = run / "metrics.jsonl"\nq = run / "best"\nr = {"ema": 1}\ns = Path("tensorboard")\n')
    assert sorted(_spelt(tree)) == [(1, "metrics.jsonl"), (2, "best"), (4, "tensorboard")]


def test_the_layout_is_the_one_every_earlier_gradus_wrote(tmp_path):
    run = RunDir(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in (
        run.config, run.tokenizer, run.metrics, run.tensorboard, run.status, run.lock_file, run.checkpoints,
        run.wandb_id)] == ["config.yaml", "tokenizer.json", "metrics.jsonl", "tensorboard", "status.json", ".lock",
                           "checkpoints", "wandb_id.txt"]
    ckpt = run.checkpoint(rd.step_name(12))
    assert ckpt.path == tmp_path / "checkpoints" / "step_00000012" and ckpt.run == run
    assert [p.name for p in (ckpt.model, ckpt.optimizer, ckpt.state, ckpt.config, ckpt.meta, ckpt.ema_weights,
                             ckpt.shards)] == ["model.safetensors", "optimizer.pt", "state.pt", "config.yaml",
                                               "meta.json", "ema.safetensors", "shards"]
    assert rd.step_of("step_00000012") == 12 and rd.step_of("best") is None and rd.step_of(".tmp-step_1") is None
    assert RunDir.of(str(tmp_path)) == run and RunDir.of(run) is run


def test_the_tokenizer_file_is_where_the_tokenizer_saves_it(tmp_path, bpe_tokenizer_dir: Path):
    from gradus.config import DataConfig
    from gradus.data import load_tokenizer

    tok = load_tokenizer(DataConfig(sources=[{"name": "x", "path": str(tmp_path)}],
                                    tokenizer={"name_or_path": str(bpe_tokenizer_dir)}))
    assert tok.save(tmp_path / "run") == RunDir(tmp_path / "run").tokenizer


def test_status_is_written_atomically_and_read_back(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_status() is None
    run.write_status("stopped", 7, "stopped at step 7", 0)
    status = run.read_status()
    assert status is not None and json.loads(run.status.read_text()) == status
    assert {k: status[k] for k in ("status", "step", "exit_code", "resumable")} == {
        "status": "stopped", "step": 7, "exit_code": 0, "resumable": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temporary file left
    RunDir(tmp_path / "missing" / "deeper").write_status("failed", 1, "x", 1)  # never raises


def test_prepare_locks_cleans_and_refuses_a_second_writer(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.checkpoints / ".tmp-step_00000004-99").mkdir(parents=True)
    lock = run.prepare()
    try:
        assert not any(run.checkpoints.iterdir())  # the killed save's leftover is gone
        with pytest.raises(ConfigError, match="is in use by process"):
            RunLock(run.path)
    finally:
        lock.release()
    run.prepare().release()


def test_checkpoint_files_of_a_checkpoint_copy():
    files = CheckpointFiles(Path("/r/checkpoints/best"))
    assert files.run.path == Path("/r") and files.tokenizer == Path("/r/checkpoints/best/tokenizer.json")


def test_a_failed_run_with_a_checkpoint_is_resumable_and_a_diverged_one_is_not(tmp_path):
    """A full disk or a crash leaves a run that resumes from its last checkpoint: status.json says so (it used to
    say resumable: false); a diverged run would diverge again as it is."""
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_status("failed", 3, "could not write checkpoint: no space left on device", 1)
    assert run.read_status()["resumable"] is False  # no checkpoint yet: nothing to resume from
    (run.checkpoints / "step_00000004").mkdir(parents=True)
    run.write_status("failed", 6, "could not write checkpoint: no space left on device", 1)
    assert run.read_status()["resumable"] is True
    run.write_status("diverged", 6, "training diverged", 3)
    assert run.read_status()["resumable"] is False
