"""The optimizer-step helpers behind the CUDA micro-batch probe, checked on CPU."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gradus.config import OptimConfig
from gradus.model import GPT
from gradus.plan.memory import HEADROOM, estimate_memory
from gradus.sizes import ModelShape
from gradus.train.build import build_optimizer
from gradus.train.micro_batch import adamw_state_bytes, halve_until_fits, host_micro_batch
from gradus.train.runtime import Runtime, cgroup_free_bytes, host_memory_budget


def test_adamw_state_bytes_is_what_the_first_step_allocates():
    torch.manual_seed(0)
    model = GPT(ModelShape(n_layers=2, d_model=32, n_heads=4, vocab_size=97, max_seq_len=16))
    optimizer = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    predicted = adamw_state_bytes(optimizer)
    assert not optimizer.state
    x = torch.randint(0, 97, (2, 16))
    _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    moments = sum(t.nbytes for st in optimizer.state.values() for k, t in st.items() if k.startswith("exp_avg"))
    # A tied head is one tensor (counted once); every moment is fp32 like its parameter.
    assert predicted == moments == 2 * 4 * sum(p.numel() for p in model.parameters())


def test_halve_until_fits_halves_until_it_fits():
    tried: list[int] = []

    def fits(m: int) -> bool:
        tried.append(m)
        return m <= 12

    assert halve_until_fits(64, fits) == 8
    assert tried == [64, 32, 16, 8]
    assert halve_until_fits(6, lambda m: m <= 1) == 1
    assert halve_until_fits(5, lambda m: False) is None


def _min_worker(rank: int, world: int, init: str, values: list[int], out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        rt = Runtime(device=torch.device("cpu"), precision="fp32", rank=rank, world_size=world)
        agreed = rt.min_over_ranks(values[rank])
        with open(f"{out}.{rank}", "w") as f:
            f.write(str(agreed))
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter shutdown: see test_train._exit_spawned_worker


def test_min_over_ranks_alone_is_the_value_itself():
    assert Runtime(device=torch.device("cpu"), precision="fp32").min_over_ranks(48) == 48


# Two spawned gloo processes (~5 s of start-up for one all-reduce). The default run covers the same call on two
# real ranks in tests/test_train.py::test_probe_out_of_memory_on_one_rank_keeps_the_ranks_in_step (the probe's
# 16 and 4 rows become 4 on both ranks through min_over_ranks).
@pytest.mark.slow
def test_min_over_ranks_agrees_on_the_smallest(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    out = str(tmp_path / "agreed")
    mp.spawn(_min_worker, args=(2, init, [64, 0], out), nprocs=2, join=True)
    assert [open(f"{out}.{r}").read() for r in range(2)] == ["0", "0"]



def test_host_micro_batch_keeps_a_cpu_step_inside_the_machines_memory():
    # GPT-2's vocabulary at 2,048 tokens per row: about 0.4 GB of activations per row, mostly logits.
    shape = ModelShape(n_layers=4, d_model=64, n_heads=4, vocab_size=50257, max_seq_len=2048)
    per_row = estimate_memory(shape, 2048, 1, "fp32").activations
    fixed = estimate_memory(shape, 2048, 1, "fp32").total - per_row
    assert host_micro_batch(shape, 2048, 32, "fp32", None) == 32  # budget unknown: as configured
    assert host_micro_batch(shape, 2048, 32, "fp32", 10**13) == 32
    budget = int((fixed + 5 * per_row) / HEADROOM) + 1  # room for 5 rows: the largest divisor of 32 is 4
    assert host_micro_batch(shape, 2048, 32, "fp32", budget) == 4
    assert host_micro_batch(shape, 2048, 32, "fp32", fixed) is None


def test_host_memory_budget_is_available_plus_resident():
    with open("/proc/meminfo") as f:
        available = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f}["MemAvailable"]
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    budget = host_memory_budget()
    assert budget is not None and budget >= resident
    assert 0.5 * available < budget - resident < 2 * available  # bytes, not KiB; the machine's, not zero


def test_cgroup_limits_cap_the_free_memory(tmp_path):
    proc = tmp_path / "cgroup"
    v2 = tmp_path / "sys" / "job"
    v2.mkdir(parents=True)
    (v2 / "memory.max").write_text("8000000000\n")
    (v2 / "memory.current").write_text("3000000000\n")
    (v2 / "memory.stat").write_text("anon 2000000000\ninactive_file 500000000\n")
    proc.write_text("0::/job\n")
    assert cgroup_free_bytes(proc, tmp_path / "sys") == 8_000_000_000 - 3_000_000_000 + 500_000_000
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_free_bytes(proc, tmp_path / "sys") is None  # no limit
    v1 = tmp_path / "sys" / "memory" / "slurm"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("4000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("1000000000\n")
    (v1 / "memory.stat").write_text("total_inactive_file 0\n")
    proc.write_text("4:memory:/slurm\n3:cpu:/\n0::/job\n")
    assert cgroup_free_bytes(proc, tmp_path / "sys") == 3_000_000_000
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert cgroup_free_bytes(proc, tmp_path / "sys") is None
    assert cgroup_free_bytes(tmp_path / "missing", tmp_path / "sys") is None


def test_the_builder_makes_the_same_seeded_model_and_the_configured_adamw():
    from gradus.train.build import build_training_parts

    shape = ModelShape(n_layers=2, d_model=32, n_heads=4, vocab_size=97, max_seq_len=16)
    optim = OptimConfig(base_lr=2e-3, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.05)
    torch.rand(5)  # whatever ran before does not change the initial weights
    a = build_training_parts(shape, optim, torch.device("cpu"), "fp32", seed=7)
    b = build_training_parts(shape, optim, torch.device("cpu"), "fp32", seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True))
    assert a.scaler is None  # fp32 and bf16 need no gradient scaler
    groups = a.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all(g["lr"] == 2e-3 and g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6 for g in groups)
    c = build_training_parts(shape, optim, torch.device("cpu"), "fp32", seed=8)
    assert not torch.equal(next(a.model.parameters()), next(c.model.parameters()))


def test_a_batch_that_does_not_split_over_the_ranks_is_a_one_line_config_error():
    import pytest

    from gradus.errors import ConfigError
    from gradus.train.micro_batch import check_batches_divide

    class Stage:
        def __init__(self, index: int, batch_size: int):
            self.index, self.batch_size = index, batch_size

    class Ranks(Runtime):
        """Four ranks without a process group: ``gather`` hands back what each rank found (``found``)."""

        found: list | None = None

        def gather(self, value):
            return [value if r == self.rank else (self.found or [None] * 4)[r] for r in range(self.world_size)]

    def rank(r: int, found: list | None = None) -> Ranks:
        rt = Ranks(torch.device("cpu"), "fp32", rank=r, world_size=4)
        rt.found = found
        return rt

    check_batches_divide([Stage(0, 8), Stage(1, 4)], rank(0))
    message = r"^curriculum.stages\[1\] batch 6 does not divide by world size 4;"
    with pytest.raises(ConfigError, match=message) as said:
        check_batches_divide([Stage(0, 8), Stage(1, 6)], rank(0))
    assert not said.value.silent  # rank 0 says it
    other = "curriculum.stages[1] batch 6 does not divide by world size 4; ..."
    with pytest.raises(ConfigError, match=message) as quiet:
        check_batches_divide([Stage(0, 8), Stage(1, 6)], rank(2, [other] * 4))
    assert quiet.value.silent  # every rank raises, the others print nothing
    # A problem only rank 3 has (its own copy of the config): every rank stops, and rank 3 says it.
    with pytest.raises(ConfigError, match="on rank 3 only") as elsewhere:
        check_batches_divide([Stage(0, 8), Stage(1, 4)], rank(0, [None, None, None, "on rank 3 only"]))
    assert elsewhere.value.silent


def test_an_error_every_rank_raised_together_leaves_the_process_group_together(monkeypatch, tmp_path):
    """train(): after an error the ranks agreed on (raise_together, a failed sharded save) they wait for each other
    before leaving the group, as after a finished run; after any other error nobody waits for ranks that may
    never come."""
    import pytest

    from gradus.errors import ConfigError, DataError
    from gradus.train import trainer as trainer_module

    seen: list[bool] = []
    monkeypatch.setattr(trainer_module.Trainer, "close", lambda self, clean=False: seen.append(clean))
    for error, clean in ((ConfigError("all of them", agreed=True), True), (DataError("this rank's file"), False)):
        def fail(self, error=error):
            raise error
        monkeypatch.setattr(trainer_module.Trainer, "setup", fail)
        with pytest.raises(type(error)):
            trainer_module.train(None, tmp_path)
        assert seen.pop() is clean


# ------------------------------------------------------------------ uneven label counts over ranks
SHAPE = ModelShape(n_layers=2, d_model=32, n_heads=4, vocab_size=97, max_seq_len=16)


def _uneven_batch(rows: int = 8, length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 97, (rows, length), generator=g)
    y = torch.randint(0, 97, (rows, length), generator=g)
    for r in range(rows):  # row r keeps r + 1 labels, as document packing's padding or sft records leave them
        y[r, r + 1:] = -100
    return x, y


def _step_grads(net, model, opt, rt, x, y, **kw) -> tuple[float, dict[str, torch.Tensor]]:
    from gradus.train.step import optimizer_step

    captured: dict[str, torch.Tensor] = {}
    real = opt.step

    def spy(*a, **k):
        captured.update({n: p.grad.clone() for n, p in model.named_parameters()})
        return real(*a, **k)

    opt.step = spy
    loss, _, _ = optimizer_step(net, model, opt, None, x, y, lr=1e-3, clip=1e9, micro=4, rt=rt, **kw)
    return loss, captured


def _uneven_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = GPT(SHAPE)
        opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
        rt = Runtime(device=torch.device("cpu"), precision="fp32", rank=rank, world_size=world)
        x, y = _uneven_batch()
        mine = slice(4 * rank, 4 * rank + 4)  # rank 0 holds 1 + 2 + 3 + 4 = 10 labels, rank 1 5 + … + 8 = 26
        loss, grads = _step_grads(torch.nn.parallel.DistributedDataParallel(model), model, opt, rt, x[mine], y[mine],
                                  uneven_tokens=True)
        if rank == 0:
            torch.save({"grads": grads, "loss": loss}, out)
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter shutdown: see test_train._exit_spawned_worker


def test_under_ddp_a_step_with_uneven_label_counts_is_the_mean_over_every_real_token(tmp_path):
    # DDP averages the ranks' gradients with equal weights: each rank's own token mean gave the mean of the two
    # means (a gradient 0.87 off, relative, here). Weighted by the tokens over both ranks, it is one process's step.
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_uneven_worker, args=(2, f"file://{tmp_path / 'store'}", out), nprocs=2, join=True)
    ddp = torch.load(out)
    torch.manual_seed(0)
    model = GPT(SHAPE)
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    loss, grads = _step_grads(model, model, opt, Runtime(device=torch.device("cpu"), precision="fp32"), *_uneven_batch())
    assert ddp["loss"] == pytest.approx(loss, abs=1e-5)
    for name, g in grads.items():
        assert torch.allclose(ddp["grads"][name], g, rtol=1e-4, atol=1e-6), name
