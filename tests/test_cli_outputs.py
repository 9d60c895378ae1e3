"""Files a command writes at the user's word (``--write FILE``, ``tokenizer train --out DIR``): nothing that is
there is ever replaced, the check comes before the work, and every refusal is one line with exit code 2."""

from __future__ import annotations

import pytest

from gradus.cli import main
from gradus.errors import ConfigError
from gradus.files import check_new_file, write_new_file


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_refusal(code: int, err: str, needle: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


WRITERS = [
    ("plan", "--params", "10M", "--write"),
    ("schedule", "--preset", "demo", "--write"),
    ("lr-find", "--preset", "demo", "--steps", "8", "--write"),
    ("sweep", "--preset", "demo", "--vary", "optim.base_lr=1x,2x", "--budget", "100k", "--write"),
]


@pytest.mark.parametrize("argv", WRITERS, ids=[w[0] for w in WRITERS])
def test_write_never_replaces_an_existing_file_and_refuses_before_any_run(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)  # lr-find and sweep would make run folders here if they started
    mine = tmp_path / "mine.yaml"
    mine.write_text("mine\n", encoding="utf-8")
    code, _, err = _run(capsys, *argv, str(mine))
    _one_line_refusal(code, err, f"--write {mine}: the file exists")
    assert mine.read_text(encoding="utf-8") == "mine\n"
    assert not (tmp_path / "runs").exists()  # refused before any training


@pytest.mark.parametrize("argv", WRITERS[:2], ids=[w[0] for w in WRITERS[:2]])
def test_write_makes_missing_folders_and_refuses_a_file_in_the_way(capsys, tmp_path, argv):
    out = tmp_path / "configs" / "new" / "run.yaml"
    code, _, err = _run(capsys, *argv, str(out))
    assert code == 0, err
    assert out.is_file() and out.stat().st_size > 0
    code, _, err = _run(capsys, *argv, str(out / "again.yaml"))
    _one_line_refusal(code, err, f"{out} is a file, not a folder")
    code, _, err = _run(capsys, *argv, str(tmp_path / "configs"))
    _one_line_refusal(code, err, "that is a folder; give a file name")


def test_schedule_from_run_write_refuses_an_existing_file_before_reading_the_run(capsys, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("mine\n", encoding="utf-8")
    code, _, err = _run(capsys, "schedule", "--from-run", str(tmp_path / "no-run"), "--write", str(mine))
    _one_line_refusal(code, err, "the file exists")
    assert mine.read_text(encoding="utf-8") == "mine\n"


def test_tokenizer_out_checked_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "tok.txt"
    a_file.write_text("x", encoding="utf-8")
    base = ("tokenizer", "train", "--preset", "demo", "--vocab-size", "300")
    code, _, err = _run(capsys, *base, "--out", str(a_file))
    _one_line_refusal(code, err, "that is a file; give a folder")
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    code, _, err = _run(capsys, *base, "--out", str(folder))
    _one_line_refusal(code, err, "the file exists")
    assert (folder / "tokenizer.json").read_text(encoding="utf-8") == "{}"


@pytest.mark.parametrize("size", ["1000000000", str((1 << 20) + 1)])
def test_tokenizer_vocab_size_has_an_upper_bound(capsys, tmp_path, size):
    code, _, err = _run(capsys, "tokenizer", "train", "--preset", "demo", "--vocab-size", size,
                        "--out", str(tmp_path / "t"))
    _one_line_refusal(code, err, f"--vocab-size={size}: at most 1,048,576")
    assert not (tmp_path / "t").exists()


def test_write_new_file_refuses_a_file_that_appeared_after_the_check(tmp_path):
    path = check_new_file(tmp_path / "a.yaml", "--write")
    path.write_text("someone else's\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="the file exists"):
        write_new_file(path, "mine\n", "--write")
    assert path.read_text(encoding="utf-8") == "someone else's\n"


def test_lr_find_out_that_is_a_file_is_bad_input(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("x", encoding="utf-8")
    code, _, err = _run(capsys, "lr-find", "--preset", "demo", "--out", "x.txt")
    _one_line_refusal(code, err, "--out x.txt: cannot create the folder")


def test_train_names_a_bad_preset_override_by_the_preset_not_its_file(capsys, tmp_path):
    """``gradus train --preset demo --set ...`` said ``/…/site-packages/gradus/presets/demo.yaml (--set)``, a
    path the user never gave; ``schedule`` and every other command say ``preset demo``."""
    code, _, err = _run(capsys, "train", "--preset", "demo", "--set", "train.max_steps=-1", "--out", str(tmp_path / "r"))
    _one_line_refusal(code, err, "preset demo (--set): train.max_steps=-1: must be greater than 0")
    code, _, err = _run(capsys, "train", "--set", "train.max_steps=-1", "--out", str(tmp_path / "r"))  # the default
    _one_line_refusal(code, err, "preset demo (--set): train.max_steps=-1")
    assert not (tmp_path / "r").exists()


def test_a_folder_that_cannot_be_checked_is_one_line(tmp_path, monkeypatch):
    """A folder on the way that this user may not read made ``is_dir`` raise PermissionError: a traceback."""
    from pathlib import Path

    real = Path.is_dir

    def unreadable(self):
        if self == tmp_path / "locked" / "p.yaml":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "is_dir", unreadable)
    with pytest.raises(ConfigError, match=r"--write .*p.yaml: cannot check it \(Permission denied\); choose another"):
        check_new_file(tmp_path / "locked" / "p.yaml", "--write")


def test_plan_checks_its_forecast_before_writing(capsys, tmp_path):
    """A bad --forecast-from left the written config behind, and the corrected rerun then met 'the file exists'."""
    out = tmp_path / "p.yaml"
    code, _, err = _run(capsys, "plan", "--flops", "1e20", "--write", str(out), "--forecast-from",
                        str(tmp_path / "nope.json"))
    _one_line_refusal(code, err, "--forecast-from")
    assert not out.exists()
    code, _, err = _run(capsys, "plan", "--flops", "1e20", "--write", str(out))
    assert code == 0 and out.is_file(), err


def test_lr_find_removes_a_written_config_that_would_not_train(capsys, tmp_path, monkeypatch):
    import gradus.commands.lr_find as lr_find

    monkeypatch.chdir(tmp_path)

    def refuse(path, *a, **k):
        raise ConfigError(f"{path}: stands in for a config that does not schedule")

    monkeypatch.setattr(lr_find, "load_config", refuse)
    out = tmp_path / "lr.yaml"
    code, _, err = _run(capsys, "lr-find", "--preset", "demo", "--steps", "8", "--seq-lens", "32", "--write", str(out))
    assert code == 2 and "stands in for a config that does not schedule" in err, err
    assert not out.exists()  # the next --write is not blocked by it


def test_flops_with_a_suffix_are_not_held_to_the_token_bound():
    from gradus.plan.hardware import parse_float

    assert parse_float("2000T", "--flops") == 2e15
    assert parse_float("5000000T", "--flops") == 5e18  # a count of FLOPs, above 10^15: not a token count
