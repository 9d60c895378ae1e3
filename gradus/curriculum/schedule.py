"""The resolved schedule as data: frozen :class:`StagePlan` rows inside a frozen :class:`Schedule`.

Built once per config by :func:`gradus.curriculum.resolve_schedule`; read by the pure lookups in
:mod:`gradus.curriculum.state`, the ``gradus schedule`` table, the planner and the data pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StagePlan:
    """One resolved stage: every value effective, and where it starts and ends in steps and tokens.

    ``mix`` is a plain dict (so ``--json`` and checkpoints see the same shape as before); treat it as
    read-only: :func:`gradus.curriculum.state_at` hands out copies."""

    index: int
    """Position of the stage in the curriculum (0-based)."""
    name: str
    """The stage's name (``stage<N>`` when the config gives none)."""
    seq_len: int
    """Tokens per sequence."""
    batch_size: int
    """Sequences per optimizer step (all ranks together)."""
    tokens_per_step: int
    """batch_size × seq_len: what each step of the stage adds to the token counter."""
    peak_lr: float
    """The stage's peak learning rate."""
    lr_note: str
    """How peak_lr was derived, in words."""
    warmup_steps: int
    """Warmup steps at the start of the stage (0: none)."""
    decay: str
    """Decay inside the stage after its warmup (per_stage mode)."""
    min_lr_ratio: float
    """The decay's floor as a fraction of peak_lr."""
    grad_clip: float
    """Gradient-norm clip."""
    clip_note: str
    """Which rule set grad_clip (grad_clip, by_length or default)."""
    mix: dict[str, float]
    """Source weights (summing to 1) over every configured source."""
    start_step: int
    """First step of the stage."""
    end_step: int
    """One past the last step of the stage."""
    start_tokens: int
    """Token counter at the first step."""
    end_tokens: int
    """Token counter after the last step."""
    token_threshold: int | None
    """Token-budget stages: the running budget sum at which this stage begins (exact switch point)."""
    warmup_note: str = ""
    """How warmup_steps was derived (given, from warmup_tokens, or the default)."""
    lr_source: str = "base"
    """Which form set the peak: peak_lr, lr_multiplier, seq_batch (the rule) or base (optim.base_lr)."""
    rope_scaling: float = 1.0
    """RoPE position-interpolation factor in effect during this stage."""
    batch_lr_factor: float | None = None
    """Batch ramp: the factor (tokens_per_step / reference)^alpha already in peak_lr (None: no batch ramp)."""
    kind: str = "pretrain"
    """pretrain (packed documents) or sft (chat records, one per row, loss on assistant tokens)."""

    @property
    def steps(self) -> int:
        """Optimizer steps in this stage."""
        return self.end_step - self.start_step

    @property
    def tokens(self) -> int:
        """Training tokens in this stage."""
        return self.end_tokens - self.start_tokens

    @property
    def examples(self) -> int:
        """Training sequences in this stage."""
        return self.steps * self.batch_size

    def to_json(self) -> dict:
        """The shape ``gradus schedule --json`` prints."""
        out = asdict(self)
        if self.batch_lr_factor is None:  # without a batch ramp the JSON keeps its old shape
            del out["batch_lr_factor"]
        if self.kind == "pretrain":  # likewise: only an sft stage shows its kind
            del out["kind"]
        out["steps"] = self.steps
        out["tokens"] = self.tokens
        out["examples"] = self.examples
        return out


@dataclass(frozen=True)
class Schedule:
    """A whole curriculum resolved against one config: the stage table plus everything the LR needs.

    Immutable and free of caches, so one schedule can be shared by the trainer, the data pipeline's thread
    and the planner; everything derived from it is a pure function in :mod:`gradus.curriculum.state`."""

    stages: tuple[StagePlan, ...]
    """The resolved stages, in order."""
    target_tokens: int | None
    """Training stops when the token counter reaches this (None: no token target)."""
    total_steps: int
    """Steps of the whole run (the end of the last stage)."""
    total_tokens: int
    """Tokens of the whole run."""
    max_steps: int | None
    """train.max_steps, if given."""
    mode: str
    """curriculum.schedule: ``per_stage`` (each stage warms up and decays), or one curve over the run:
    ``global`` (warmup + decay), ``wsd`` (warmup, stable, cooldown) or ``linear`` (warmup, then to zero)."""
    decay: str
    """curriculum.decay: the global curve's decay (global mode)."""
    min_lr_ratio: float
    """curriculum.min_lr_ratio: the global curve's floor (global mode)."""
    global_warmup_steps: int
    """Warmup steps of the global curve (0 in per_stage mode)."""
    base_lr: float
    """optim.base_lr."""
    max_seq_len: int
    """model.max_seq_len."""
    sources: tuple[str, ...]
    """Names of the data sources, in config order."""
    token_based: bool
    """True when the stages are token budgets (they switch on the token counter), False for start steps."""
    warnings: tuple[str, ...]
    """What resolution rounded, normalised or found suspicious, one line each."""
    cooldown_steps: int = 0
    """wsd: steps of the final cooldown (0 in the other modes)."""
    cooldown_shape: str = "linear"
    """wsd: the cooldown curve, ``linear`` or ``1-sqrt``."""
    floor_ratio: float | None = None
    """wsd and linear: where the curve ends as a fraction of each peak (0 to zero; None in other modes,
    which use min_lr_ratio)."""
    batch_ramp: dict | None = None
    """The batch ramp as data (direction, alpha, reference tokens per step), None without one."""
    end_lrs: tuple[float, ...] = ()
    """LR at the last step of each stage (where the next stage's warmup starts from); a pure function of
    the config, computed once at resolution so that no lookup needs a cache."""

    def to_json(self) -> dict:
        """The schedule as data (``gradus schedule --json``)."""
        return {
            "stages": [s.to_json() for s in self.stages],
            "target_tokens": self.target_tokens,
            "total_steps": self.total_steps,
            "total_tokens": self.total_tokens,
            "max_steps": self.max_steps,
            "schedule": self.mode,
            "global_warmup_steps": self.global_warmup_steps,
            "base_lr": self.base_lr,
            "max_seq_len": self.max_seq_len,
            "sources": list(self.sources),
            "warnings": list(self.warnings),
            **self._lever_json(),
        }

    @property
    def is_global(self) -> bool:
        """True for the modes with one curve over the whole run that stage switches do not restart."""
        return self.mode != "per_stage"

    def _lever_json(self) -> dict:
        """The wsd / linear / batch-ramp settings, present only when used (older JSON keeps its shape)."""
        out: dict = {}
        if self.mode == "wsd":
            out.update(cooldown_steps=self.cooldown_steps, cooldown_start_step=self.total_steps - self.cooldown_steps,
                       cooldown_shape=self.cooldown_shape)
        if self.mode in ("wsd", "linear"):
            out["floor_ratio"] = self.floor_ratio
        if self.batch_ramp is not None:
            out["batch_ramp"] = dict(self.batch_ramp)
        return out
