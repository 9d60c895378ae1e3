"""Stage throughput, summarised: per-stage medians over repeats, the framework/plain ratio, and the table.

The steps come from :func:`gradus.experiments.throughput.run_repeat`; this module turns them into the
figures ``benchmarks/stage_throughput.py`` prints and writes (its docstring defines each one).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from gradus.experiments.throughput import RepeatRun, StageShape, StepRecord

if TYPE_CHECKING:
    from gradus.train.resident_memory import RssSampler

RATIO_TARGET = 0.95
"""The framework/plain tokens-per-second ratio every stage should reach."""


def transition_steps(steps: int) -> int:
    """Steps at the start of a stage counted as its transition: max(1, min(3, N // 4))."""
    return max(1, min(3, steps // 4))


def summarize_arm(recs: list[StepRecord], s: StageShape, steps: int, flops: float, peak: float,
                  arm: str) -> dict[str, Any]:
    """One arm at one stage of one repeat: steady step time and tokens/s, MFU, transition seconds, new
    compiled graphs, CUDA peak memory, data-thread CPU and (framework) the breakdown of a steady step."""
    w = transition_steps(steps)
    if len(recs) != steps:
        raise RuntimeError(f"{arm}: stage {s.index} ran {len(recs)} steps, expected {steps}")
    steady = recs[w:]
    # The mean, not the median: throughput is tokens over time, and a cost paid every k-th step (a chunk
    # of documents tokenised, a metrics flush) is overhead the median would hide.
    step_time = statistics.fmean(r.wall_s for r in steady)
    tps = s.tokens_per_step / step_time
    graphs = [r.new_graphs for r in recs if r.new_graphs is not None]
    cpu = [r.data_cpu_s for r in steady if r.data_cpu_s is not None]
    row: dict[str, Any] = {
        "step_time_s": step_time,
        "tokens_per_sec": tps,
        "mfu": flops * tps / peak if peak else None,
        "transition_seconds": sum(r.wall_s for r in recs[:w]) - w * step_time,
        "first_step_s": recs[0].wall_s,
        "new_compiled_graphs": sum(graphs) if graphs else None,
        # Mean over the steady steps (the counter ticks in 10 ms, too coarse for a median).
        "data_thread_cpu_per_step_s": sum(cpu) / len(cpu) if cpu else None,
    }
    if recs[0].cuda_peak is not None:
        row["peak_memory_bytes"] = max(r.cuda_peak or 0 for r in recs)
    if steady[0].inner_s is not None:
        inner = statistics.fmean(r.inner_s for r in steady if r.inner_s is not None)
        wait = statistics.fmean(r.data_wait_s for r in steady if r.data_wait_s is not None)
        row["breakdown_s"] = {
            "wall": step_time,
            "trainer_clock": inner,  # what the trainer's own tokens_per_sec divides by
            "data_wait": wait,
            "train_step": inner - wait,
            "outside_trainer_clock": step_time - inner,
        }
        row["tokens_per_sec_trainer_clock"] = s.tokens_per_step / inner
    return row


def summarize_repeat(rep: RepeatRun, stages: list[StageShape], steps: int, flops: dict[int, float], peak: float,
                     sampler: RssSampler | None) -> dict[int, dict]:
    """Per stage: both arms' rows, the paired ratio and (CPU) the process's peak memory."""
    w = transition_steps(steps)
    out = {}
    for s in stages:
        fw, pl = rep.framework[s.index], rep.plain[s.index]
        # Both arms' steady steps cover the same stretch of time, pair by pair, so load swings (another
        # process taking a core for a while) weigh on both sums alike. The median of the per-pair ratios
        # is kept too: it ignores one-off stalls, and with them any overhead paid only every k-th step.
        pairs = [p.wall_s / f.wall_s for f, p in zip(fw[w:], pl[w:], strict=True)]
        entry = {
            "framework": summarize_arm(fw, s, steps, flops[s.index], peak, "framework"),
            "plain": summarize_arm(pl, s, steps, flops[s.index], peak, "plain"),
            "ratio": sum(p.wall_s for p in pl[w:]) / sum(f.wall_s for f in fw[w:]),
            "ratio_pair_median": statistics.median(pairs),
        }
        if sampler is not None:
            rss = sampler.peak_between(min(fw[0].start, pl[0].start), max(fw[-1].end, pl[-1].end))
            entry["framework"]["peak_memory_bytes"] = entry["plain"]["peak_memory_bytes"] = rss
        out[s.index] = entry
    return out


def spread(values: list[float]) -> dict[str, float]:
    """The median of ``values`` with its range (min, max)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def combine(stages: list[StageShape], repeats: list[dict[int, dict]], flops: dict[int, float]) -> list[dict]:
    """Per stage and arm, the median over repeats with the spread (min, max)."""
    table = []
    for s in stages:
        fw = [r[s.index]["framework"] for r in repeats]
        pl = [r[s.index]["plain"] for r in repeats]
        ratios = [r[s.index]["ratio"] for r in repeats]
        pair_medians = [r[s.index]["ratio_pair_median"] for r in repeats]

        def med(rows: list[dict], key: str) -> float | None:
            vals = [r[key] for r in rows if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        entry: dict[str, Any] = {
            "index": s.index,
            "config_stage": s.source_index,
            "name": s.name,
            "seq_len": s.seq_len,
            "batch": s.batch,
            "tokens_per_step": s.tokens_per_step,
            "flops_per_token": flops[s.index],
            "ratio": statistics.median(ratios),
            "ratio_spread": spread(ratios),
            "ratio_pair_median": statistics.median(pair_medians),
        }
        for key in ("tokens_per_sec", "step_time_s", "peak_memory_bytes", "mfu", "transition_seconds",
                    "first_step_s", "new_compiled_graphs", "data_thread_cpu_per_step_s"):
            entry[key] = {"framework": med(fw, key), "plain": med(pl, key)}
        for key in ("tokens_per_sec", "transition_seconds"):
            entry[key + "_spread"] = {"framework": spread([f[key] for f in fw]),
                                      "plain": spread([p[key] for p in pl])}
        entry["tokens_per_sec_trainer_clock"] = med(fw, "tokens_per_sec_trainer_clock")
        entry["framework_breakdown_s"] = {
            k: statistics.median(f["breakdown_s"][k] for f in fw) for k in fw[0]["breakdown_s"]
        }
        entry["framework_breakdown_s"]["plain_step"] = entry["step_time_s"]["plain"]
        table.append(entry)
    return table


# ============================================================================================ output
def _num(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def format_table(stages: list[dict], peak: float, peak_source: str, memory_scope: str) -> str:
    """The per-stage table printed to stdout: medians over repeats, the ratio's spread in brackets."""
    head = (f"{'stage':<8} {'seq×batch':>9} {'tok/s fw':>9} {'tok/s pl':>9} {'ratio':>6} {'(min-max)':>11} {'pairs':>5} "
            f"{'step ms':>8} {'MFU% fw':>7} {'MFU% pl':>7} {'MiB fw':>7} {'MiB pl':>7} {'trans s fw':>10} "
            f"{'trans s pl':>10} {'graphs+':>7}")
    lines = [head, "-" * len(head)]
    for e in stages:
        sp = e["ratio_spread"]
        tps, mfu, mem, trans = e["tokens_per_sec"], e["mfu"], e["peak_memory_bytes"], e["transition_seconds"]
        g_f, g_p = e["new_compiled_graphs"]["framework"], e["new_compiled_graphs"]["plain"]
        lines.append(
            f"{e['name'][:8]:<8} {str(e['seq_len']) + '×' + str(e['batch']):>9} "
            f"{tps['framework']:>9,.0f} {tps['plain']:>9,.0f} {e['ratio']:>6.3f} "
            f"{'(' + format(sp['min'], '.2f') + '-' + format(sp['max'], '.2f') + ')':>11} "
            f"{e['ratio_pair_median']:>5.2f} "
            f"{_num(e['step_time_s']['framework'], '.1f', 1e3):>8} "
            f"{_num(mfu['framework'], '.1f', 100):>7} {_num(mfu['plain'], '.1f', 100):>7} "
            f"{_num(mem['framework'], ',.0f', 2**-20):>7} {_num(mem['plain'], ',.0f', 2**-20):>7} "
            f"{trans['framework']:>10.3f} {trans['plain']:>10.3f} "
            f"{'-' if g_f is None else f'{g_f:g}/{g_p:g}':>7}"
        )
    lines.append(f"ratio = framework ÷ plain tokens/s over the same paired steady steps (target ≥ {RATIO_TARGET}), "
                 f"median over repeats (min-max); pairs = median of per-pair ratios; step ms = framework, mean; "
                 f"peak FLOP/s {peak:.3g} ({peak_source})")
    lines.append(f"memory: {memory_scope}; trans s = first steps of the stage minus as many steady steps "
                 "(stage 0: cold start); graphs+ = compiled graphs added in the stage, framework/plain")
    lines.append("")
    lines.append("framework steady step, ms (means): wall = trainer clock [data wait + train step] + outside "
                 "the clock (metrics, guard, schedule); data-thread CPU per step; plain step")
    for e in stages:
        b = e["framework_breakdown_s"]
        cpu = e["data_thread_cpu_per_step_s"]["framework"]
        lines.append(
            f"  {e['name'][:8]:<8} wall {1e3 * b['wall']:8.2f} = clock {1e3 * b['trainer_clock']:8.2f} "
            f"[wait {1e3 * b['data_wait']:6.2f} + step {1e3 * b['train_step']:8.2f}] + outside "
            f"{1e3 * b['outside_trainer_clock']:6.2f};  data CPU {_num(cpu, '6.2f', 1e3)};  "
            f"plain {1e3 * b['plain_step']:8.2f}"
        )
    return "\n".join(lines)
