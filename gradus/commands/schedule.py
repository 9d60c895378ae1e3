"""``gradus schedule CONFIG | --preset NAME``: the stage table, as the plans print it.

Pure: loads the config and resolves its :class:`gradus.curriculum.Schedule`; no torch,
no data, so it runs anywhere in well under a second.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gradus.commands.common import add_config_arguments, config_source, load_from_args
from gradus.config import GradusConfig, dump_yaml, load_config
from gradus.curriculum import Schedule, StagePlan, resolve_schedule
from gradus.curriculum.adaptive import accepted_edits, edited_config, envelope_lines
from gradus.curriculum.rules import SEQ_BATCH_RULE, seq_batch_factors
from gradus.errors import ConfigError
from gradus.files import check_new_file, write_new_file
from gradus.plan.cost import check_mfu, stage_costs
from gradus.plan.hardware import GPUSpec, format_flops, gpu_spec, parse_float
from gradus.presets import list_presets, preset_description, preset_path
from gradus.sizes import ModelShape, resolve_shape
from gradus.train.storage.run_dir import RunDir
from gradus.units import format_count, format_duration, format_lr, parse_count, parse_rate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of this command."""
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the schedule as JSON instead of a table")
    parser.add_argument(
        "--tokens-per-sec",
        metavar="N",
        help="training throughput (e.g. 150k): adds the time each stage takes",
    )
    parser.add_argument(
        "--dataset-tokens",
        metavar="N",
        help="size of the training data in tokens, all sources together (e.g. 3B): adds how much of it "
        "each stage has read, in epochs",
    )
    parser.add_argument("--list", action="store_true", help="list the shipped presets and exit")
    parser.add_argument(
        "--gpu",
        metavar="NAME",
        help="project each stage's time on this GPU (h100, a100, h200, rtx4090) from its FLOPs per token",
    )
    parser.add_argument("--mfu", metavar="F", help="model FLOPs utilisation for --gpu (default 0.4)")
    parser.add_argument(
        "--from-run", metavar="RUN",
        help="the table an adaptive run followed: its config.yaml with the decisions in its decisions.jsonl applied",
    )
    parser.add_argument(
        "--write", metavar="FILE",
        help="write the config as YAML to FILE, a start for your own: a preset as shipped (with its comments), "
             "a config with --set applied; with --from-run, the table that run followed as a fixed config "
             "(adaptive removed), to train or reuse at scale",
    )


def run(args: argparse.Namespace) -> int:
    """Print the stage table (or JSON) of the config the arguments name."""
    if args.list:
        return _list(args.json)
    tokens_per_sec = _parsed(args.tokens_per_sec, "--tokens-per-sec", parse_rate)
    dataset_tokens = _parsed(args.dataset_tokens, "--dataset-tokens", parse_count)
    if dataset_tokens is not None and dataset_tokens <= 0:
        raise ConfigError(f"--dataset-tokens={args.dataset_tokens}: must be a positive token count, e.g. 3B")
    gpu, mfu = _gpu_and_mfu(args)
    cfg, title = _config(args)
    schedule = resolve_schedule(cfg)
    if dataset_tokens is None:
        dataset_tokens = cfg.data.dataset_tokens  # the config's planning figure; the flag wins
    report = schedule_report(schedule, tokens_per_sec, dataset_tokens)
    report.update(model_report(cfg))
    add_dataset_coverage(report, cfg)
    if gpu is not None:
        add_cost(report, cfg, schedule, gpu, mfu)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_table(cfg, schedule, report, title=str(title)))
    for line in envelope_lines(cfg, schedule):
        print(line)
    return 0


def _write_start(args: argparse.Namespace, cfg: GradusConfig) -> None:
    """``--write FILE`` with a preset or config: a starting point for a config of one's own. A preset as
    shipped is copied with its comments (they say where each figure comes from); with ``--set`` overrides,
    or from a config file, the resolved config is written whole (every field, defaults included). An
    existing file is never overwritten."""
    out = Path(args.write)
    if args.preset and not getattr(args, "overrides", None):
        write_new_file(out, preset_path(args.preset).read_text(encoding="utf-8"), "--write")
    else:
        write_new_file(out, dump_yaml(cfg), "--write")
    print(f"wrote {out}: edit it (docs/config.md explains every field), then gradus train --config {out}")


