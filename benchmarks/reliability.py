"""Reliability figures (issue 17): each case must end well, and the script prints N/N per family.

* ``faults``: NaN/Inf/spike injected (``GRADUS_FAULTS``) through the real step: the run completes, or stops
  with its one line and exit code 3.
* ``save``: a save that fails or is SIGKILLed at each named point inside it: the run dir's checkpoints still
  load (a fresh ``gradus train --out`` resumes to the end), no ``.tmp-*`` is left listed.
* ``bad_input``: bad config values, flags, data files and run directories: one ``gradus: error:`` line, the
  documented exit code, and nothing saved earlier changed.
* ``kills`` (``--kills N``, not in ``--quick``): SIGKILL at N random wall-clock points, then resume:
  final weights and per-step losses identical to an uninterrupted run.

``python benchmarks/reliability.py --config tiny.yaml [--quick] [--kills 20]``; the test suite runs
``--quick``. Exit 0 only when every figure is N/N.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def gradus(args: list[str], faults: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``gradus`` in a fresh process (so SIGKILL faults kill only it)."""
    env = dict(ENV)
    env.pop("GRADUS_FAULTS", None)
    if faults:
        env["GRADUS_FAULTS"] = faults
    return subprocess.run([sys.executable, "-m", "gradus.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line(proc: subprocess.CompletedProcess, code: int) -> bool:
    """Ended with ``code`` and exactly one error line, no traceback."""
    err = proc.stderr.strip().splitlines()
    return (proc.returncode == code and len([e for e in err if e.startswith("gradus: error:")]) == 1
            and "Traceback" not in proc.stderr)


def snapshot(run: Path) -> dict[str, str]:
    """Hashes of everything under ``run/checkpoints``: what a failing command must leave unchanged."""
    ck = run / "checkpoints"
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ck.rglob("*")) if p.is_file()} if ck.is_dir() else {}


def losses(run: Path) -> dict[int, float]:
    """Per-step losses of a run's metrics.jsonl (each step once, as resumes guarantee)."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r and "event" not in r:
            out[r["step"]] = r["loss"]
    return out


def final_weights(run: Path) -> str:
    """Hash of the newest checkpoint's weights."""
    last = sorted((run / "checkpoints").glob("step_*"))[-1]
    return hashlib.sha256((last / "model.safetensors").read_bytes()).hexdigest()


def faults_family(cfg: Path, tmp: Path, quick: bool = False) -> list[bool]:
    """NaN/Inf/spike injection: completes (exit 0) or stops with one line (exit 3)."""
    cases = [("nan@5#1", 0), ("inf@7#1", 0), ("spike@9x100", 0), ("nan@9#1,inf@10#1", 0), ("nan@2,nan@3,nan@4", 3),
             ("nan@9,nan@10,nan@11", 3)]
    if quick:
        cases = [("nan@2,nan@3,nan@4", 3)]
    ok = []
    for i, (spec, code) in enumerate(cases):
        proc = gradus(["train", str(cfg), "--out", str(tmp / f"f{i}"), "--quiet"], faults=spec)
        ok.append(proc.returncode == 0 if code == 0 else one_line(proc, code))
        if not ok[-1]:
            print(f"  failed: {spec}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}", file=sys.stderr)
    for i, spec in enumerate(["nan@9,nan@10,nan@11", "nan@6,inf@7,nan@8"][: 1 if quick else 2]):  # skip mode
        proc = gradus(["train", str(cfg), "--out", str(tmp / f"s{i}"), "--quiet", "--set",
                       "train.guard.skip_bad_batches=true"], faults=spec)
        ok.append(proc.returncode == 0)
        if not ok[-1]:
            print(f"  failed: {spec} (skip_bad_batches): exit {proc.returncode}: {proc.stderr.strip()[-300:]}",
                  file=sys.stderr)
    return ok


def save_family(cfg: Path, tmp: Path, quick: bool = False) -> list[bool]:
    """A failing or killed save at each point: the run resumes from what is on disk and finishes."""
    ok = []
    points = ("before_model", "after_model", "after_optimizer", "after_state", "before_rename")
    cases = [(k, p) for k in ("save_fail", "save_error", "kill") for p in points]
    for kind, point in cases[:: 7] if quick else cases:
        run = tmp / f"{kind}-{point}"
        # The second save fails (the first, at step 4, succeeds): a checkpoint to keep exists.
        first = gradus(["train", str(cfg), "--out", str(run), "--quiet", "--stop-at-step", "4"])
        before = snapshot(run)
        proc = gradus(["train", "--out", str(run), "--quiet"], faults=f"{kind}@{point}#1")
        failed_well = (proc.returncode == -9) if kind == "kill" else one_line(proc, 2)
        kept = all(snapshot(run).get(k) == v for k, v in before.items())
        resumed = gradus(["train", "--out", str(run), "--quiet"])
        ok.append(first.returncode == 0 and failed_well and kept and resumed.returncode == 0
                  and not list((run / "checkpoints").glob(".tmp-*")))
    return ok


