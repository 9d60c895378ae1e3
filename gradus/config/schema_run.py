"""The config sections of the run itself: the optimizer (``optim``), the training loop (``train``, with its
guard, EMA and passkey probe) and ``logging``. Part of the schema (:mod:`gradus.config.schema` composes
them into :class:`~gradus.config.schema.GradusConfig`); same rules: layer 0, a description on every field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from gradus.config.fields import StepCount, Strict, TokenCount


def _switch(value: Any) -> Any:
    # YAML 1.1 reads a bare on/off as true/false (`--set train.compile=off` arrives as False): take it as meant.
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)]
"""auto, on or off; YAML's bare on/off (read as booleans) are accepted as the words."""


# ------------------------------------------------------------------------------------- optim / train
class OptimConfig(Strict):
    """AdamW."""

    base_lr: float = Field(6e-4, gt=0, le=10, description="Base LR that lr_multiplier and lr_rule scale (at most 10).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW β1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW β2.")
    eps: float = Field(1e-8, gt=0, description="AdamW ε.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay (not on norms, biases, embeddings).")
    fused: Switch = Field("auto", description="Fused AdamW kernel where available.")


class GuardConfig(Strict):
    """Loss-spike and NaN guard."""

    enabled: bool = Field(True, description="Watch the loss for spikes and NaN/Inf.")
    spike_factor: float = Field(2.0, gt=1, description="A loss above this × the running mean is a spike.")
    window: int = Field(50, gt=1, description="Steps in the running mean.")
    warmup_steps: int = Field(20, ge=0, description="Steps before spikes are judged (the mean needs history).")
    lr_backoff: float = Field(0.5, gt=0, lt=1, description="LR factor applied at a spike.")
    recover_steps: int = Field(100, ge=1, description="Steps over which the LR factor recovers to 1.")
    max_bad_steps: int = Field(3, ge=1, description="NaN/Inf steps in a row before rolling back to a checkpoint.")
    max_rollbacks: int = Field(
        5, ge=0, description="Rollbacks in one run before it stops as diverged (each halves the LR factor)."
    )
    skip_bad_batches: bool = Field(
        False, description="After max_bad_steps NaN/Inf steps in a row, skip on (recording each skipped batch's data "
        "position) instead of rolling back; the run still stops once max_rollbacks + 1 such runs of bad steps occur."
    )
    min_lr_factor: float = Field(
        1e-3, gt=0, le=1, description="Floor of the LR factor a resumed run inherits from rollbacks (raised to it, "
        "with a message)."
    )


class EmaConfig(Strict):
    """An exponential moving average of the weights, evaluated next to them and saved as ``checkpoints/ema``."""

    decay: float = Field(0.999, gt=0, lt=1, description="Weight of the old average at each update, in (0, 1); "
                         "0.999 averages over about the last 1000 updates.")
    every: int = Field(1, ge=1, description="Optimizer steps between updates of the average.")


class NoiseScaleConfig(Strict):
    """The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018), measured every step from the
    micro-batches' and the whole step's gradients (gradus.train.noise_scale) and logged as gns/...: the
    critical batch in tokens, the signal a larger batch should follow. Needs 2+ micro-batches per step, or 2+
    processes under DDP (under FSDP, 2+ micro-batches: the small batch is one micro-batch over every rank); a
    run that cannot measure it says so once."""

    enabled: bool = Field(True, description="Measure and log it (gns/b_simple, gns/grad_sq, gns/trace_cov, "
                          "gns/b_simple_over_batch); the step's results are bit-identical either way.")
    beta: float = Field(0.99, ge=0, lt=1, description="Decay of the two moving averages (|G|² and tr Σ, averaged "
                        "apart, then divided); 0.99 ≈ the last 100 steps. They restart at every stage change.")
    micro_batches: int | None = Field(
        None, ge=2, description="On one process, split each step into at least this many micro-batches (where its "
        "batch has as many rows), so that the noise scale is measured at every stage without choosing "
        "train.micro_batch_size per stage: 2 costs the least (on a CPU a 2-row micro-batch of short sequences "
        "costs up to 1.7× per token of the whole batch at once). None: the split follows train.micro_batch_size "
        "alone. Under DDP the ranks give the two batch sizes and this is not applied; under FSDP it is (a rank "
        "holds only its shard of the ranks' average, so the small batch is one micro-batch over every rank)."
    )
    every: int = Field(
        1, ge=1, description="Measure on every k-th step only (the steps whose index is a multiple of k). The "
        "others run without the measurement and, with micro_batches, unsplit, so its cost is paid on one step in "
        "k (on a CPU, with a 0.27M-parameter model, the split cost 9–15% of a 512-token step and nothing at 2,048 "
        "tokens per step: benchmarks/noise_scale_overhead.py). The averages then span k× as many "
        "steps (beta applies per measured step), and curriculum.adaptive.batch.min_samples counts measured steps."
    )


