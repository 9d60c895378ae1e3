"""Stages A–D of the worksheet: the lesson's stage plan filled from a budget, and the config it writes.

Why the stage table is built from a config rather than computed beside it: the rows A–C are read back
from :func:`gradus.curriculum.resolve_schedule` applied to the very config ``gradus plan --write`` emits,
so the steps, batch sizes and LRs the worksheet prints are the ones ``gradus train`` will run. Stage D
(behaviour tuning on instruction data) is a separate run, so it is filled from its template alone: its
data are the user's chat records (a source with ``kind: chat`` in a stage with ``kind: sft``).

The LRs follow the lesson: each stage warms up and decays on its own (``schedule: per_stage``), stage B
peaks at stage A's peak lowered by :data:`B_LR_DIVISOR`, and stage C adapts to the long context at
:data:`C_LR` decaying to :data:`C_MIN_LR`, whatever the model size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradus.curriculum import lr_at
from gradus.plan.inputs import PlanInputs
from gradus.sizes import ModelShape
from gradus.units import format_count

if TYPE_CHECKING:
    from gradus.curriculum import Schedule


@dataclass(frozen=True)
class StageTemplate:
    """A row of the lesson's stage plan; the worksheet fills tokens, seq_len and LR from the budget."""

    key: str
    """A, B, C or D."""
    title: str
    """What the stage is for."""
    fraction: float
    """Share of the training tokens D."""
    length: str
    """``short`` (half the base context), ``base`` or ``long`` (the long-context length)."""
    mix: dict[str, float]
    """Weights of the web / math / code sources."""
    note: str
    """One line on why, printed in the table."""


STAGE_TEMPLATES: tuple[StageTemplate, ...] = (
    StageTemplate("A", "foundations", 0.72, "short", {"web": 0.90, "math": 0.05, "code": 0.05},
                  "broad web text at half the context: cheaper steps while the basics form"),
    StageTemplate("B", "domain infusion", 0.18, "base", {"web": 0.50, "math": 0.25, "code": 0.25},
                  "full context; the mix shifts toward math and code"),
    StageTemplate("C", "long-context adaptation", 0.08, "long", {"web": 0.70, "math": 0.15, "code": 0.15},
                  "long sequences, RoPE position interpolation, a small LR (1e-5 -> 5e-6)"),
    StageTemplate("D", "behaviour tuning", 0.02, "base", {},
                  "chat records (stage kind: sft) in a separate run at a small constant LR; not in --write"),
)
B_LR_DIVISOR = 1.5
"""Stage B's peak is stage A's divided by this (the lesson: lower the LR ~1.5–2× for domain infusion; 1.5
as the 1b-compact and 7b-base presets use)."""
C_LR = 1e-5
"""Stage C's peak LR: the top of the lesson's 1e-5 … 5e-6 range for long-context adaptation."""
C_MIN_LR = 5e-6
"""Stage C's cosine ends here: the bottom of the lesson's range."""
D_LR_FACTOR = 0.05
"""Stage D's constant LR as a fraction of the peak (e.g. 1.5e-5 for a 1B model, a usual SFT rate)."""

SOURCES: dict[str, dict[str, str]] = {
    "web": {"dataset": "HuggingFaceFW/fineweb-edu"},
    "math": {"dataset": "Yxanul/cc-math-finest"},
    "code": {"dataset": "Yxanul/python-finest-pretrain"},
}
"""Streaming sources of the written config (Hugging Face hub ids)."""

FINEWEB_EDU_SAMPLES = ((10e9, "sample-10BT"), (100e9, "sample-100BT"), (350e9, "sample-350BT"))
"""FineWeb-Edu subsets by size; the smallest that holds the web tokens of the plan is chosen."""


@dataclass(frozen=True)
class PlanStage:
    """One filled row of the stage table."""

    key: str
    """A–D."""
    name: str
    """Stage name in the written config, e.g. ``A-foundations``."""
    title: str
    """What it is for."""
    tokens: int
    """Training tokens (a whole number of steps)."""
    seq_len: int
    """Sequence length."""
    batch_size: int
    """Sequences per step (tokens_per_step / seq_len)."""
    steps: int
    """Optimizer steps."""
    peak_lr: float
    """Highest LR the stage trains at (after its warmup)."""
    end_lr: float
    """LR at the stage's last step."""
    rope_scaling: float
    """RoPE position-interpolation factor the stage should train with."""
    mix: dict[str, float]
    """Source weights (empty for D: its data is instruction data, not in the config)."""
    in_config: bool
    """Whether ``--write`` includes it (A–C)."""
    note: str
    """Why."""
    hours: float | None = None
    """Wall-clock at the given hardware (None without hardware)."""


