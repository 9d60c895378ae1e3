"""One builder of a run's parts: the seeded model, its AdamW, the gradient scaler, and the module the loop runs.

The trainer and the LR finder (:mod:`gradus.train.lr_find`) build from the config through :func:`model_shape`
and :func:`build_config_parts`; ``gradus plan --measure`` (:mod:`gradus.train.measure`), the calibrated clock of
``gradus compare`` / ``sweep`` (:mod:`gradus.experiments.calibration`) and ``benchmarks/stage_throughput.py``
through :func:`build_training_parts` (a shape without a tokenizer, or a config of their own). So what they
train, time or compare is the same model with the same AdamW, stepped by the same
:func:`gradus.train.step.optimizer_step`. The micro-batch each
stage runs at is chosen by :mod:`gradus.train.micro_batch`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gradus.config import Fp8Config, GradusConfig, OptimConfig
from gradus.model.gpt import GPT, param_groups
from gradus.sizes import ModelShape, check_vocab_fits, resolve_shape
from gradus.train.runtime import Runtime, seed_everything
from gradus.train.storage.run_dir import RunDir


@dataclass
class TrainingParts:
    """What one training run (or sweep, or measurement) steps: the model, its optimizer and the scaler."""

    model: GPT
    """The plain module (its parameters are what is clipped and saved)."""
    optimizer: torch.optim.AdamW
    """AdamW from :func:`build_optimizer`."""
    scaler: torch.amp.GradScaler | None
    """A gradient scaler for fp16, else None."""
    fp8_layers: list[str] = field(default_factory=list)
    """Under ``precision: fp8``, the names of the linear layers converted to float8 (:mod:`gradus.train.fp8`)."""


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matmul weights only (:func:`param_groups`), the config's betas, eps and
    weight decay, and the fused kernel where configured (default: on CUDA)."""
    fused = {"auto": device.type == "cuda", "on": True, "off": False}[optim.fused]
    return torch.optim.AdamW(
        param_groups(model, optim.weight_decay),
        lr=optim.base_lr,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        fused=fused or None,
    )


def build_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (whose small range needs the loss scaled up), None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def build_training_parts(shape: ModelShape, optim: OptimConfig, device: torch.device, precision: str,
                         seed: int, init_from: str | None = None,
                         prepare: Callable[[GPT], None] | None = None, *,
                         fp8: Fp8Config | None = None, sharded: bool = False) -> TrainingParts:
    """Seed every RNG with ``seed`` (so the initial weights depend on nothing run before), then build the
    model on ``device`` (its weights copied from an exported directory when ``init_from`` names one: the
    ``model.init_from`` option), its AdamW and (fp16) the gradient scaler. Under ``precision`` fp8 the chosen
    linear layers become torchao's float8 ones (:func:`gradus.train.fp8.convert_model`, with ``fp8``'s recipe
    and emulation, default tensorwise on the device's FP8 units; ``sharded``: FSDP2 will shard the model, so
    the weights are gathered in float8): after the weights are set, before anything wraps the model.
    ``prepare`` changes the model in place before AdamW sees its parameters
    (:func:`gradus.train.parallel.prepare_model`: FSDP2 replaces them by sharded ones, so every rank first
    builds the same whole model, then keeps its shard)."""
    seed_everything(seed)
    model = GPT(shape).to(device)
    if init_from:
        from gradus.export.hf import init_from as copy_weights

        copy_weights(model, init_from)
    fp8_layers: list[str] = []
    if precision == "fp8":
        from gradus.train.fp8 import convert_model

        fp8 = fp8 if fp8 is not None else Fp8Config()
        fp8_layers = convert_model(model, fp8.recipe, emulate=fp8.emulate, sharded=sharded)
    if prepare is not None:
        prepare(model)
    return TrainingParts(model, build_optimizer(model, optim, device), build_scaler(device, precision), fp8_layers)


def model_shape(cfg: GradusConfig, vocab_size: int) -> ModelShape:
    """The shape of ``cfg``'s model for a loaded tokenizer of ``vocab_size`` tokens: a ``model.vocab_size``
    below it is a one-line ConfigError (:func:`gradus.sizes.check_vocab_fits`), then the preset and the
    explicit fields resolve it. What the trainer and the LR finder train."""
    check_vocab_fits(cfg.model, vocab_size)
    return resolve_shape(cfg.model, vocab_size)


def build_config_parts(cfg: GradusConfig, shape: ModelShape, rt: Runtime,
                       prepare: Callable[[GPT], None] | None = None, *, sharded: bool = False) -> TrainingParts:
    """:func:`build_training_parts` as ``cfg`` says: its AdamW settings, its seed, ``model.init_from`` and
    ``train.fp8``, on ``rt``'s device and precision (``sharded``: FSDP2 will shard the model). The trainer
    (:func:`gradus.train.run.build_run`, with FSDP's ``prepare``) and the LR finder (one fresh model per probed
    length) build through here, so they train the same model."""
    return build_training_parts(shape, cfg.optim, rt.device, rt.precision, cfg.train.seed, cfg.model.init_from,
                                prepare=prepare, fp8=cfg.train.fp8, sharded=sharded)


def load_tokenizer_on_ranks(data_cfg: Any, run: RunDir, rt: Runtime, log: Callable[[str], None]) -> Any:
    """The run's tokenizer on every rank: rank 0 loads (and, if configured, trains) it first and says so in
    ``log``; the others wait, then read what it cached, so a BPE is trained once."""
    from gradus.data import load_tokenizer

    tokenizer = load_tokenizer(data_cfg, run_dir=run.path, log=log, run_config=run.config) if rt.is_main else None
    rt.barrier()
    return tokenizer if rt.is_main else load_tokenizer(data_cfg, run_dir=run.path, run_config=run.config)


def wrap_for_training(model: torch.nn.Module, rt: Runtime, compile_mode: str) -> tuple[torch.nn.Module, bool]:
    """What the loop runs: DDP for gradient averaging (under torchrun; not around a model FSDP2 already
    sharded, :mod:`gradus.train.parallel`), then torch.compile around it when ``compile_mode`` (auto: on
    CUDA, on, off) says so. Returns (module to run, compiled)."""
    from gradus.train.parallel import is_sharded

    net: torch.nn.Module = model
    if rt.distributed and not is_sharded(model):
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            **_no_forward_buffer_sync(DistributedDataParallel),
        )
    compiled = {"auto": rt.device.type == "cuda", "on": True, "off": False}[compile_mode]
    if compiled:
        from torch import _dynamo

        # One graph per stage shape: specialise (dynamic=False) and allow enough cached graphs that a
        # ten-stage curriculum never falls back to eager mode.
        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
        net = torch.compile(net, dynamic=False)
    return net, compiled


def _no_forward_buffer_sync(ddp_class) -> dict:
    """DDP arguments that switch off its buffer broadcast before every forward. GPT's only buffers (the RoPE
    tables) are computed alike on every rank, so the broadcast is one wasted collective per step, and in
    the micro-batch probe it breaks the ranks' lockstep: DDP repeats it until a forward completes, so a
    rank whose forward ran out of memory broadcasts again while the others do not, and they hang.
    Newer torch releases name this ``forward_sync_buffers`` and deprecate ``broadcast_buffers``."""
    if "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
