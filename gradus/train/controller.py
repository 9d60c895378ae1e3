"""The adaptive controller: the run part that turns what the run measures into stage decisions (issue 30).

Two rules, both from ``curriculum.adaptive`` (``../shared/research/adaptive-stages.md`` has the sources):

* **batch**: at every check (each ``check_every_tokens``), the smoothed gradient noise scale B_simple (in
  tokens, :mod:`gradus.train.noise_scale`) is compared with ``rho`` × the tokens per step; after ``patience``
  checks in a row above it, tokens per step × 2 is proposed, only in the wsd schedule's stable phase and up
  to ``max_tokens_per_step``. With ``verify`` the proposal is tested first (Merrill et al. 2025's branch):
  the trainer snapshots every part, trains a branch of ``fraction`` × the target tokens at the proposed
  batch (each branch step is the main run's next two batches joined), restores everything, and the main run
  trains the same tokens (the same documents, in the same order) at the current batch; the proposal is
  accepted when, at the window's end, the branch's model is no worse than the main run's on the same held-out
  rows (within ``z`` standard errors of the row-by-row difference; :meth:`AdaptiveController._conclude` says
  why not the training loss), and then takes effect where the main run is. A rejection raises
  the threshold to twice what the noise scale read at the rejected proposal, in batches (the run calibrates
  the noise scale against its own probe).
* **length**: at every evaluation, the reference-length validation loss gained per doubling of compute
  (reference-token equivalents, :func:`gradus.curriculum.adaptive.compute_at`), fitted over the last
  ``window`` evaluations (:func:`gain_per_doubling`), is compared with what the current length gained in its
  first window; after ``patience`` evaluations whose gain, plus ``z`` standard errors, stays below
  ``threshold`` of it, the next (longer) stage begins now instead of at the table's boundary.

An accepted decision is an :class:`~gradus.curriculum.adaptive.Edit`; the run's schedule is
:func:`~gradus.curriculum.adaptive.adapted_schedule` (config, edits), a pure function, so the checkpoint
carries only the edits, the counters and a pending verification (:meth:`state_dict`), and a run resumed
anywhere decides exactly as the uninterrupted one. Every decision (accepted or rejected) is a record in
``decisions.jsonl``, rewritten from this state so that a resume or rollback never leaves a decision the
run no longer made. Decisions are taken only at sync points (:meth:`due` adds its checks to them), where
every earlier step's figures have been read.

Torch-free on purpose: the trainer runs the branch and hands the controller plain numbers.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradus.config import GradusConfig
from gradus.curriculum import Schedule, StageState
from gradus.curriculum.adaptive import (
    Edit,
    adapted_schedule,
    batch_rule_on,
    compute_at,
    length_critical_value,
    max_tokens_per_step,
    next_longer,
    stable_phase,
)
from gradus.train.cadence import crossed_multiple


@dataclass(frozen=True)
class Branch:
    """A proposal to verify: train from the current position at ``schedule`` until the token counter reaches
    ``until``, report each step's (tokens after it, loss) to :meth:`AdaptiveController.branch_done`."""

    schedule: Schedule
    until: int


