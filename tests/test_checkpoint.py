"""Atomic checkpoints: round trip, pruning, best copy, full disk and corrupt files."""

import errno
import json

import pytest
import torch

from gradus.errors import CheckpointError
from gradus.train.storage import checkpoint as ckpt_mod
from gradus.train.storage.checkpoint import CheckpointManager


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def save(mgr, step, model, opt):
    return mgr.save(step, model=model, optimizer=opt, state={"progress": {"step": step}}, meta={"step": step},
                    config_yaml="x: 1\n")


def test_round_trip_restores_weights_and_optimizer(tmp_path):
    model, opt = make()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    path = save(mgr, 7, model, opt)
    assert path.name == "step_00000007" and mgr.latest() == path
    other, other_opt = make()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    state, meta = mgr.load(path, model=other, optimizer=other_opt)
    assert state["progress"]["step"] == 7 and meta["step"] == 7
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], other_opt.state_dict()["state"][0]["exp_avg"])


def test_keeps_last_k_and_best(tmp_path):
    model, opt = make()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    paths = [save(mgr, s, model, opt) for s in (1, 2, 3)]
    mgr.mark_best(paths[1])
    assert [s for s, _ in mgr.steps()] == [2, 3]
    save(mgr, 4, model, opt)
    assert [s for s, _ in mgr.steps()] == [3, 4]
    assert json.loads((mgr.best() / "meta.json").read_text())["step"] == 2  # best survives pruning


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = make()
    mgr = CheckpointManager(tmp_path, keep_last=3)
    good = save(mgr, 1, model, opt)
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def no_space(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", no_space)
    with pytest.raises(CheckpointError, match="No space left on device.*step_00000001 is intact"):
        save(mgr, 2, model, opt)
    assert mgr.latest() == good
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_corrupt_weights_is_a_one_line_error(tmp_path):
    model, opt = make()
    mgr = CheckpointManager(tmp_path)
    path = save(mgr, 1, model, opt)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as err:
        mgr.load(path, model=model, optimizer=opt)
    assert "model.safetensors is corrupt" in str(err.value) and "\n" not in str(err.value)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is corrupt"):
        mgr.load(path, model=model, optimizer=opt)


def test_incomplete_folder_is_not_listed(tmp_path):
    model, opt = make()
    mgr = CheckpointManager(tmp_path)
    save(mgr, 1, model, opt)
    (tmp_path / ".tmp-step_00000002-99").mkdir()  # what a crash mid-write leaves
    assert [s for s, _ in mgr.steps()] == [1]


# --------------------------------------------------------------------------------- Stateful parts
def test_progress_round_trips_in_place_and_keeps_what_a_checkpoint_lacks():
    from gradus.train.stateful import Progress, Stateful

    pr = Progress(step=7, tokens=1792, train_seconds=1.5, best_val_loss=4.25, evals_since_best=1,
                  last_checkpoint_tokens=1024)
    state = pr.state_dict()
    # The key names are the on-disk format every earlier gradus wrote (the trainer's __dict__), and since
    # the flat-curve test, the last few followed validation losses.
    assert state == {"step": 7, "tokens": 1792, "train_seconds": 1.5, "best_val_loss": 4.25, "evals_since_best": 1,
                     "last_checkpoint_tokens": 1024, "recent_val_losses": []}
    other = Progress()
    same_object = other
    other.load_state_dict(state)
    assert other is same_object and other == pr
    other.load_state_dict({"step": 9})  # an older payload without some counters: the rest stay
    assert (other.step, other.tokens, other.best_val_loss) == (9, 1792, 4.25)
    assert isinstance(pr, Stateful)


def test_rng_state_replays_every_generator():
    import random

    import numpy as np

    from gradus.train.runtime import Runtime
    from gradus.train.stateful import RngState

    rng = RngState(Runtime(device=torch.device("cpu"), precision="fp32"))
    saved = rng.state_dict()
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    rng.load_state_dict(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first
    # Saved by two ranks (a list by rank), resumed alone: rank 0's entry.
    rng.load_state_dict([saved, None])
    assert random.random() == first[0]


class Counter:
    """A minimal Stateful part."""

    def __init__(self, n: int = 0):
        self.n = n

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def test_parts_are_saved_and_restored_by_one_loop(tmp_path):
    parts = {"progress": Counter(3), "data": Counter(5)}
    payload = ckpt_mod.parts_state(parts, world_size=2)
    # A run without a gradient scaler still writes its key (None), as earlier versions did.
    assert payload == {"progress": {"n": 3}, "data": {"n": 5}, "scaler": None, "world_size": 2}
    fresh = {"progress": Counter(), "data": Counter(), "scaler": Counter(11)}
    ckpt_mod.load_parts(fresh, payload, tmp_path)
    assert [p.n for p in fresh.values()] == [3, 5, 11]  # a part saved as None keeps its fresh state


def test_a_checkpoint_without_a_part_is_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError) as err:
        ckpt_mod.load_parts({"progress": Counter(), "guard": Counter()}, {"progress": {"n": 1}}, tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}/state.pt has no guard state") and "\n" not in message


def test_per_rank_state_is_this_ranks_entry_and_refuses_another_world_size():
    from types import SimpleNamespace

    from gradus.errors import CheckpointError
    from gradus.train.stateful import PerRank

    class Part:
        def __init__(self):
            self.loaded = None

        def state_dict(self):
            return {"pos": 7}

        def load_state_dict(self, state):
            self.loaded = state

    alone = SimpleNamespace(distributed=False, world_size=1, rank=0)
    part = Part()
    wrapped = PerRank(part, alone, "data")
    assert wrapped.state_dict() == {"pos": 7}  # single process: the layout checkpoints always had
    wrapped.load_state_dict({"pos": 3})
    assert part.loaded == {"pos": 3}
    rank1 = SimpleNamespace(distributed=True, world_size=2, rank=1)
    part = Part()
    PerRank(part, rank1, "data").load_state_dict([{"pos": 1}, {"pos": 2}])
    assert part.loaded == {"pos": 2}
    with pytest.raises(CheckpointError, match="saved by 3 processes, this run has 2; resume on 3 processes"):
        PerRank(Part(), rank1, "data").load_state_dict([{}, {}, {}])
    with pytest.raises(CheckpointError, match="one data state for 2 processes"):
        PerRank(Part(), rank1, "data").load_state_dict({"pos": 1})