def written_config(inp: PlanInputs, shape: ModelShape, peak: float, tps: int, lengths: dict[str, int],
                     stage_tokens: list[int], n: float, d: float, regime: str) -> dict[str, Any]:
    """The curriculum config of stages A–C, each stage with its own warmup and cosine (``schedule:
    per_stage``): A at the grid LR ``peak`` down to ``min_lr_ratio``; B at ``peak`` / :data:`B_LR_DIVISOR`
    down to the same floor; C at :data:`C_LR` down to :data:`C_MIN_LR`, with RoPE scaling long / base."""
    web_tokens = sum(tok * t.mix.get("web", 0.0) for tok, t in zip(stage_tokens, STAGE_TEMPLATES, strict=True))
    web_config = next((name for size, name in FINEWEB_EDU_SAMPLES if web_tokens <= size), None)
    sources = []
    for name, spec in SOURCES.items():
        src: dict[str, Any] = {"name": name, **spec}
        if name == "web" and web_config:
            src["dataset_config"] = web_config
        sources.append(src)
    # Stage A's warmup, as the worksheet counts it (a share of all steps); stage B warms up again as long,
    # from A's floor to its lowered peak.
    warmup = max(1, math.ceil(inp.warmup_fraction * (sum(stage_tokens[:3]) // tps)))
    floor = peak * inp.min_lr_ratio
    lr_cells: dict[str, dict[str, Any]] = {
        "A": {"peak_lr": peak, "warmup_steps": warmup, "min_lr_ratio": inp.min_lr_ratio},
        "B": {"peak_lr": float(f"{peak / B_LR_DIVISOR:.3g}"), "warmup_steps": min(warmup, stage_tokens[1] // tps),
              "min_lr_ratio": min(1.0, round(floor / (peak / B_LR_DIVISOR), 6))},
        "C": {"peak_lr": C_LR, "warmup_steps": 0, "min_lr_ratio": C_MIN_LR / C_LR},
    }
    stages = []
    for tok, t in zip(stage_tokens, STAGE_TEMPLATES, strict=True):
        if t.key == "D":
            continue
        stages.append({
            "name": f"{t.key}-{t.title.replace(' ', '-')}",
            "tokens": tok,
            "seq_len": lengths[t.length],
            "tokens_per_batch": tps,
            **lr_cells[t.key],
            "mix": dict(t.mix),
            # Long-context adaptation interpolates RoPE positions by long/base from this stage on.
            **({"rope_scaling": lengths["long"] / lengths["base"]} if t.length == "long" else {}),
        })
    return {
        "name": f"plan-{format_count(n)}-{format_count(d)}tok",
        "model": {
            "preset": None,
            "n_layers": shape.n_layers,
            "d_model": shape.d_model,
            "n_heads": shape.n_heads,
            "ffn_hidden": shape.ffn_hidden,
            "max_seq_len": lengths["long"],
            "tie_embeddings": shape.tie_embeddings,
        },
        "data": {
            "sources": sources,
            "tokenizer": {"name_or_path": "gpt2"},
        },
        "curriculum": {
            "schedule": "per_stage",
            "min_lr_ratio": inp.min_lr_ratio,
            "decay": "cosine",
            "grad_clip": 1.0,
            "target_tokens": sum(stage["tokens"] for stage in stages),
            "stages": stages,
        },
        "optim": {"base_lr": peak, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1},
    }


def fill_stages(cur: Schedule, warmup: int, lengths: dict[str, int], stage_tokens: list[int], tps: int,
                peak: float) -> list[PlanStage]:
    """Rows A–D of the stage table: A–C read from ``cur``, the schedule of the config ``--write`` emits
    (so the table shows what ``gradus train`` runs), D filled from its template at a constant LR."""
    rope_long = lengths["long"] / lengths["base"]
    stages: list[PlanStage] = []
    for i, t in enumerate(STAGE_TEMPLATES):
        seq = lengths[t.length]
        if i < len(cur.stages):
            sp = cur.stages[i]
            # The LR rises during the warmup and falls after it: a stage's highest LR is at its first
            # step, or at the warmup's last step when that falls inside the stage.
            last_warm = sp.start_step + sp.warmup_steps - 1
            candidates = [sp.start_step] + ([last_warm] if sp.start_step <= last_warm < sp.end_step else [])
            top = max(lr_at(cur, step, i) for step in candidates)
            stages.append(PlanStage(t.key, sp.name, t.title, sp.tokens, sp.seq_len, sp.batch_size, sp.steps,
                                    top, lr_at(cur, sp.end_step - 1, i),
                                    rope_long if t.length == "long" else 1.0, dict(sp.mix), True, t.note))
        else:
            lr = D_LR_FACTOR * peak
            stages.append(PlanStage(t.key, f"{t.key}-{t.title.replace(' ', '-')}", t.title, stage_tokens[i], seq,
                                    tps // seq, stage_tokens[i] // tps, lr, lr, rope_long, {}, False, t.note))
    return stages