def bad_input_family(cfg: Path, tmp: Path) -> list[bool]:
    """Bad input of every kind: one line, exit 2, nothing saved earlier changed."""
    run = tmp / "good"
    gradus(["train", str(cfg), "--out", str(run), "--quiet", "--stop-at-step", "4"])
    before = snapshot(run)
    sets = ["optim.base_lr=.inf", "optim.base_lr=nan", "=5", "model.vocab_size=100", "train.keep_last=0",
            "optim.base_lr=-1", "train.max_steps=abc", "curriculum.stages[9].seq_len=3", "model.nope=1",
            "train.precision=fp4", "train.device=tpu", "data.sources[0].path=/nonexistent/x.jsonl"]
    cases: list[list[str]] = [["train", str(cfg), "--set", s, "--out", str(tmp / "new"), "--quiet"] for s in sets]
    cases += [
        ["train", str(cfg), "--config", str(tmp / "other.yaml"), "--out", str(tmp / "new")],
        ["train", str(tmp / "missing.yaml"), "--out", str(tmp / "new")],
        ["train", "--preset", "no-such-preset", "--out", str(tmp / "new")],
        ["train", str(cfg), "--preset", "demo", "--out", str(tmp / "new")],
        ["train", str(cfg), "--stop-at-step", "0", "--out", str(tmp / "new")],
        ["train", "--resume", "--out", str(tmp / "empty")],
        ["train", str(cfg), "--out", "/proc/gradus-cannot-write-here"],
        ["train", "--out", str(run), "--set", "curriculum.target_tokens=99999999"],
    ]
    ok = []
    for args in cases:
        proc = gradus(args)
        ok.append(one_line(proc, 2) and snapshot(run) == before)
        if not ok[-1]:  # name the case that failed, with the end of what it printed
            print(f"  failed: {' '.join(args[1:])}: exit {proc.returncode}: {proc.stderr.strip()[-200:]}",
                  file=sys.stderr)
    return ok


def kills_family(cfg: Path, tmp: Path, n: int, seed: int = 0) -> list[bool]:
    """SIGKILL at random wall-clock points, resume: identical final weights and per-step losses."""
    ref = tmp / "ref"
    gradus(["train", str(cfg), "--out", str(ref), "--quiet"])
    t0 = time.perf_counter()
    gradus(["train", str(cfg), "--out", str(tmp / "timing"), "--quiet"])
    span = time.perf_counter() - t0
    rng = random.Random(seed)
    ok = []
    for i in range(n):
        run = tmp / f"k{i}"
        proc = subprocess.Popen([sys.executable, "-m", "gradus.cli", "train", str(cfg), "--out", str(run), "--quiet"],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.95) * span)
        proc.kill()
        proc.wait()
        if not (run / "config.yaml").is_file():
            ok.append(gradus(["train", str(cfg), "--out", str(run), "--quiet"]).returncode == 0
                      and losses(run) == losses(ref) and final_weights(run) == final_weights(ref))
            continue
        done = gradus(["train", "--out", str(run), "--quiet"])
        ok.append(done.returncode == 0 and losses(run) == losses(ref) and final_weights(run) == final_weights(ref))
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the families, print N/N per family; exit 0 only when all pass."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a tiny training config (YAML)")
    p.add_argument("--quick", action="store_true", help="a few fault-injection and save cases only (the suite's)")
    p.add_argument("--kills", type=int, default=20, help="random SIGKILL points (not with --quick)")
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("--only", help="comma-separated families to run (faults,save,bad_input,kills)")
    args = p.parse_args(argv)
    raw = yaml.safe_load(Path(args.config).read_text())
    raw.setdefault("train", {}).update({"checkpoint_every": 4, "early_stopping_patience": None})
    figures = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = tmp / "config.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        (tmp / "other.yaml").write_text(yaml.safe_dump(raw))
        (tmp / "empty").mkdir()
        families = {"faults": faults_family, "save": save_family}
        if not args.quick:
            families["bad_input"] = bad_input_family
            families["kills"] = lambda c, t: kills_family(c, t, args.kills)
        if args.only:
            families = {"faults": faults_family, "save": save_family, "bad_input": bad_input_family,
                        "kills": lambda c, t: kills_family(c, t, args.kills)}
            families = {k: v for k, v in families.items() if k in args.only.split(",")}
        for name, fn in families.items():
            sub = tmp / name
            sub.mkdir()
            results = fn(cfg, sub, args.quick) if name in ("faults", "save") else fn(cfg, sub)
            figures[name] = {"passed": sum(results), "total": len(results)}
            print(f"{name:10s} {sum(results)}/{len(results)}", flush=True)
            shutil.rmtree(sub, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if all(f["passed"] == f["total"] for f in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