class AdaptiveController:
    """Decides stage switches from the run's own signals; a Stateful run part (``state.pt``'s ``adaptive``).

    ``cost(seq_len)``: FLOPs of a token at ``seq_len`` relative to the reference length (the length rule's
    compute). ``publish(records)``: writes the decision records (decisions.jsonl; rank 0), called whenever
    they change, including on restore."""

    def __init__(self, cfg: GradusConfig, base: Schedule, cost: Callable[[int], float],
                 publish: Callable[[list[dict]], None] | None = None, world_size: int = 1):
        adaptive = cfg.curriculum.adaptive
        assert adaptive is not None, "AdaptiveController needs curriculum.adaptive"
        self.cfg, self.base, self.cost, self.publish = cfg, base, cost, publish
        self.batch_cfg, self.length_cfg = adaptive.batch, adaptive.length
        self.batch_on = bool(batch_rule_on(cfg, world_size))  # (auto: on over two processes or more)
        self.length_crit = length_critical_value(self.length_cfg.z, self.length_cfg.window, self.length_cfg.interval)
        target = base.target_tokens or base.total_tokens
        self.check_every = int(adaptive.check_every_tokens or max(1, target // 64))
        self.max_tokens_per_step = max_tokens_per_step(cfg, base)
        self.edits: list[Edit] = []
        self.records: list[dict] = []
        self.schedule = adapted_schedule(cfg, (), base)
        self._fresh()

    def _fresh(self) -> None:
        self.batch_checks = 0  # consecutive batch checks above the threshold
        self.last_skip: str | None = None  # why the last proposal was skipped (recorded once per reason)
        # Each rejected verification raises the threshold from then on: the noise scale proposed a batch the run
        # itself measured as worse, so it is calibrated against that probe (adaptive-stages.md, pitfall 6) and
        # the next branch is paid for only when the noise scale reads twice what it read there (see _conclude).
        self.rho_scale = 1.0
        self.length: dict[str, Any] = {"seq_len": None, "points": [], "first_gain": None, "below": 0}
        self.pending: dict[str, Any] | None = None  # a batch proposal under verification
        self.branch_tokens = 0  # tokens trained in branches (thrown away), for the record
        # The closest each rule came to deciding, for the end-of-run line (:meth:`summary`): the highest noise
        # scale over the threshold at a counted batch check, the lowest length gain ratio (with its noise).
        self.closest: dict[str, float | None] = {"batch": None, "length": None}

    # ------------------------------------------------------------------------------------------- when
    def due(self, tokens: int, step_tokens: int) -> bool:
        """Whether the step just counted (``tokens`` so far, ``step_tokens`` of them in it) is a check: a batch
        check on the cadence, or the end of a verification window. The trainer reads the step's figures at
        once there (a sync point)."""
        if self.batch_on and crossed_multiple(tokens, step_tokens, self.check_every):
            return True
        return self.pending is not None and self.pending["branch"] is not None and tokens >= self.pending["until"]

    # ------------------------------------------------------------------------------------- observing
    def observe_step(self, tokens: int, loss: float) -> None:
        """Each main-run step's loss, in step order (``tokens``: the counter after it): the main side of a
        verification window."""
        p = self.pending
        if p is not None and p["branch"] is not None and p["start"] < tokens <= p["until"]:
            p["main"].append([tokens, loss])

    def concluding(self, tokens: int) -> bool:
        """Whether the step that brought the counter to ``tokens`` ends a verification window: the trainer then
        evaluates the main run on the held-out rows for :meth:`after_step`'s ``held_out``."""
        p = self.pending
        return p is not None and p["branch"] is not None and tokens >= p["until"]

    def after_step(self, step: int, tokens: int, state: StageState, b_simple: float | None, samples: int,
                   val_loss: float | None, held_out: list[list[float]] | None = None) -> Branch | None:
        """Decide after the step just counted (``step`` steps, ``tokens`` tokens done; ``state``: the step's
        curriculum state), given the smoothed noise scale in tokens and its sample count, the reference
        validation loss when this step was evaluated, and, where :meth:`concluding`, the main run's held-out rows
        ([loss sum, tokens] each). Returns a :class:`Branch` for the trainer to run when a proposal needs
        verifying; :attr:`schedule` holds any change."""
        concluded = self.concluding(tokens)
        if concluded:
            self._conclude(step, tokens, state, held_out)
        edits = len(self.edits)
        if val_loss is not None and self.length_cfg.enabled:
            self._length_rule(step, tokens, state, val_loss)
        # A step that reached a verdict or switched the length leaves the batch check to the next one: ``state`` and
        # the noise scale still describe the table before it, so a check here would count a stale reading towards
        # the next proposal (or record a skip for a window that no longer applies).
        if (self.batch_on and self.pending is None and not concluded and len(self.edits) == edits
                and crossed_multiple(tokens, state.tokens_per_step, self.check_every)):
            return self._batch_rule(step, tokens, state, b_simple, samples)
        return None

    # ------------------------------------------------------------------------------------------- batch
    def _batch_rule(self, step: int, tokens: int, state: StageState, b_simple: float | None,
                    samples: int) -> Branch | None:
        cfg, tps = self.batch_cfg, state.tokens_per_step
        if b_simple is None or not math.isfinite(b_simple) or samples < cfg.min_samples:
            return None  # too few samples since the last change: the check does not count either way
        rho = cfg.rho * self.rho_scale
        self._closest("batch", b_simple / (rho * tps), max)
        self.batch_checks = self.batch_checks + 1 if b_simple > rho * tps else 0
        if self.batch_checks < cfg.patience:
            return None
        signal = {"b_simple": b_simple, "tokens_per_step": tps, "rho": rho, "checks": self.batch_checks}
        why = self._batch_blocked(tokens, state, self._window(tps) if cfg.verify.enabled else 0)
        if why is not None:
            self.batch_checks = 0
            if why != self.last_skip:  # said once per reason, not at every check that meets it again
                self.last_skip = why
                self._record(step, tokens, "batch", signal, None, "skipped", reason=why)
            return None
        self.batch_checks = 0
        proposal = {"tokens_per_step": 2 * tps, "lr_factor": 2 ** cfg.alpha}
        edit = Edit("batch", tokens, 2)
        if not cfg.verify.enabled:
            self._accept(step, tokens, edit, signal, proposal, verdict="accepted")
            return None
        window = self._window(tps)
        self.pending = {"step": step, "start": tokens, "until": tokens + window, "signal": signal,
                        "proposal": proposal, "branch": None, "main": []}
        return Branch(adapted_schedule(self.cfg, [*self.edits, edit], self.base), tokens + window)

    def _window(self, tps: int) -> int:
        """Tokens of a verification window: the configured share of the run, a whole number of the branch's
        steps (2 × tps) and at least four of them, so each half holds two steps of each side."""
        target = self.base.target_tokens or self.base.total_tokens
        big = 2 * tps
        return max(4, math.ceil(self.batch_cfg.verify.fraction * target / big)) * big

    def _batch_blocked(self, tokens: int, state: StageState, window: int) -> str | None:
        """Why tokens per step cannot double at ``tokens`` with ``window`` tokens of verification still to come,
        or None."""
        if 2 * state.tokens_per_step > self.max_tokens_per_step:
            return (f"{2 * state.tokens_per_step:,} tokens per step would pass max_tokens_per_step "
                    f"{self.max_tokens_per_step:,}")
        start, end = stable_phase(self.schedule)
        if tokens < start or tokens + window > end:
            return "outside the stable phase: a batch grows only between the warmup and the cooldown"
        # A doubling takes effect at the token counter it is decided at; at the stage's last token that is the next
        # stage, which the noise scale was not measured on: the window must end inside the stage.
        if tokens + window >= self.schedule.stages[state.stage_index].end_tokens:
            return ("the verification window would not end before the stage does" if window
                    else "the stage ends here, and a doubling would apply to the next one")
        return None

    def branch_done(self, losses: list[tuple[int, float]], held_out: list[list[float]] | None = None,
                    seq_len: int | None = None) -> None:
        """The branch's (tokens after each step, loss), and its held-out rows ([loss sum, tokens] each, at
        ``seq_len``) at the window's end, once the trainer has run it and put every part back."""
        assert self.pending is not None
        self.pending["branch"] = [[int(t), float(v)] for t, v in losses]
        self.pending["held_out"] = None if held_out is None else [[float(v), int(n)] for v, n in held_out]
        self.pending["held_out_seq_len"] = seq_len
        if losses:
            self.branch_tokens += int(losses[-1][0]) - int(self.pending["start"])

    def _conclude(self, step: int, tokens: int, state: StageState, held_out: list[list[float]] | None) -> None:
        """The verdict on the pending proposal, at the end of its window (``held_out``: the main run's rows).

        Compared: the loss of the branch's model and of the main run's, both at the window's end (equal
        tokens), on the same held-out rows at the stage's length; accepted when the branch's is no higher by
        more than ``z`` standard errors of the row-by-row difference. Not the training loss over the window
        (Merrill et al.'s comparison, the rule before 2026-12-07): with ``data.packing.lanes`` each row of a
        batch continues its document in the next, so the run at the smaller batch has always just taken a step
        on the text before what it predicts, a step of its own where the branch shares one between two
        batches. That adaptation to the documents in hand lowers the training loss but not the held-out loss
        (dynamic evaluation): on code at 1M tokens five doublings read 0.04–0.20 behind in training loss on the
        same batches while their held-out loss was 0.035 ahead to 0.026 behind (BENCHMARKS.md, issue 30), and runs
        that accepted them ended within 0.02 of the runs that did not, in 5–20% fewer steps. The training-loss comparison
        stays in the record (``joined_branch_loss``, ``every_main_loss``). A pending branch from a checkpoint
        written before (no held-out rows) is judged as it was then."""
        p = self.pending
        assert p is not None
        half = p["start"] + (p["until"] - p["start"]) / 2
        verdict, reason = "rejected", None
        comparison: dict[str, Any] = {"branch_tokens": p["until"] - p["start"]}
        joined = [v for t, v in p["branch"] if t > half]
        every = [v for t, v in p["main"] if t > half]
        if p.get("held_out") is not None and held_out is not None and not (p["held_out"] and held_out):
            reason = ("no held-out rows to compare on: hold out documents (data.validation) or set "
                      "curriculum.adaptive.batch.verify.enabled: false")
        elif p.get("held_out") is not None and held_out is not None:
            pairs = [(bs / bn, ms / mn) for (bs, bn), (ms, mn) in zip(p["held_out"], held_out, strict=True)
                     if bn > 0 and mn > 0]
            mb = sum(v for v, _ in p["held_out"]) / max(1, sum(n for _, n in p["held_out"]))
            mm = sum(v for v, _ in held_out) / max(1, sum(n for _, n in held_out))
            diffs = [b - m for b, m in pairs]
            margin = self.batch_cfg.verify.z * math.sqrt(_var(diffs) / len(diffs)) if len(diffs) >= 2 else 0.0
            comparison.update(branch_loss=mb, main_loss=mm, margin=margin, held_out_rows=len(pairs),
                              held_out_seq_len=p.get("held_out_seq_len"))
            verdict = "accepted" if mb <= mm + margin else "rejected"
            if joined and every:  # for the record: the biased comparison (above)
                comparison.update(joined_branch_loss=_mean(joined), every_main_loss=_mean(every))
        elif len(joined) >= 2 and len(every) >= 2:
            mb, mm = _mean(joined), _mean(every)
            se = math.sqrt(_var(joined) / len(joined) + _var(every) / len(every))
            margin = self.batch_cfg.verify.z * se
            comparison.update(branch_loss=mb, main_loss=mm, margin=margin)
            verdict = "accepted" if mb <= mm + margin else "rejected"
        self.pending = None
        edit = Edit("batch", tokens, 2)
        late = self._batch_blocked(tokens, state, 0) if verdict == "accepted" else None
        if late is not None:  # the window ran into the cooldown: too late to grow
            verdict, comparison["late"] = "rejected", late
        if verdict == "accepted":
            self._accept(step, tokens, edit, p["signal"], p["proposal"], verdict, comparison, proposed_at=p["step"])
        else:
            # The probe said B_simple = `read` × the batch does not pay here. Merely doubling rho let the next
            # proposal come at the same reading once the table had doubled the batch (the 1.3M benchmark: two
            # branches at 18× the batch, both behind, though by the training-loss verdict of the time), so the
            # next branch waits for twice that reading (above the threshold that fired, so at least twice it).
            read = p["signal"]["b_simple"] / p["signal"]["tokens_per_step"]
            self.rho_scale = 2.0 * read / self.batch_cfg.rho
            comparison["rho_from_now"] = self.batch_cfg.rho * self.rho_scale
            self._record(step, tokens, "batch", p["signal"], p["proposal"], verdict, comparison=comparison,
                         proposed_at=p["step"], reason=reason)

    # ------------------------------------------------------------------------------------------ length
    def _length_rule(self, step: int, tokens: int, state: StageState, val_loss: float) -> None:
        cfg, track = self.length_cfg, self.length
        if track["seq_len"] != state.seq_len:  # a new length: its own first gain
            track.update(seq_len=state.seq_len, points=[], first_gain=None, below=0)
        compute = compute_at(self.schedule, tokens, self.cost)
        points = track["points"]
        points.append([compute, val_loss])
        fitted = gain_per_doubling(points[-cfg.window:]) if len(points) >= cfg.window else None
        if fitted is None:
            return
        gain, se = fitted
        if track["first_gain"] is None:
            if gain > 0:
                track["first_gain"] = gain
            return
        ratio = gain / track["first_gain"]
        upper = (gain + self.length_crit * se) / track["first_gain"]  # the gain's ratio, given the benefit of its noise
        self._closest("length", upper / cfg.threshold, min)
        track["below"] = track["below"] + 1 if upper < cfg.threshold else 0
        nxt = next_longer(self.schedule, state.stage_index)
        if track["below"] < cfg.patience or nxt is None or tokens >= self.schedule.stages[state.stage_index].end_tokens:
            return
        if self.pending is not None:  # a batch verification runs on this stage's data: the switch waits for its end
            return
        signal = {"gain_per_doubling": gain, "gain_se": se, "first_gain": track["first_gain"], "ratio": ratio,
                  "ratio_upper": upper, "threshold": cfg.threshold, "evaluations": track["below"],
                  "window": cfg.window, "critical_value": self.length_crit, "val_loss": val_loss}
        proposal = {"seq_len": nxt.seq_len, "planned_at_tokens": nxt.start_tokens}
        self._accept(step, tokens, Edit("length", tokens), signal, proposal, verdict="accepted")

    # ----------------------------------------------------------------------------------------- records
    def _accept(self, step: int, tokens: int, edit: Edit, signal: dict, proposal: dict, verdict: str,
                comparison: dict | None = None, proposed_at: int | None = None) -> None:
        self.edits.append(edit)
        self.schedule = adapted_schedule(self.cfg, self.edits, self.base)
        self.batch_checks, self.last_skip = 0, None
        self._record(step, tokens, edit.kind, signal, proposal, verdict, comparison=comparison,
                     proposed_at=proposed_at, edit=edit)

    def _record(self, step: int, tokens: int, kind: str, signal: dict, proposal: dict | None, verdict: str, *,
                comparison: dict | None = None, proposed_at: int | None = None, edit: Edit | None = None,
                reason: str | None = None) -> None:
        record: dict[str, Any] = {"step": step, "tokens": tokens, "kind": kind, "verdict": verdict, "signal": signal,
                                  "proposal": proposal, "branch_tokens_total": self.branch_tokens}
        for key, value in (("comparison", comparison), ("proposed_at_step", proposed_at), ("reason", reason),
                           ("edit", edit.to_json() if edit else None)):
            if value is not None:
                record[key] = value
        self.records.append(record)
        if self.publish is not None:
            self.publish(self.records)

    def _closest(self, rule: str, value: float, better: Callable[[float, float], float]) -> None:
        if math.isfinite(value):
            held = self.closest[rule]
            self.closest[rule] = value if held is None else better(held, value)

    def summary(self) -> str:
        """One line for the end of a run: the decisions made, or, when none, how close each rule came (a user
        whose adaptive run followed the table should see why, not nothing)."""
        made = [r for r in self.records if r.get("edit")]
        rejected = sum(1 for r in self.records if r["verdict"] == "rejected")
        if made or rejected:
            kinds = {k: sum(1 for r in made if r["kind"] == k) for k in ("batch", "length")}
            return (f"adaptive: {len(made)} decision(s) ({kinds['batch']} batch, {kinds['length']} length), "
                    f"{rejected} proposal(s) rejected by their branch, {self.branch_tokens:,} branch tokens; "
                    "decisions.jsonl has each")
        parts = []
        if self.batch_on:
            peak = self.closest["batch"]
            parts.append("the batch rule never counted a check (too few noise-scale samples per stage)" if peak is None
                         else f"the noise scale peaked at {peak:.2f}× its threshold (rho × tokens per step) at a check")
        if self.length_cfg.enabled:
            low = self.closest["length"]
            # The lowest ratio can come from the last stage, where no longer length is left to begin.
            parts.append("the length rule never had a stage's first gain to compare with" if low is None else
                         f"the length gain stayed above its threshold (at least {low:.2f}× it, with its noise)"
                         if low >= 1 else
                         f"the length gain fell to {low:.2f}× its threshold (with its noise), but not for "
                         f"{self.length_cfg.patience} evaluations in a row where a longer length was left to begin")
        return "adaptive: no decision, the run followed its table: " + "; ".join(parts or ["both rules off"])

    @property
    def latest(self) -> dict | None:
        """The newest decision record, or None."""
        return self.records[-1] if self.records else None

    def metrics(self, tokens_per_step: int | None = None) -> dict[str, float]:
        """``adaptive/...`` figures of a step record: decisions accepted so far and branch tokens and, given the
        step's tokens per step, the noise scale the batch rule asks for there (rho, raised by each rejection,
        × tokens per step: ``gradus report`` draws it beside the noise scale)."""
        out = {"adaptive/edits": len(self.edits), "adaptive/branch_tokens": self.branch_tokens}
        if tokens_per_step and self.batch_on:
            out["adaptive/batch_threshold"] = self.batch_cfg.rho * self.rho_scale * tokens_per_step
        return out

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Edits, records, counters and a pending verification, as plain data."""
        return json.loads(json.dumps({
            "edits": [e.to_json() for e in self.edits], "records": self.records, "batch_checks": self.batch_checks,
            "last_skip": self.last_skip, "rho_scale": self.rho_scale,
            "length": self.length, "pending": self.pending, "branch_tokens": self.branch_tokens,
            "closest": self.closest}))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Back to :meth:`state_dict`: the schedule is rebuilt from the edits, decisions.jsonl rewritten."""
        state = json.loads(json.dumps(state))  # a copy: a snapshot restored twice stays intact
        self.edits = [Edit.from_json(e) for e in state["edits"]]
        self.records = list(state["records"])
        self.batch_checks = int(state["batch_checks"])
        self.last_skip = state.get("last_skip")
        self.rho_scale = float(state.get("rho_scale", 1.0))
        self.length = dict(state["length"])
        self.pending = state["pending"]
        self.branch_tokens = int(state["branch_tokens"])
        self.closest = dict(state.get("closest") or {"batch": None, "length": None})  # (older checkpoints: none)
        self.schedule = adapted_schedule(self.cfg, self.edits, self.base)
        if self.publish is not None:
            self.publish(self.records)

    def reset(self) -> None:
        """No decisions (a checkpoint written without the controller: ``--allow-config-change``)."""
        self.edits, self.records = [], []
        self.schedule = adapted_schedule(self.cfg, (), self.base)
        self._fresh()
        if self.publish is not None:
            self.publish(self.records)


def gain_per_doubling(points: list[list[float]]) -> tuple[float, float] | None:
    """(gain, standard error) of validation loss per doubling of compute over ``points`` ([compute, loss], in
    order): minus the slope of the least-squares line of loss against log2(compute), and the slope's standard
    error from the residuals (0 for two points, which fit exactly). None when compute does not increase."""
    if points[0][0] <= 0 or any(b[0] <= a[0] for a, b in itertools.pairwise(points)):
        return None
    xs = [math.log2(c) for c, _ in points]
    ys = [v for _, v in points]
    mx, my = _mean(xs), _mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if len(points) <= 2:
        return -slope, 0.0
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    return -slope, math.sqrt(residual / (len(points) - 2) / sxx)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _var(values: list[float]) -> float:
    m = _mean(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)