def _config(args: argparse.Namespace) -> tuple[GradusConfig, str]:
    """The config to show and its title: the one the arguments name, or (``--from-run``) the fixed table an
    adaptive run's decisions made of its config, written to ``--write`` when given."""
    if args.from_run is None:
        cfg = load_from_args(args)
        if args.write:
            _write_start(args, cfg)
        return cfg, cfg.name or (f"preset {args.preset}" if args.preset else str(config_source(args)))
    if args.preset or args.config or args.config_flag:
        raise ConfigError("give either a config (or --preset) or --from-run RUN, not both")
    if args.write:
        check_new_file(args.write, "--write")
    run = RunDir(Path(args.from_run))
    if not run.config.is_file():
        raise ConfigError(f"--from-run {args.from_run}: no {run.config.name} there; give a gradus run directory")
    cfg = load_config(run.config, getattr(args, "overrides", None) or [])
    records = run.read_decisions()
    edits = accepted_edits(records)
    if cfg.curriculum.adaptive is not None:
        cfg = edited_config(cfg, edits)
    title = f"{args.from_run} as run ({len(edits)} of its {len(records)} decisions applied)"
    if args.write:
        write_new_file(args.write, dump_yaml(cfg), "--write")
        print(f"wrote {args.write}: the table {args.from_run} followed, as a fixed config "
              f"(train it with: gradus train --config {args.write})")
    return cfg, title



def _parsed(value, flag, parse):
    if value is None:
        return None
    try:
        return parse(value, flag)
    except ValueError as err:
        raise ConfigError(f"{flag}={value}: {err}") from None


def _gpu_and_mfu(args: argparse.Namespace) -> tuple[GPUSpec | None, float]:
    """The --gpu spec (None without it) and the MFU it runs at."""
    if args.gpu is None:
        if args.mfu is not None:
            raise ConfigError(f"--mfu {args.mfu}: only used with --gpu; add e.g. --gpu h100")
        return None, DEFAULT_MFU
    mfu = DEFAULT_MFU if args.mfu is None else check_mfu(parse_float(args.mfu, "--mfu"))
    return gpu_spec(args.gpu), mfu


DEFAULT_MFU = 0.4
"""MFU that --gpu assumes when --mfu is not given."""


def add_cost(report: dict, cfg: GradusConfig, schedule: Schedule, gpu: GPUSpec, mfu: float) -> None:
    """Add the cost model to a ``schedule_report``: each stage's FLOPs per token and projected seconds on
    ``gpu`` at ``mfu``, and a ``cost`` block with the totals and the assumptions."""
    vocab, vocab_source = planning_vocab_size(cfg)  # the plan command's vocab guess, no tokenizer load
    shape = resolve_shape(cfg.model, vocab)
    costs = stage_costs(schedule, shape, gpu, mfu)
    for stage, cost in zip(report["stages"], costs, strict=True):
        stage["flops_per_token"] = cost.flops_per_token
        stage["projected_seconds"] = cost.seconds
    report["cost"] = {
        "gpu": gpu.name,
        "peak_flops": gpu.peak_bf16_flops,
        "mfu": mfu,
        "vocab_size": vocab,
        "vocab_source": vocab_source,
        "flops": sum(c.flops for c in costs),
        "projected_seconds": sum(c.seconds for c in costs),
    }


def _list(as_json: bool) -> int:
    names = list_presets()
    if as_json:
        print(json.dumps({name: preset_description(name) for name in names}, indent=2))
        return 0
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {preset_description(name)}")
    return 0


def schedule_report(cur: Schedule, tokens_per_sec: float | None = None, dataset_tokens: int | None = None) -> dict:
    """The schedule as data (``--json``): :meth:`Schedule.to_json` plus time and dataset coverage when
    throughput or dataset size are given."""
    report = cur.to_json()
    report["tokens_per_sec"] = tokens_per_sec
    report["dataset_tokens"] = dataset_tokens
    elapsed = 0.0
    for stage in report["stages"]:
        if tokens_per_sec:
            stage["seconds"] = stage["tokens"] / tokens_per_sec
            elapsed += stage["seconds"]
            stage["elapsed_seconds"] = elapsed
        if dataset_tokens:
            stage["dataset_fraction"] = stage["tokens"] / dataset_tokens
            stage["dataset_epochs_after"] = stage["end_tokens"] / dataset_tokens
    if tokens_per_sec:
        report["total_seconds"] = elapsed
    if dataset_tokens:
        epochs = cur.total_tokens / dataset_tokens
        report["dataset_epochs"] = epochs
        if epochs > 1:
            repeat_at = format_count(dataset_tokens)
            report["warnings"].append(
                f"the run reads {format_count(cur.total_tokens)} tokens from a {repeat_at}-token dataset: "
                f"{epochs:.2f} epochs, so data repeats after {repeat_at} tokens"
            )
    return report


