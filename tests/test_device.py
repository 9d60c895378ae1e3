"""Device names, checked in one place for ``train.device`` and every command's ``--device``: a name torch
cannot parse, or CUDA where none is visible, is one line naming the setting (exit 2), never torch's traceback."""

from __future__ import annotations

import pytest
import torch

from gradus.cli import main
from gradus.errors import ConfigError
from gradus.model.device import pick_device


def test_known_devices_and_auto():
    assert pick_device("cpu", "--device", "--device cpu") == torch.device("cpu")
    assert pick_device(" CPU ", "--device", "--device cpu") == torch.device("cpu")
    auto = pick_device("auto", "--device", "--device cpu")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("value", ["gpu", "cuda:x", ""])
def test_a_name_that_is_not_a_device(value):
    with pytest.raises(ConfigError, match=rf"train.device='{value}' is not a device; use auto, cpu, cuda or cuda:N"):
        pick_device(value, "train.device", "--set train.device=cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no CUDA device is visible")
@pytest.mark.parametrize("value", ["cuda", "cuda:1"])
def test_cuda_where_there_is_none(value):
    with pytest.raises(ConfigError, match="no CUDA device is visible here; use --device cpu"):
        pick_device(value, "--device", "--device cpu")


@pytest.mark.parametrize("command", [["generate", "--prompt", "hi"], ["eval", "--data", "builtin:tinyshakespeare"]])
def test_generate_and_eval_refuse_a_bad_device_in_one_line(capsys, tmp_path, command):
    code = main([command[0], str(tmp_path / "no-run"), *command[1:], "--device", "gpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--device='gpu' is not a device" in err[0], err


def test_train_refuses_a_bad_device_in_one_line(capsys, tmp_path):
    code = main(["train", "--preset", "demo", "--set", "train.device=gpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and any("train.device='gpu' is not a device" in line for line in err), err