class Fp8Config(Strict):
    """FP8 training's settings, read when train.precision is fp8 (gradus.train.fp8): torchao's float8 linear
    layers for the transformer blocks' matmuls; the token embedding, the output head and any layer whose widths
    are not multiples of 16 stay in bf16 (the embedding is a lookup, the head feeds the loss and is tied to the
    embedding, and the FP8 GEMM needs widths in multiples of 16)."""

    recipe: Literal["tensorwise", "rowwise"] = Field(
        "tensorwise", description="How float8 scales are chosen. tensorwise: one scale per tensor, the fastest, and "
        "under train.parallel=fsdp the weights are all-gathered in float8; rowwise: one scale per row (and per "
        "column of the gradients), more robust to outliers, a little slower, weights all-gathered in bf16."
    )
    emulate: bool = Field(
        False, description="Run torchao's float8 emulation (float8 rounding, high-precision matmuls) where FP8 "
        "tensor cores are missing: a CPU, or a GPU below compute capability 8.9. For tests and dry runs only: "
        "slower than bf16. Without it such a device refuses fp8 in one line."
    )


class PasskeyConfig(Strict):
    """The long-context probe: a key hidden in filler at several depths, retrieved or not (stage C)."""

    seq_len: int | None = Field(None, gt=0, description="Probe length in tokens; default the current stage's "
                                "seq_len. At most model.max_seq_len.")
    depths: int = Field(4, ge=1, description="Depths the key is hidden at, evenly from the start (0%) to the end "
                        "(100%) of the filler.")
    trials: int = Field(8, ge=1, description="Prompts per depth (each with its own random key).")
    digits: int = Field(5, ge=1, le=20, description="Digits of the key.")
    seed: int = Field(0, description="Seed of the keys (the same prompts at every evaluation).")


