"""``gradus data CONFIG | --preset NAME [--stage K | --all | --transitions] [--batches N] [--json]``.

The stream tester: checks that every source is reachable (one line per source), draws batches for the
chosen stages (default: first and last) and reports their shapes, realised versus configured mix, EOS
boundaries and tokens/s; ``--transitions`` steps across each stage boundary and shows that shape and mix
switch exactly there, with no token lost or repeated; ``--tokens-per-sec`` estimates training time per
stage. Exits non-zero when a source is unreachable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

from gradus.commands.common import add_config_arguments, config_source, load_from_args
from gradus.errors import ConfigError, DataError, GradusError
from gradus.units import format_count, format_duration, parse_rate

SMALL_SAMPLE_TOLERANCE = 0.02
"""A realised mix measured to worse than this (two standard errors) is called a small sample."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of this command."""
    add_config_arguments(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stage", type=int, metavar="K", help="draw batches from stage K only (0-based)")
    which.add_argument("--all", action="store_true", help="draw batches from every stage")
    which.add_argument("--transitions", action="store_true",
                       help="step across each stage boundary and check that shape and mix switch exactly there")
    parser.add_argument("--batches", type=int, default=4, metavar="N", help="batches drawn per stage (default 4)")
    parser.add_argument("--tokens-per-sec", metavar="N",
                        help="training throughput (e.g. 150k): estimate the training time of each stage")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Check the sources, draw batches, print the report; 2 when a source is unreachable."""
    from gradus.curriculum import resolve_schedule

    if args.batches < 1:
        raise ConfigError(f"--batches={args.batches}: must be at least 1")
    tps_flag = None
    if args.tokens_per_sec is not None:
        try:
            tps_flag = parse_rate(args.tokens_per_sec, "--tokens-per-sec")
        except ValueError as err:
            raise ConfigError(f"--tokens-per-sec={args.tokens_per_sec}: {err}") from None
    cfg = load_from_args(args)
    schedule = resolve_schedule(cfg)
    n = len(schedule.stages)
    if args.stage is not None and not 0 <= args.stage < n:
        raise ConfigError(f"--stage {args.stage}: the curriculum has stages 0..{n - 1}")

    sources = check_sources(cfg.data)
    report: dict = {"config": cfg.name or config_source(args), "sources": sources, "stages": []}
    if not all(s["ok"] for s in sources):
        _emit(report, args.json)
        return 2

    from gradus.data import DataPipeline, load_tokenizer

    tok = load_tokenizer(cfg.data)
    report["tokenizer"] = tok.identity()
    # prefetch 0: the tester measures the producer itself, and jumps between stages freely.
    with DataPipeline(cfg.data, tok, schedule, seed=cfg.train.seed, prefetch=0) as pipe:
        if args.transitions:
            report["transitions"] = transitions(pipe, schedule, tok)
        else:
            if args.stage is not None:
                chosen = [args.stage]
            elif args.all:
                chosen = list(range(n))
            else:
                chosen = sorted({0, n - 1})
            for k in chosen:
                report["stages"].append(draw_stage(pipe, schedule, tok, k, args.batches, tps_flag))
        report["metrics"] = pipe.metrics()
    _emit(report, args.json)
    return 0


def check_sources(data_cfg) -> list[dict]:
    """Open every source and read its first document: ``[{"name", "ok", "error", "origin"}]``.

    Sources are checked side by side, each with a single attempt (the hub client retries on its own), so
    an unreachable hub costs one timeout, not ``retries`` of them per source."""
    from concurrent.futures import ThreadPoolExecutor

    from gradus.data.sources import open_reader

    def check(src) -> dict:
        entry: dict = {"name": src.name, "ok": True, "error": None}
        try:
            reader = open_reader(src, role="train", holdout=data_cfg.validation.fraction, retries=0,
                                 backoff=data_cfg.retry_backoff)
            entry["origin"] = reader.describe()
            first = next(iter(reader.scan(None)))
            if first.end_of_pass:
                raise DataError(f"source {src.name!r} has no documents")
        except GradusError as err:
            entry.update(ok=False, error=err.problems[0])
        except Exception as err:  # noqa: BLE001 - the tester reports every failure as a line
            entry.update(ok=False, error=f"source {src.name!r}: {type(err).__name__}: {err}".splitlines()[0])
        return entry

    with ThreadPoolExecutor(max_workers=max(1, len(data_cfg.sources))) as pool:
        return list(pool.map(check, data_cfg.sources))


def draw_stage(pipe, schedule, tok, k: int, batches: int, tokens_per_sec: float | None) -> dict:
    """Draw ``batches`` batches at the start of stage ``k`` and describe them."""
    from gradus.curriculum import state_at

    plan = schedule.stages[k]
    by_source = {n: 0 for n in pipe._stream.names}
    eos = windows = tokens = 0
    seconds = 0.0
    shape = None
    sample = ""
    first = state_at(schedule, plan.start_step, plan.start_tokens)
    for i in range(batches):
        # Every step of a stage has its shape and mix; a stage that never runs (zero steps) is shown too.
        state = dataclasses.replace(first, step=plan.start_step + i, stage_index=k, seq_len=plan.seq_len,
                                    batch_size=plan.batch_size, mix=dict(plan.mix))
        t0 = time.perf_counter()
        b = pipe.next_batch(state)
        seconds += time.perf_counter() - t0
        shape = list(b.inputs.shape)
        for name, c in b.tokens_by_source.items():
            by_source[name] += c
        eos += int((b.inputs == tok.eos_id).sum())
        windows += b.rows
        tokens += b.num_tokens
        if i == 0:
            sample = _sample(tok, b.inputs[0])
    total = sum(by_source.values()) or 1
    realized = {n: c / total for n, c in by_source.items()}
    out = {
        "index": k,
        "name": plan.name,
        "seq_len": plan.seq_len,
        "batch_size": plan.batch_size,
        "shape": shape,
        "batches": batches,
        "tokens": tokens,
        "mix_configured": {n: round(w, 6) for n, w in plan.mix.items()},
        "mix_realized": {n: round(c / total, 6) for n, c in by_source.items()},
        "mix_documents": eos,
        "mix_tolerance": round(mix_tolerance(plan.mix, eos), 4),
        "mix_max_deviation": round(max(abs(realized.get(n, 0.0) - w) for n, w in plan.mix.items()), 4),
        "tokens_by_source": by_source,
        "eos_per_window": round(eos / max(1, windows), 4),
        "mean_document_tokens": round(tokens / eos, 1) if eos else None,
        "tokens_per_sec": round(tokens / seconds, 1) if seconds > 0 else None,
        "stage_steps": plan.steps,
        "stage_tokens": plan.tokens,
        "sample": sample,
    }
    if tokens_per_sec:
        out["estimated_seconds"] = plan.tokens / tokens_per_sec
    return out


def mix_tolerance(weights: dict[str, float], documents: int) -> float:
    """How far a realised share can stray from its weight by chance in a sample of ``documents`` documents:
    two standard errors of the most uncertain share, 2·sqrt(w(1-w)/n) (a floor: documents of unequal
    length spread token shares further)."""
    worst = max((w * (1 - w) for w in weights.values()), default=0.0)
    return 2 * math.sqrt(worst / max(1, documents))


def mix_note(stage: dict) -> str:
    """The line under a stage's mix table that says how much its realised mix can be trusted."""
    tol, dev, docs = stage["mix_tolerance"], stage["mix_max_deviation"], stage["mix_documents"]
    small = tol > SMALL_SAMPLE_TOLERANCE
    text = (f"  mix {'from a small sample' if small else 'sample'}: {docs:,} document ends in {stage['batches']} "
            f"batches, so chance alone moves a share by ±{tol:.3f} or more; largest gap here {dev:.3f}")
    if small:
        # The tolerance falls as 1/sqrt(documents), and documents grow with batches: (tol / target)² times as
        # many batches reach the target. (A floor of 4× used to be applied here, which promised ±0.02 where
        # the batches named would give ±0.01: twice as many batches as needed, or more.)
        more = math.ceil(stage["batches"] * (tol / SMALL_SAMPLE_TOLERANCE) ** 2)
        text += f"; --batches {more} for about ±{SMALL_SAMPLE_TOLERANCE}"
    return text


def _sample(tok, row, limit: int = 160) -> str:
    text = tok.decode(row.tolist())
    return text if len(text) <= limit else text[:limit] + "…"


def transitions(pipe, schedule, tok) -> list[dict]:
    """For each stage boundary: the two steps before and after it, drawn in order, with their shapes and
    mixes, and whether the token stream continues across the boundary without a gap or repeat."""
    from gradus.curriculum import state_at, tokens_at_step
    from gradus.data.packing import resolve_stride, row_lanes

    out = []
    running = [s for s in schedule.stages if s.steps > 0]
    for a, b in zip(running, running[1:], strict=False):
        steps = []
        previous = None
        continuous = True
        for offset in (-2, -1, 0, 1):
            step = b.start_step + offset
            if step < a.start_step or step >= b.end_step:
                continue
            state = state_at(schedule, step, tokens_at_step(schedule, step))
            packer = pipe.state_dict()["packer"]
            batch = pipe.next_batch(state)
            total = sum(batch.tokens_by_source.values()) or 1
            steps.append({
                "step": step,
                "stage_index": batch.stage_index,
                "shape": list(batch.inputs.shape),
                "mix_configured": {n: round(w, 6) for n, w in state.mix.items()},
                "mix_realized": {n: round(c / total, 6) for n, c in batch.tokens_by_source.items()},
            })
            concat = pipe.cfg.packing.mode == "concat" and resolve_stride(pipe.cfg.packing, state.seq_len) == state.seq_len
            if concat:
                lanes = row_lanes(packer["next"], batch.rows, len(packer["tokens"]))
                # With stride == seq_len a lane's last label in one batch is its first input in the next
                # (lanes dropped when a stage has fewer rows hand their tokens on through the queue).
                if previous is not None:
                    last_label = {lane: previous[0].labels[r, -1] for r, lane in enumerate(previous[1])}
                    first_input = {lane: batch.inputs[r, 0] for r, lane in reversed(list(enumerate(lanes)))}
                    continuous &= all(bool(last_label[q] == first_input[q]) for q in last_label if q in first_input)
                previous = (batch, lanes)
        switch = next((s["step"] for s in steps if s["stage_index"] == b.index), None)
        out.append({
            "from_stage": a.index,
            "to_stage": b.index,
            "boundary_step": b.start_step,
            "switched_at_step": switch,
            "exact": switch == b.start_step,
            "continuous": continuous if pipe.cfg.packing.mode == "concat" else None,
            "steps": steps,
        })
    return out


# ------------------------------------------------------------------------------------------ output
def _emit(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    print(f"gradus data — {report['config']}")
    print("sources")
    width = max(len(s["name"]) for s in report["sources"])
    for s in report["sources"]:
        status = "ok   " if s["ok"] else "ERROR"
        print(f"  {s['name']:<{width}}  {status}  {s['error'] or s.get('origin', '')}")
    tok = report.get("tokenizer")
    if tok:
        print(f"tokenizer  {tok['name_or_path']} ({tok['kind']}), vocab {tok['vocab_size']:,}, "
              f"EOS {tok['eos_token']!r} = {tok['eos_id']}")
    for st in report["stages"]:
        rate = f"{format_count(st['tokens_per_sec'])} tokens/s" if st["tokens_per_sec"] else "-"
        print(f"\nstage {st['index']} ({st['name']}): seq_len {st['seq_len']} × batch {st['batch_size']} "
              f"→ shape {st['shape']}, {st['batches']} batches, {st['tokens']:,} tokens, {rate}")
        print(f"  {'source':<{width}}  configured  realized")
        for name, w in st["mix_configured"].items():
            print(f"  {name:<{width}}  {w:>10.3f}  {st['mix_realized'].get(name, 0.0):>8.3f}")
        print(mix_note(st))
        mean = st["mean_document_tokens"]
        print(f"  EOS per window {st['eos_per_window']:.2f}" + (f" (about {mean:,.0f} tokens per document)" if mean else ""))
        if "estimated_seconds" in st:
            print(f"  stage: {format_count(st['stage_tokens'])} tokens ≈ {format_duration(st['estimated_seconds'])} "
                  f"of training at the given throughput")
        print(f"  sample: {st['sample']!r}")
    for tr in report.get("transitions", []):
        verdict = "exactly at the boundary" if tr["exact"] else f"at step {tr['switched_at_step']} (expected {tr['boundary_step']})"
        cont = {True: "no token lost or repeated", False: "STREAM BROKEN", None: "document packing"}[tr["continuous"]]
        print(f"\nstage {tr['from_stage']} → {tr['to_stage']} at step {tr['boundary_step']}: switched {verdict}; {cont}")
        print("  (mix: realised in that one batch / configured for its stage)")
        for s in tr["steps"]:
            mix = ", ".join(f"{n} {v:.2f}/{s['mix_configured'].get(n, 0.0):.2f}" for n, v in s["mix_realized"].items())
            print(f"  step {s['step']:>7}  stage {s['stage_index']}  shape {s['shape']}  mix {mix}")
    m = report.get("metrics")
    if m:
        print(f"\nskipped empty documents: {m['data/skipped_empty']:.0f}; invalid UTF-8 replaced: {m['data/replaced_utf8']:.0f}")
