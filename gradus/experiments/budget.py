"""The conditions every arm shares: one token budget (stages rescaled to whole steps), one evaluation
(same held-out documents, same reference length, same token cadence), and the compare baseline.

Pure Python (no torch): runs on the raw config mapping before anything trains.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

from gradus.config import from_dict
from gradus.curriculum import derive_batch, resolve_schedule
from gradus.errors import ConfigError
from gradus.units import format_count

EVAL_POINTS = 16
"""Evaluations per run, evenly spaced in tokens."""


def stage_tokens_per_step(stage: dict) -> int:
    """Tokens one optimizer step of a raw stage takes (batch rounded as the curriculum rounds it)."""
    seq = int(stage["seq_len"])
    if stage.get("batch_size"):
        return int(stage["batch_size"]) * seq
    return derive_batch(int(stage["tokens_per_batch"]), seq, int(stage.get("batch_multiple", 8))) * seq


def scale_to_budget(raw: dict, budget: int | None, origin: str = "config") -> dict:
    """The config with its stages turned into token budgets that keep their shares of the run and sum to
    ``budget``; ``None`` keeps the config's own total. Each budget is a whole number of steps of the largest
    tokens per step of any stage when every stage's divides it (a batch ramp: so the stage switches land on
    the same token counts as the baseline's steps and evaluations), else of its own; so every switch lands on
    a step. A budget that leaves some stage less than half such a step is a ConfigError naming the smallest
    budget that works."""
    data = copy.deepcopy(raw)
    cur = resolve_schedule(from_dict(data, origin=origin))
    shares = [st.tokens for st in cur.stages]
    total = sum(shares)
    budget = total if budget is None else int(budget)
    stages = data["curriculum"]["stages"]
    largest = max(st.tokens_per_step for st in cur.stages)
    aligned = all(largest % st.tokens_per_step == 0 for st in cur.stages)
    quanta = [largest if aligned else st.tokens_per_step for st in cur.stages]
    needs = [0.5 * q * total / max(1, sh) for q, sh in zip(quanta, shares, strict=True)]
    if budget < max(needs):
        i = needs.index(max(needs))
        worst = cur.stages[i]
        raise ConfigError(
            f"--budget {format_count(budget)}: stage {worst.name} ({worst.tokens / total:.0%} of the tokens) would "
            f"get less than one step of {quanta[i]:,} tokens"
            + (" (the run's largest batch: stages switch on its steps)" if quanta[i] != worst.tokens_per_step else "")
            + "; raise --budget to at least "
            f"{format_count(int(max(needs) * 2 + 0.5))}"
        )
    # Each stage ends as near its share's cumulative point as its steps allow, the rounding carried into the
    # next stage rather than made afresh per stage: otherwise the stages' roundings add up, and a curriculum
    # trained up to a step more or less than the baseline it is compared with (147,456 against 151,552 tokens
    # for demo-ramp at 150k). With aligned stages the total is the baseline's: the budget in whole largest steps.
    done, seen = 0, 0
    for raw_stage, quantum, share in zip(stages, quanta, shares, strict=True):
        raw_stage.pop("step", None)
        seen += share
        # Half up, not Python's round (half to even): rounding x - k must give round(x) - k for the whole steps k
        # already done, or a budget of an odd number of half-steps gave the curriculum a step more or less than its
        # one-stage baseline.
        raw_stage["tokens"] = max(1, math.floor((budget * seen / total - done) / quantum + 0.5)) * quantum
        done += raw_stage["tokens"]
    data["curriculum"]["target_tokens"] = sum(st["tokens"] for st in stages)
    data.setdefault("train", {})["max_steps"] = None
    return data


def reference_seq_len(raw: dict) -> int:
    """The evaluation length of a config: its own setting, else its longest stage (as the trainer does)."""
    train = raw.get("train") or {}
    return int(train.get("eval_reference_seq_len") or max(int(st["seq_len"]) for st in raw["curriculum"]["stages"]))


def same_evaluation(raw: dict, reference_len: int, eval_points: int = EVAL_POINTS) -> dict:
    """The config with the shared evaluation: ``eval_points`` evaluations evenly spaced in tokens, plus one
    at the end of each stage (so every run is measured at its last step, whatever its step count divides
    by), at ``reference_len``; runs to the end of the budget (no early stopping), no TensorBoard or
    progress bar, and no best checkpoint (each arm is read from its metrics; a 124M arm on a GPU spent more time
    writing one at every improving evaluation than training: BENCHMARKS.md, "GPU"). Periodic checkpoints stay,
    so an interrupted arm resumes.

    The cadence is in tokens (``train.eval_every_tokens``: whole steps of the final stage's tokens per step),
    replacing any cadence of the config's own: a config with a batch ramp takes more, smaller steps early, so
    a cadence in steps would evaluate it at other token counts than its baseline, and a config's own token
    cadence (set for its full-size run) could leave a shortened one with no evaluation between stage ends.
    For a constant batch the points are the same as every ``eval_every`` steps."""
    data = copy.deepcopy(raw)
    budget = data["curriculum"]["target_tokens"]
    tps = stage_tokens_per_step(data["curriculum"]["stages"][-1])
    train = data.setdefault("train", {})
    every = max(1, round(budget / eval_points / tps))
    train.update({"eval_every": every, "eval_every_tokens": every * tps, "eval_reference_seq_len": reference_len,
                  "eval_at_stage_change": True, "early_stopping_patience": None, "max_steps": None,
                  "save_best": False})
    logging = data.setdefault("logging", {})
    logging.update({"log_every": max(1, train["eval_every"] // 4), "tensorboard": False, "progress_bar": False})
    return data


def compare_baseline(raw: dict, origin: str = "config") -> dict:
    """The no-curriculum baseline of a config: one stage at the final stage's length and tokens per step,
    for the curriculum's whole token count, with the token-weighted mean of the stages' mixes (the same
    data in the same proportions, only not ordered), the final stage's LR and clip, and the first stage's
    warmup."""
    data = copy.deepcopy(raw)
    cur = resolve_schedule(from_dict(data, origin=origin))
    stages = data["curriculum"]["stages"]
    final, first = dict(stages[-1]), stages[0]
    total = sum(st.tokens for st in cur.stages)
    sources = list(cur.stages[0].mix)
    mix = {s: round(sum(st.mix[s] * st.tokens for st in cur.stages) / total, 4) for s in sources}
    stage = {k: v for k, v in final.items() if k not in ("name", "step", "tokens", "mix", "warmup_steps",
                                                         "warmup_tokens", "warmup_cap", "rope_scaling")}
    stage.update({k: first[k] for k in ("warmup_steps", "warmup_tokens", "warmup_cap") if first.get(k) is not None})
    if cur.stages[-1].rope_scaling != 1.0:
        stage["rope_scaling"] = cur.stages[-1].rope_scaling
    stage.update({"name": "baseline", "tokens": total, "mix": mix})
    data["curriculum"]["stages"] = [stage]
    data["curriculum"]["target_tokens"] = total
    data["name"] = f"{data.get('name') or 'config'}-baseline"
    return data


def describe_stages(raw: dict) -> str:
    """``32→64→128→256, 4,096 tokens/step`` for a table header."""
    stages: Sequence[dict] = raw["curriculum"]["stages"]
    tps = sorted({stage_tokens_per_step(st) for st in stages})
    return ("→".join(str(st["seq_len"]) for st in stages) + ", "
            + "/".join(f"{t:,}" for t in tps) + " tokens/step")
