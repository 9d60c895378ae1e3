"""``gradus report``: the history read from metrics.jsonl (stages, resumed duplicates, interpolated
times, per-stage throughput), the smoothing, and the page: every picture a PNG inlined in one HTML file."""

from __future__ import annotations

import base64
import json
import re

import pytest

from gradus.cli import main
from gradus.report.history import read_history, smooth, stage_summary

pytest.importorskip("matplotlib")


def _write_metrics(run, with_sources: bool = True) -> None:
    recs = [{"event": "stage", "step": 0, "tokens": 0, "curriculum/stage": 0, "name": "s16", "seq_len": 16,
             "batch_size": 8}]
    for step in range(10, 101, 10):
        if step == 50:
            recs.append({"event": "stage", "step": 40, "tokens": 40 * 128, "curriculum/stage": 1, "name": "s32",
                         "seq_len": 32, "batch_size": 4})
        stage = 0 if step <= 40 else 1
        recs.append({"step": step, "tokens": step * 128, "loss": 8.0 - step / 20, "loss_avg": 8.1 - step / 20,
                     "lr": 1e-3, "tokens_per_sec": 1000.0 * (stage + 1) + step, "time/train_seconds": step * 2.0,
                     "curriculum/stage": stage, "curriculum/current_seq_len": 16 * (stage + 1),
                     "curriculum/current_batch_size": 8 // (stage + 1)})
        if step % 40 == 0 or step == 100:
            ev = {"step": step, "tokens": step * 128, "val/loss": 7.0 - step / 40, "val/seq_len": 32,
                  "val/stage_loss": 6.9 - step / 40, "val/stage_seq_len": 16 * (stage + 1)}
            if with_sources:
                ev.update({"val/prose/loss": 7.1 - step / 40, "val/math/loss": 6.5 - step / 40})
            recs.append(ev)
    recs.append({"event": "resume", "step": 80, "checkpoint": "step_00000080"})
    recs.append({"step": 90, "tokens": 90 * 128, "loss": 1.0, "lr": 1e-3, "time/train_seconds": 180.0,
                 "tokens_per_sec": 1990.0, "curriculum/stage": 1})  # the resumed step 90 replaces the first
    recs.append({"step": 100, "tokens": 100 * 128, "loss": 3.0, "loss_avg": 3.1, "lr": 1e-3,
                 "time/train_seconds": 200.0, "tokens_per_sec": 2100.0, "curriculum/stage": 1})
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 1')


def test_smooth_is_a_centred_window_without_lag():
    assert smooth([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 2.0, 3.0])  # half-width 1: a line stays a line
    assert smooth([1.0, 5.0, 3.0, 7.0, 5.0], 0.5) == pytest.approx([1.0, 3.0, 5.0, 5.0, 5.0])
    assert smooth([4.0, 2.0], 0.0) == [4.0, 2.0]
    # A loss falling steeply to the end: the smoothed end is the last value, not a lagging average above it.
    falling = [8.0 - 0.3 * i for i in range(20)]
    assert smooth(falling, 0.6)[-1] == falling[-1] and smooth(falling, 0.9) == pytest.approx(falling)


def test_history_reads_stages_resumes_and_times(tmp_path):
    _write_metrics(tmp_path / "run")
    h = read_history(tmp_path / "run")
    assert [r["step"] for r in h.steps] == list(range(10, 101, 10))
    assert h.steps[8]["loss"] == 1.0  # the later record of step 90 wins
    assert [(s.name, s.start_step, s.end_step, s.start_tokens) for s in h.stages] == [
        ("s16", 0, 40, 0.0), ("s32", 40, 100, 5120.0)]
    assert h.stages[1].start_seconds == 80.0 and h.stages[1].end_seconds == 200.0
    assert h.source_names() == ["prose", "math"]
    rows = stage_summary(h)
    assert rows[0]["tokens_per_sec"] == 1025.0  # median of 1010, 1020, 1030, 1040
    assert rows[1]["tokens_per_sec"] == 2065.0  # median of 2050 .. 2100 with 2090 replaced by 1990
    assert (rows[1]["steps"], rows[1]["seconds"], rows[1]["val_loss"]) == (60, 120.0, 4.5)


def test_report_writes_pngs_and_one_self_contained_page(tmp_path, capsys):
    _write_metrics(tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 0
    out = tmp_path / "run" / "report"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["loss_time.png", "loss_tokens.png", "schedule.png", "throughput.png", "val_lengths.png",
                    "val_sources.png"]
    page = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 6 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r'src="(?!data:)', page)  # nothing outside the file
    assert "<td>s32</td><td>32</td><td>4</td><td>60</td>" in page
    assert "best validation loss</th><td>4.5000 at step 100" in page
    assert "wrote" in capsys.readouterr().out


def test_report_without_per_source_validation_says_so(tmp_path):
    _write_metrics(tmp_path / "run", with_sources=False)
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "r")]) == 0
    assert not (tmp_path / "r" / "val_sources.png").exists()
    assert "No per-source validation losses" in (tmp_path / "r" / "report.html").read_text()


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["report", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics.jsonl (not a gradus run)" in err[0]
    assert list((tmp_path / "x").iterdir()) == []
    _write_metrics(tmp_path / "run")
    assert main(["report", str(tmp_path / "run"), "--smooth", "1.0"]) == 2
    assert "--smooth=1.0: must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "report").exists()


def test_a_run_whose_length_is_not_a_multiple_of_log_every_is_reported_to_its_end(tmp_path, tokenizer_json,
                                                                                 offline_data, capsys):
    """16 steps at log_every 5: the last window (step 16) is logged too, so the report's steps, tokens and final
    loss reach the run's real end instead of stopping at step 15."""
    from builders import tiny_config

    from gradus.config import from_dict
    from gradus.train.trainer import train

    cfg = tiny_config(offline_data, tokenizer_json)
    cfg["train"].update({"eval_every": 100, "early_stopping_patience": None})
    cfg["logging"]["log_every"] = 5
    result = train(from_dict(cfg), tmp_path / "run", quiet=True)
    assert result.step == 16
    h = read_history(tmp_path / "run")
    assert [r["step"] for r in h.steps] == [5, 10, 15, 16]
    assert h.steps[-1]["tokens"] == result.tokens == 16 * 256
    assert h.stages[-1].end_step == 16
    assert main(["report", str(tmp_path / "run")]) == 0


def test_a_run_that_measured_the_noise_scale_gets_its_chart(tmp_path):
    _write_metrics(tmp_path / "run")
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[:-1]]
    for r in recs:
        if "loss" in r:
            r.update({"gns/b_simple": 100.0 + r["step"], "curriculum/tokens_per_step": 128})
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / "report" / "report.html").read_text()
    assert (tmp_path / "run" / "report" / "noise_scale.png").stat().st_size > 5_000
    assert "Gradient noise scale" in page
    # A run without the measurement has no such chart.
    _write_metrics(tmp_path / "plain")
    assert main(["report", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "report" / "noise_scale.png").exists()


def test_without_matplotlib_the_report_is_one_line_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    import sys

    _write_metrics(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert main(["report", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs matplotlib" in err and "pip install matplotlib" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "report").exists()


def test_a_report_that_fails_while_drawing_removes_the_folder_it_made(tmp_path, monkeypatch):
    from gradus.report import page

    _write_metrics(tmp_path / "run")

    def fail(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(page, "write_pngs", fail)
    with pytest.raises(OSError):
        page.write_report(tmp_path / "run")
    assert not (tmp_path / "run" / "report").exists()
    (tmp_path / "mine").mkdir()  # a folder the user gave, which existed before: kept
    with pytest.raises(OSError):
        page.write_report(tmp_path / "run", tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()


def test_a_finished_train_says_what_to_do_next(tmp_path):
    from gradus.commands.train import finished_lines

    _write_metrics(tmp_path / "run")
    lines = finished_lines(tmp_path / "run")
    assert lines[0].startswith(f"report: {tmp_path / 'run' / 'report' / 'report.html'} (6 pictures")
    assert [ln.split("gradus ")[1].split()[0] for ln in lines[1:]] == ["generate", "eval", "export"]
    lines = finished_lines(tmp_path / "other", report=True)  # no metrics: the report is said, not a traceback
    assert lines[0].startswith("report: not written (") and "no metrics.jsonl" in lines[0]
    assert lines[0].endswith(f"; gradus report {tmp_path / 'other'} writes it")
    assert not (tmp_path / "other").exists()
    assert finished_lines(tmp_path / "run", report=False)[0].startswith(f"report: gradus report {tmp_path / 'run'} ")


def test_report_out_that_is_a_file_is_one_line_and_the_file_is_kept(tmp_path, capsys):
    _write_metrics(tmp_path / "run")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n", encoding="utf-8")
    assert main(["report", str(tmp_path / "run"), "--out", str(a_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {a_file}: cannot make the folder" in err[0], err
    assert a_file.read_text(encoding="utf-8") == "mine\n"
