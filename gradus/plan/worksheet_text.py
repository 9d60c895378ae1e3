"""The worksheet as text: the table ``gradus plan`` prints and the header of the YAML ``--write`` emits.

Why apart from the arithmetic: the printed worksheet is read by people and compared byte for byte by
tests and the README, while the numbers behind it (:class:`gradus.plan.worksheet.Plan`, also dumped by
``--json``) are the contract; keeping the wording here lets one change without touching the other.
"""

from __future__ import annotations

import yaml

from gradus.plan.hardware import format_flops
from gradus.plan.worksheet import Plan
from gradus.units import format_count, format_duration


def _pct(x: float) -> str:
    if x >= 1000:
        return f"{x:.0e}×".replace("e+0", "e").replace("e+", "e")
    if x >= 10:
        return f"{x:.0f}×"
    return f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def render_plan(plan: Plan) -> str:
    """The worksheet as the console prints it."""
    inp = plan.inputs
    out: list[str] = []
    add = out.append
    add(f"gradus plan: compute-optimal worksheet (D ≈ {inp.ratio:g}·N, C ≈ {inp.kappa:g}·N·D)")
    add("")
    budget = plan.flops_budget
    if budget is not None:
        add(f"  effective compute C     {format_flops(budget)} FLOPs  ({plan.budget_source})")
    if inp.hardware is not None:
        add(f"  hardware                {inp.hardware.describe()} = "
            f"{format_flops(inp.hardware.flops_per_second)} FLOP/s effective")
    add(f"  κ                       {inp.kappa:g} FLOPs per parameter per token (6 = fwd+bwd; 8 with recomputation)")
    for line in plan.explanation:
        add(f"  {line}")
    add(f"  N (non-embedding)       {format_count(plan.params)}")
    add(f"  D (tokens)              {format_count(plan.tokens)}  ({plan.tokens / plan.params:.1f} per parameter)")
    share = f"  ({plan.train_flops / budget:.1%} of C)" if budget else ""
    add(f"  κ·N·D                   {format_flops(plan.train_flops)} FLOPs{share}")
    if budget is not None:
        add("")
        add(f"  sizes against C = {format_flops(budget)} (D = {inp.ratio:g}·N):")
        for row in plan.ladder():
            verdict = "fits" if row["fits"] else "exceeds C"
            add(f"    N = {format_count(row['params']):>4} → D = {format_count(row['tokens']):>5} → "
                f"{format_flops(row['train_flops']):>7} FLOPs  {_pct(row['budget_share']):>6} of C  {verdict}")
    s = plan.shape
    add("")
    add(f"  model                   {s.n_layers} layers × {s.d_model} wide, {s.n_heads} heads of {s.head_dim}, "
        f"SwiGLU {s.ffn_hidden}")
    add(f"                          N = {format_count(s.params_non_embedding)} non-embedding "
        f"({s.params_non_embedding / plan.params - 1:+.1%}), {format_count(s.params_total)} total at vocab {s.vocab_size}; "
        f"{format_flops(s.flops_per_token(inp.seq_len))} FLOPs/token at {inp.seq_len}")
    add(f"  tokens per step         {plan.tokens_per_step:,}")
    add(f"  steps                   {plan.steps:,}")
    add(f"  peak LR                 {plan.peak_lr:.2e}  (grid 1B 3e-4, 3B 2e-4, 7B 1.5e-4, 13B 1e-4; log-space)")
    add(f"  schedule                warmup {plan.warmup_steps:,} step{'s' if plan.warmup_steps != 1 else ''} ({inp.warmup_fraction:.0%}), cosine to "
        f"{plan.min_lr:.2e} ({inp.min_lr_ratio:.0%}) in stage A; B at the peak / 1.5 to the same floor; "
        f"C 1e-5 -> 5e-6")
    hours = plan.wallclock_hours
    if hours is not None:
        add(f"  wall-clock              {hours:,.1f} h = {format_duration(hours * 3600)} "
            f"at {format_flops(inp.hardware.flops_per_second if inp.hardware else 0)} FLOP/s (κ·N·D; each stage "
            f"below at the trainer's FLOPs per token)")
    add("")
    add("  stage                        tokens  share  seq_len  batch      steps  LR start → end         notes")
    for st in plan.stages:
        rope = f", RoPE ×{st.rope_scaling:g}" if st.rope_scaling != 1 else ""
        mix = " ".join(f"{k} {v:.0%}" for k, v in st.mix.items() if v > 0)
        when = f", {format_duration(st.hours * 3600)}" if st.hours is not None else ""
        add(f"  {st.key} {st.title:<26} {format_count(st.tokens):>6}  {_pct(st.tokens / plan.tokens):>5}  "
            f"{st.seq_len:>7}  {st.batch_size:>5}  {st.steps:>9,}  {st.peak_lr:.1e} → {st.end_lr:.1e}      "
            f"{mix or 'instruction data'}{rope}{when}")
    for st in plan.stages:
        add(f"    {st.key}: {st.note}")
    if plan.switches:
        add("")
        add(f"  memory switches turned on for {inp.hardware.gpus if inp.hardware else 1} GPU(s) (written to train.*):")
        for line in plan.switches:
            add(f"    {line}")
    if plan.warnings:
        add("")
        for w in plan.warnings:
            add(f"  warning: {w}")
    return "\n".join(out)


def plan_config_yaml(plan: Plan, command: str = "gradus plan") -> str:
    """The YAML ``--write`` emits: a header with the worksheet, then the config of stages A–C."""
    c = plan.stages[2]
    lines = [
        f"# Written by `{command}`.",
        f"# N = {format_count(plan.params)} non-embedding parameters, D = {format_count(plan.tokens)} tokens, "
        f"κ·N·D = {format_flops(plan.train_flops)} FLOPs; peak LR {plan.peak_lr:.2e}, "
        f"{plan.tokens_per_step:,} tokens per step.",
        f"# Stages A–C as a sequence-length curriculum under schedule: per_stage: each warms up and decays on "
        f"its own (B re-warms to {plan.stages[1].peak_lr:.2e}, C to {c.peak_lr:.1e}).",
        f"# Stage C trains with RoPE position interpolation ×{c.rope_scaling:g} (its rope_scaling).",
        f"# Stage D ({plan.stages[3].title}, {format_count(plan.stages[3].tokens)} tokens at "
        f"{plan.stages[3].peak_lr:.1e}) is a separate run on instruction data.",
        *(f"# Turned on: {line}" for line in plan.switches),
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump(plan.config, sort_keys=False, allow_unicode=True)