def add_dataset_coverage(report: dict, cfg: GradusConfig) -> None:
    """Add the plans' dataset columns from ``data.dataset_documents`` (and ``data.dataset_tokens``):
    per stage ``dataset_coverage`` = examples / training documents, the Wikipedia plan's "2.3× dataset
    coverage", and ``chunks_per_document`` = (dataset tokens / documents) / seq_len, its "Chunks/Doc".
    Training documents are the dataset's less the held-out ``data.validation.fraction``, rounded (the
    plan's 237,758 × 0.95 = 225,870). Nothing per stage when the config gives no document count."""
    documents = cfg.data.dataset_documents
    report["dataset_documents"] = documents
    report["dataset_training_documents"] = None
    if documents is None:
        return
    # At least one: a tiny dataset with a large held-out share must not divide by zero.
    training = max(1, round(documents * (1 - cfg.data.validation.fraction)))
    report["dataset_training_documents"] = training
    tokens = report.get("dataset_tokens")
    for stage in report["stages"]:
        stage["dataset_coverage"] = stage["examples"] / training
        if tokens:
            stage["chunks_per_document"] = tokens / documents / stage["seq_len"]
    report["dataset_coverage"] = sum(s["examples"] for s in report["stages"]) / training


def planning_vocab_size(cfg: GradusConfig) -> tuple[int, str]:
    """The vocabulary the model will have, read from the config alone, and where it came from: the one guess
    ``gradus plan`` makes too (:func:`gradus.commands.plan.guess_vocab_size`: model.vocab_size, the BPE to
    train, a local tokenizer file's own count, else GPT-2's), so one ``gradus schedule`` prints one size."""
    from gradus.commands.plan import guess_vocab_size

    vocab, source = guess_vocab_size(cfg)
    return vocab, source.replace("pass --vocab-size", "set model.vocab_size")  # this command's fix


def model_report(cfg: GradusConfig) -> dict:
    """The ``model`` and ``optim`` blocks of ``--json``: the resolved shape with its parameter counts at
    the vocabulary of :func:`planning_vocab_size`, the dropout, and the AdamW settings."""
    vocab, vocab_from = planning_vocab_size(cfg)
    shape = resolve_shape(cfg.model, vocab)
    o = cfg.optim
    return {
        "model": {
            "preset": cfg.model.preset,
            "shape": shape.to_dict(),
            "vocab_from": vocab_from,
            "params_non_embedding": shape.params_non_embedding,
            "params_total": shape.params_total,
            "dropout": cfg.model.dropout,
        },
        "optim": {"base_lr": o.base_lr, "beta1": o.beta1, "beta2": o.beta2, "weight_decay": o.weight_decay},
    }


def _percent(weight: float) -> str:
    pct = weight * 100
    return f"{pct:.0f}" if abs(pct - round(pct)) < 0.05 else f"{pct:.1f}"