class TrainConfig(Strict):
    """The loop: stopping, evaluation, checkpoints, precision, determinism."""

    seed: int = Field(0, description="One seed for model init, data order and sampling.")
    max_steps: StepCount | None = Field(
        None, gt=0, description="Stop after this many steps (also when tokens remain); accepts 10k."
    )
    eval_every: int = Field(2000, gt=0, description="Steps between evaluations (also at every stage change).")
    eval_every_tokens: TokenCount | None = Field(
        None, gt=0, description="Tokens between evaluations instead of eval_every steps: an evaluation whenever the "
        "token count crosses a multiple of it, so runs whose tokens per step differ (a batch ramp) are evaluated "
        "at the same token points; accepts 64k."
    )
    eval_reference_seq_len: int | None = Field(
        None, gt=0, description="Fixed evaluation length for comparable curves; default the longest stage's seq_len."
    )
    eval_at_stage_change: bool = Field(True, description="Also evaluate at every stage change.")
    checkpoint_every: int | None = Field(1000, gt=0, description="Steps between checkpoints (None = stage ends only).")
    checkpoint_every_tokens: TokenCount | None = Field(None, gt=0, description="Tokens between checkpoints.")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept besides the best.")
    save_best: bool = Field(
        True, description="Write a checkpoint at every evaluation that improves the followed loss and keep it as "
        "checkpoints/best; false: none (a short run or a sweep, where each save costs more than it is worth; "
        "the best loss is still tracked and early stopping still applies)."
    )
    early_stopping_patience: int | None = Field(
        10, ge=1, description="Evaluations without improvement of the reference loss before stopping (None = off)."
    )
    early_stopping_metric: str = Field(
        "val/loss", pattern=r"^val(_ema)?/([^/]+/)?loss$", description="The evaluation figure early stopping and the best checkpoint follow: val/loss "
        "(the mix at the reference length), val/<source>/loss (one source's held-out documents) or val_ema/loss."
    )
    early_stopping_min_delta: float | None = Field(
        None, gt=0, lt=1, description="Stop on a flat curve: when each of the last flat_evals evaluations improved "
        "the followed loss by less than this share of it (0.001 = 0.1%); None = off (patience still applies)."
    )
    early_stopping_flat_evals: int = Field(
        3, ge=1, description="Evaluations in a row with a relative improvement below early_stopping_min_delta "
        "that count as a flat curve."
    )
    ema: EmaConfig | None = Field(
        None, description="Keep an exponential moving average of the weights (evaluated as val_ema/..., saved as "
        "checkpoints/ema and ema.safetensors in each checkpoint); None = off."
    )
    noise_scale: NoiseScaleConfig = Field(
        default_factory=NoiseScaleConfig, description="The gradient noise scale, measured and logged as gns/... "
        "wherever a step has 2+ micro-batches or the run 2+ processes."
    )
    passkey: PasskeyConfig | None = Field(
        None, description="Run the passkey-retrieval probe at every evaluation (probe/passkey/accuracy and "
        "probe/passkey/depth_<percent>); None = off."
    )
    micro_batch_size: int | None = Field(
        None, gt=0, description="Examples per forward pass (an upper bound); default: found per stage, on CUDA by "
        "a memory probe, on CPU from a memory estimate against the host's free memory."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16", "fp8"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU. fp8: the transformer blocks' linear layers "
        "compute in float8 through torchao (pip install 'gradus-lm[fp8]'), everything else under bf16 autocast; "
        "needs a GPU with compute capability 8.9+ (L4, L40S, RTX 4090, H100) unless train.fp8.emulate; weights "
        "and checkpoints stay fp32, so bf16 runs resume them and gradus export reads them. See train.fp8."
    )
    fp8: Fp8Config = Field(
        default_factory=Fp8Config, description="FP8 training's recipe and emulation; read only when precision is fp8."
    )
    compile: Switch = Field("auto", description="torch.compile (auto: on for CUDA).")
    host_sync: Literal["auto", "every_step", "lagged"] = Field(
        "auto", description="When the loss and gradient norm are read off the device: every_step, or lagged (one "
        "step late, and at once at logging, evaluation, checkpoint and stage-end steps; a non-finite step is "
        "skipped on the device, which needs the fused AdamW); auto: lagged on CUDA with the fused AdamW."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    threads: int | None = Field(
        None, gt=0, description="CPU threads for torch (torch.set_num_threads); default: torch's own choice. "
        "On a shared CPU box, fewer threads than cores avoids stalls."
    )
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Loss-spike and NaN guard.")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="How several processes (torchrun) share the work. ddp: every rank holds the whole model "
        "and AdamW, gradients are averaged. fsdp: FSDP2 (fully_shard per transformer block and the root) shards the "
        "weights, gradients and AdamW's moments over the ranks, with bf16 compute and fp32 gradient reduction on "
        "CUDA; checkpoints are then sharded (torch.distributed.checkpoint). One process: nothing to shard, trains as "
        "ddp with a note."
    )
    activation_checkpointing: Literal["none", "full", "every_k"] = Field(
        "none", description="Recompute transformer blocks' activations in the backward pass instead of keeping "
        "them: none; full (every block: activations shrink to one tensor per block, about a third more compute); "
        "every_k (every activation_checkpointing_every_k-th block)."
    )
    planned_world_size: int | None = Field(
        None, ge=1, description="The number of processes (GPUs over all nodes) the run is planned for: gradus plan "
        "sizes each device's memory for it (FSDP shards over it); gradus train notes a different torchrun world "
        "size. None: one process (or --gpus K given to gradus plan)."
    )
    activation_checkpointing_every_k: int = Field(
        2, ge=1, description="With activation_checkpointing=every_k: checkpoint blocks 0, k, 2k, ... (1 = full)."
    )


class WandbConfig(Strict):
    """Weights & Biases: every metric record mirrored to a W&B run (needs ``pip install wandb``)."""

    project: str = Field("gradus", min_length=1, description="W&B project the run is logged to.")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: written under the run directory's wandb/, sent later with `wandb sync`; "
        "online: sent as it trains (needs a W&B login); disabled: no W&B at all."
    )
    entity: str | None = Field(None, description="W&B team or user; default: the login's own.")
    name: str | None = Field(None, description="W&B run name; default: the config's name, else the run directory's.")
    group: str | None = Field(None, description="W&B group, to show related runs (a sweep's arms) together.")
    tags: list[str] = Field(default_factory=list, description="W&B tags.")


class LoggingConfig(Strict):
    """Console, metrics.jsonl, TensorBoard and (optionally) Weights & Biases."""

    log_every: int = Field(10, gt=0, description="Steps between console lines and metric records.")
    tensorboard: bool = Field(True, description="Write TensorBoard events when tensorboard is installed.")
    progress_bar: bool = Field(True, description="Live progress bar on a terminal.")
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s for MFU; default: a table by GPU name, or a measured matmul peak."
    )
    wandb: WandbConfig | None = Field(
        None, description="Mirror the metrics to Weights & Biases, e.g. {project: my-runs, mode: offline}; "
        "unset: no W&B."
    )