def format_table(cfg: GradusConfig, cur: Schedule, report: dict, title: str = "") -> str:
    """The human table of ``cfg``'s schedule: one row per stage, a total row, then the warnings."""
    names = [s.name for s in cfg.data.sources]
    c = cfg.curriculum
    lines = []
    stops = []
    if cur.target_tokens is not None:
        stops.append(f"target_tokens {cur.target_tokens:,}")
    if cur.max_steps is not None:
        stops.append(f"max_steps {cur.max_steps:,}")
    lines.append(
        f"{title}: {len(cur.stages)} stages, {cur.total_steps:,} steps, {cur.total_tokens:,} tokens "
        f"(stops at {' or '.join(stops) or 'the end of the last stage'})"
    )
    model = cfg.model.preset or "custom"
    # Where the warmup comes from: its tokens when given (the fraction is then not used), else the fraction.
    warm_from = (f"its first {format_count(c.global_warmup_tokens)} tokens" if c.global_warmup_tokens is not None
                 else f"{c.global_warmup_fraction:g} of the run")
    if c.schedule == "global":
        sched = (
            f"one global schedule: warmup {cur.global_warmup_steps:,} steps "
            f"({warm_from}), {c.decay} to {c.min_lr_ratio:g}× each stage's peak"
        )
    elif c.schedule == "wsd":
        floor = "zero" if cur.floor_ratio == 0 else f"{cur.floor_ratio:g}× each stage's peak"
        # The cooldown never starts before the warmup has ended (global_factor): say where it really does.
        stable_end = max(cur.global_warmup_steps, cur.total_steps - cur.cooldown_steps)
        sched = (
            f"one global warmup-stable-decay: warmup {cur.global_warmup_steps:,} steps ({warm_from}), stable to "
            f"step {stable_end:,}, {c.cooldown_shape} cooldown over the last "
            f"{cur.total_steps - stable_end:,} steps ("
            + (f"its last {format_count(c.cooldown_tokens)} tokens" if c.cooldown_tokens else f"{c.cooldown_fraction:g} of the run")
            + f") to {floor}"
        )
    elif c.schedule == "linear":
        sched = (
            f"one global schedule: warmup {cur.global_warmup_steps:,} steps "
            f"({warm_from}), then linear decay to zero (D2Z)"
        )
    else:
        sched = f"per stage: warmup, then {_stage_decays(cur)}"
    lines.append(
        f"model {model}, max_seq_len {cfg.model.max_seq_len} · base LR {format_lr(cfg.optim.base_lr)} · LR {sched}"
    )
    if "model" in report:
        lines.append(_model_line(report))
    if cur.batch_ramp is not None:
        ramp = cur.batch_ramp
        tps = [s.tokens_per_step for s in cur.stages]
        scaling = (
            f"; peak LR × (tokens/step / {ramp['reference_tokens_per_step']:,} ({ramp['reference']}))"
            f"^{ramp['alpha']:g}" if ramp["alpha"] else "; peak LR not scaled (alpha 0)"
        )
        lines.append(f"batch ramp ({ramp['direction']}): tokens/step {' → '.join(f'{t:,}' for t in tps)}{scaling}")
    lines.append("")
    mix_head = "mix % " + "/".join(names) if len(names) > 1 else f"mix ({names[0]})"
    header = ["#", "name", "steps", "seq_len", "batch", "tokens/step", "peak LR", "end LR", "LR from", "warmup",
              "clip", mix_head, "examples", "tokens"]
    with_time = report.get("tokens_per_sec") is not None
    with_data = report.get("dataset_tokens") is not None
    with_coverage = report.get("dataset_training_documents") is not None
    cost = report.get("cost")
    if with_time:
        header.append("time")
    if with_data:
        header.append("data epochs")
    if with_coverage:
        header.append("coverage ×")
    if cost:
        header += ["FLOPs/token", f"{cost['gpu']} @ {cost['mfu']:g} MFU"]
    right = {"#", "steps", "seq_len", "batch", "tokens/step", "warmup", "examples", "tokens", "time", "data epochs",
             "coverage ×", "FLOPs/token", header[-1]}
    rows = []
    for k, (s, js) in enumerate(zip(cur.stages, report["stages"], strict=True)):
        rows.append(_row(s, js, cfg.optim.base_lr, cfg.model.max_seq_len, with_time, with_data))
        if with_coverage:
            rows[-1].append(f"{js['dataset_coverage']:.3g}")
        if cost:
            rows[-1] += [_flops(js["flops_per_token"]), format_duration(js["projected_seconds"])]
        rows[-1].insert(7, format_lr(cur.end_lrs[k]) if s.steps else "-")
    total = ["", "total", f"{cur.total_steps:,}", "", "", "", "", "", "", "", "", "",
             f"{sum(s.examples for s in cur.stages):,}", format_count(cur.total_tokens)]
    if with_time:
        total.append(format_duration(report["total_seconds"]))
    if with_data:
        total.append(f"{report['dataset_epochs']:.3g}")
    if with_coverage:
        total.append(f"{report['dataset_coverage']:.3g}")
    if cost:
        total += [_flops(cost["flops"]) + " total", format_duration(cost["projected_seconds"])]
    widths = [max(len(r[i]) for r in [header, *rows, total]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [cell.rjust(w) if head in right else cell.ljust(w) for cell, w, head in zip(row, widths, header, strict=True)]
        return "  ".join(cells).rstrip()

    lines.append(fmt(header))
    lines += [fmt(r) for r in rows]
    lines.append(fmt(total))
    if any(s.lr_source == "seq_batch" for s in cur.stages):
        lines.append(f"LR rule seq_batch: {SEQ_BATCH_RULE}")
    if any(s.clip_note == "by_length" for s in cur.stages):
        lines.append("clip rule by_length: seq_len ≤ 128 → 5.0, ≤ 512 → 1.0, else 0.5")
    if with_coverage:
        lines.append(_dataset_line(cfg, report))
    if cost:
        lines.append(
            f"projected time: training FLOPs (6·N + causal attention at each stage's seq_len) / "
            f"({cost['gpu']} {format_flops(cost['peak_flops'])} FLOP/s × MFU {cost['mfu']:g}); "
            f"vocab {cost['vocab_size']:,} from {cost['vocab_source']}"
        )
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _row(s: StagePlan, js: dict, base: float, max_seq_len: int, with_time: bool, with_data: bool) -> list[str]:
    mix = "/".join(_percent(w) for w in s.mix.values())
    clip = f"{s.grad_clip:g}" + ("" if s.clip_note in ("grad_clip",) else f" ({s.clip_note})")
    row = [
        str(s.index),
        s.name + (" (sft)" if s.kind == "sft" else ""),  # the stage that trains on chat records
        f"{s.start_step:,}–{s.end_step:,}",
        str(s.seq_len),
        str(s.batch_size),
        f"{s.tokens_per_step:,}",
        format_lr(s.peak_lr),
        _lr_from(s, base, max_seq_len),
        f"{s.warmup_steps:,}",
        clip,
        mix,
        f"{s.examples:,}",
        format_count(s.tokens),
    ]
    if with_time:
        row.append(format_duration(js["seconds"]))
    if with_data:
        row.append(f"{js['dataset_epochs_after']:.3g}")
    return row


def _stage_decays(cur: Schedule) -> str:
    """What the stages' decay really is: one phrase when they share it, else each group's with its stages
    (the curriculum default alone would say "cosine to 0.1×" where the stages override it)."""
    groups: dict[tuple[str, float], list[StagePlan]] = {}
    for s in cur.stages:
        groups.setdefault((s.decay, s.min_lr_ratio), []).append(s)

    def phrase(decay: str, ratio: float, stages: list[StagePlan], of: str = "") -> str:
        if decay == "constant":
            return "constant" + (" at" + of if of else "")
        floors = {format_lr(s.peak_lr * ratio) for s in stages}
        floor = f" (floor {floors.pop()})" if len(floors) == 1 else ""
        return f"{decay} to {ratio:.3g}×{of}{floor}"

    if len(groups) == 1:
        ((decay, ratio), stages), = groups.items()
        return phrase(decay, ratio, stages, of=" the stage's peak")
    parts = []
    for (decay, ratio), stages in groups.items():
        which = ", ".join(str(s.index) for s in stages)
        parts.append(f"{phrase(decay, ratio, stages)} in stage{'s' if len(stages) > 1 else ''} {which}")
    return "; ".join(parts)


def _model_line(report: dict) -> str:
    """The model's shape and size and the optimizer, from the report's ``model`` and ``optim`` blocks."""
    m, o = report["model"], report["optim"]
    shape = ModelShape.from_dict(m["shape"])
    vocab = "" if not m["vocab_from"].startswith("assumed") else " (vocab assumed: GPT-2's, set model.vocab_size)"
    return (
        f"model: {shape.describe()}{vocab} · dropout {m['dropout']:g} · "
        f"AdamW β1 {o['beta1']:g}, β2 {o['beta2']:g}, weight decay {o['weight_decay']:g}"
    )


def _dataset_line(cfg: GradusConfig, report: dict) -> str:
    """The dataset size the coverage column divides by."""
    tokens = report.get("dataset_tokens")
    return (
        f"dataset: {report['dataset_documents']:,} documents, {report['dataset_training_documents']:,} for "
        f"training after the {cfg.data.validation.fraction * 100:g}% held out"
        + (f", {format_count(tokens)} tokens" if tokens else "")
        + "; coverage × = the stage's examples / training documents"
    )
def _flops(x: float) -> str:
    """Three significant digits (``7.45e8``): stages differ by a few percent per token."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _lr_from(s: StagePlan, base: float, max_seq_len: int) -> str:
    """Short 'how the peak was derived' for the table (the JSON's lr_note has the whole formula)."""
    if s.batch_lr_factor not in (None, 1.0):
        return f"{s.lr_source} × {s.batch_lr_factor:.3g} (batch ramp)"
    if s.lr_source in ("peak_lr", "base"):
        return s.lr_source
    mult = s.peak_lr / base
    if s.lr_source == "seq_batch":
        length, width = seq_batch_factors(s.seq_len, s.batch_size, max_seq_len)
        return f"{mult:.3g}× = {length:.3g} × {width:.3g} (seq_batch)"
    return f"{mult:.3g}× base"
