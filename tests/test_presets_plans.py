"""Each preset against the plan it reproduces, cell for cell, through `gradus schedule --preset NAME --json`.

The expected numbers are typed in from the plans in ../shared/plans (see its README for which file is
which), never computed by the code under test. Where a figure is not the plan's own but derived from its
stated inputs (or chosen where the plan is silent), the assertion's comment says so and why. Assertions
that need a feature the engine lacks are marked ``xfail(strict=True)`` with the feature named.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from gradus.cli import main
from gradus.presets import load_preset
from gradus.sizes import GPT2_VOCAB_SIZE, resolve_shape

M, B = 1_000_000, 1_000_000_000


def schedule(name: str, *extra: str) -> dict:
    """What `gradus schedule --preset NAME --json` prints, parsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["schedule", "--preset", name, "--json", *extra])
    assert code == 0
    return json.loads(out.getvalue())


def column(report: dict, key: str) -> list:
    """One column of the stage table."""
    return [stage[key] for stage in report["stages"]]


def budgets(report: dict) -> list[int]:
    """Each token-budget stage's budget: the step between its switch threshold and the next (the last
    stage's runs to the target). The printed ``tokens`` are these rounded up to whole steps."""
    starts = column(report, "token_threshold")
    return [b - a for a, b in zip(starts, [*starts[1:], report["target_tokens"]], strict=True)]


def sig2(x: float) -> float:
    """Two significant digits, the plans' rounding (6.78e-3 → 6.8e-3)."""
    return float(f"{x:.2g}")


# ------------------------------------------------------------------- the streaming plan (003_84d7…)
STREAMING = [  # Stage, Name, Seq Len, Tokens, FineWeb %, Math %, Code %: the plan's table, row by row
    (1, "Basic Patterns", 8, 10 * M, 95, 5, 0),
    (2, "Sentences", 16, 20 * M, 95, 5, 0),
    (3, "Paragraphs", 32, 30 * M, 90, 8, 2),
    (4, "Extended Context", 64, 40 * M, 85, 10, 5),
    (5, "Reasoning Development", 128, 75 * M, 80, 12, 8),
    (6, "Complex Patterns", 256, 100 * M, 75, 15, 10),
    (7, "Integration", 512, 125 * M, 70, 18, 12),
    (8, "Deep Understanding", 768, 150 * M, 65, 20, 15),
    (9, "Expert Reasoning", 1536, 200 * M, 60, 22, 18),
    (10, "Final Polish", 2048, 250 * M, 55, 25, 20),
]


def test_streaming_1b_is_the_streaming_plans_table():
    report = schedule("streaming-1b")
    assert len(report["stages"]) == 10
    assert [s["index"] + 1 for s in report["stages"]] == [row[0] for row in STREAMING]
    assert column(report, "name") == [row[1] for row in STREAMING]
    assert column(report, "seq_len") == [row[2] for row in STREAMING]
    assert budgets(report) == [row[3] for row in STREAMING]
    # the printed tokens are the budgets rounded up to whole steps: equal at the plan's precision (1M)
    assert [round(t / M) * M for t in column(report, "tokens")] == [row[3] for row in STREAMING]
    mixes = [(round(m["fineweb"] * 100, 9), round(m["math"] * 100, 9), round(m["code"] * 100, 9))
             for m in column(report, "mix")]
    assert mixes == [row[4:] for row in STREAMING]
    assert report["target_tokens"] == 1 * B  # "Total: 1B tokens"
    assert report["sources"] == ["fineweb", "math", "code"]


def test_streaming_1b_batches_are_multiples_of_8():
    report = schedule("streaming-1b")
    batches = column(report, "batch_size")
    # Derived, not in the plan (which gives no batch sizes): the chosen 65,536 tokens per step over each
    # length, rounded to a multiple of 8 as the plan's notes require; 85.3 → 88 at 768, 42.7 → 40 at 1536.
    assert batches == [8192, 4096, 2048, 1024, 512, 256, 128, 88, 40, 32]
    assert all(b % 8 == 0 for b in batches)
    assert column(report, "tokens_per_step") == [65_536] * 7 + [67_584, 61_440, 65_536]


def test_streaming_1b_sources_model_and_stride():
    cfg = load_preset("streaming-1b")
    assert [(s.name, s.dataset) for s in cfg.data.sources] == [
        ("fineweb", "HuggingFaceFW/fineweb-edu"),
        ("math", "Yxanul/cc-math-finest"),
        ("code", "Yxanul/python-finest-pretrain"),
    ]
    assert cfg.model.preset == "270M"  # --model-size 270M
    assert cfg.data.packing.stride_fraction == 0.5  # "Dynamic stride (50% overlap)"
    assert cfg.data.packing.mode == "concat"  # "EOS tokens between documents"
    assert schedule("streaming-1b")["base_lr"] == 6.0e-4  # the progress line's LR=6.00e-04


# ------------------------------------------------------------- the optimization plan (000_e1cb…)
def test_aggressive_is_the_optimization_plans_aggressive_curriculum():
    report = schedule("aggressive")
    assert column(report, "start_step") == [0, 2000, 5000, 10_000, 20_000, 40_000]
    assert column(report, "seq_len") == [64, 128, 256, 512, 1024, 2048]
    assert column(report, "batch_size") == [512, 256, 128, 64, 32, 16]
    assert column(report, "tokens_per_step") == [32_768] * 6  # "# 32,768 tokens/batch" on every line
    # the plan's LR rule, lr = 6e-4 × (batch × seq_len / 32,768): 6e-4 in every stage
    assert column(report, "peak_lr") == [6e-4] * 6
    # its warmup rule min(2000, 0.1 × steps to the next stage): 0.1 × 2,000 / 3,000 / 5,000 / 10,000 /
    # 20,000, and the last stage's 60,000 steps (to the chosen end at 100k) capped at 2,000
    assert column(report, "warmup_steps") == [200, 300, 500, 1000, 2000, 2000]
    # chosen, not in the plan: the run ends at step 100,000
    assert report["total_steps"] == 100_000 and report["target_tokens"] == 3_276_800_000
    assert not report["warnings"]


def test_hybrid_1024_is_the_optimization_plans_two_phases():
    report = schedule("hybrid-1024")
    # phase 1, the plan's table (max length 1024)
    assert column(report, "start_step")[:5] == [0, 5000, 10_000, 20_000, 40_000]
    assert column(report, "seq_len") == [64, 128, 256, 512, 1024, 2048]
    assert column(report, "batch_size")[:5] == [256, 128, 64, 32, 16]
    assert [n.split("-")[0] for n in column(report, "name")] == ["phase1"] * 5 + ["phase2"]
    # Derived: phase 1 is the quick start's "first 100k steps" and 80% of training, so phase 2 runs
    # 100k–125k; it keeps the constant 16,384 tokens per step (8 × 2048).
    assert column(report, "start_step")[5] == 100_000 and report["total_steps"] == 125_000
    assert column(report, "start_step")[5] / report["total_steps"] == 0.8
    assert column(report, "batch_size")[5] == 8
    assert column(report, "tokens_per_step") == [16_384] * 6
    assert report["target_tokens"] == 2_048_000_000  # 125,000 × 16,384
    # the plan's linear rule 6e-4 × 16,384 / 32,768 and its warmup rule min(2000, 0.1 × stage steps)
    assert column(report, "peak_lr") == [3e-4] * 6
    assert column(report, "warmup_steps") == [500, 500, 1000, 2000, 2000, 2000]


# ----------------------------------------------------------------------- the LR plan (001_8fd5…)
def test_lr_extreme_is_the_lr_plans_configuration():
    report = schedule("lr-extreme")
    assert report["base_lr"] == 6e-4
    assert column(report, "start_step") == [0, 2000, 4000, 8000, 20_000]
    assert column(report, "seq_len") == [64, 128, 256, 512, 1024]
    assert column(report, "batch_size") == [256, 128, 64, 32, 16]
    # lr_multiplier 11.3 / 7.0 / 3.5 / 1.5 / 0.7 with their "# 6.8e-3 effective" … comments
    assert column(report, "peak_lr") == pytest.approx([6.78e-3, 4.2e-3, 2.1e-3, 9e-4, 4.2e-4], rel=1e-12)
    assert [sig2(x) for x in column(report, "peak_lr")] == [6.8e-3, 4.2e-3, 2.1e-3, 9e-4, 4.2e-4]  # "Final LR"
    assert column(report, "warmup_steps") == [500, 300, 200, 100, 100]
    assert column(report, "grad_clip") == [5.0, 2.0, 1.0, 0.5, 0.3]
    assert column(report, "decay") == ["cosine"] * 5
    assert column(report, "min_lr_ratio") == [0.1] * 5  # "Min is 10% of stage peak"
    floors = [s["peak_lr"] * s["min_lr_ratio"] for s in report["stages"]]
    assert floors == pytest.approx([6.78e-4, 4.2e-4, 2.1e-4, 9e-5, 4.2e-5], rel=1e-12)
    # chosen, not in the plan ("20k+"): the last stage ends at step 30,000
    assert report["total_steps"] == 30_000 and report["target_tokens"] == 491_520_000


def test_lr_extreme_keeps_the_tables_factors_not_its_formula():
    """The plan's table: Seq Factor × Batch Factor = the multiplier. Its formula min(2048/seq_len, 4)
    gives 4 / 4 / 4 / 4 / 2 instead of the table's 4.0 / 3.5 / 2.5 / 1.5 / 1.0; the preset keeps the
    table (and the configuration's multipliers), not the formula."""
    table = [(4.0, 2.83), (3.5, 2.0), (2.5, 1.41), (1.5, 1.0), (1.0, 0.71)]
    multipliers = [s["peak_lr"] / 6e-4 for s in schedule("lr-extreme")["stages"]]
    assert multipliers == pytest.approx([seq * batch for seq, batch in table], rel=0.015)


# ----------------------------------------------------------------- the Wikipedia plan (002_d7ca…)
WIKIPEDIA = [  # step, seq_len, batch, LR ×base, examples, tokens (M, as printed in its timeline)
    (0, 64, 256, 11.3, 512_000, 32.8),
    (2000, 128, 128, 7.0, 256_000, 32.8),
    (4000, 256, 64, 3.5, 256_000, 65.5),
    (8000, 512, 32, 1.5, 128_000, 65.5),
    (12_000, 768, 21, 1.0, 126_000, 96.8),
    (18_000, 1024, 16, 0.7, 112_000, 114.7),
    (25_000, 1536, 10, 0.5, 100_000, 153.6),
    (35_000, 2048, 8, 0.4, 120_000, 245.8),
    (50_000, 2048, 8, 0.3, 400_000, 819.2),
]


def test_wikipedia_9stage_is_the_wikipedia_plans_table_and_timeline():
    report = schedule("wikipedia-9stage")
    assert column(report, "start_step") == [row[0] for row in WIKIPEDIA]
    assert column(report, "seq_len") == [row[1] for row in WIKIPEDIA]
    assert column(report, "batch_size") == [row[2] for row in WIKIPEDIA]  # = its Examples/Step column
    assert [s["peak_lr"] / report["base_lr"] for s in report["stages"]] == pytest.approx([row[3] for row in WIKIPEDIA])
    assert report["base_lr"] == 6e-4  # the LR plan's base, whose multipliers these are
    assert column(report, "examples") == [row[4] for row in WIKIPEDIA]
    assert [round(t / M, 1) for t in column(report, "tokens")] == [row[5] for row in WIKIPEDIA]
    # "Steps 50k-100k": the run ends at step 100,000 (train.max_steps, the stated input)
    assert report["total_steps"] == report["max_steps"] == 100_000
    # Derived: the stages' sum is 1,626,624,000 tokens and 2,010,000 examples; the plan's summary says
    # "1.8B tokens" and "2.3M examples", which its own stages do not add up to.
    assert report["total_tokens"] == 1_626_624_000
    assert sum(column(report, "examples")) == 2_010_000
    # "Checkpoint: 2 hours, 1.15M examples" after the four foundation stages (0–12k)
    assert round(sum(column(report, "examples")[:4]) / 1e4) / 100 == 1.15


def test_wikipedia_9stage_validation_and_early_stopping():
    cfg = load_preset("wikipedia-9stage")
    assert cfg.train.eval_every == 2000  # "Validation Process (Every 2000 steps)"
    assert cfg.train.early_stopping_patience == 10  # "No improvement for 10 evals"
    assert cfg.data.validation.fraction == pytest.approx(11_888 / 237_758, abs=1e-5)  # its 5% split
    assert (cfg.data.sources[0].dataset, cfg.data.sources[0].dataset_config) == ("wikimedia/wikipedia", "20231101.en")


def test_wikipedia_9stage_token_coverage_of_its_920M_tokens():
    # What `--dataset-tokens` prints today: epochs of the plan's ~920M tokens after each stage (derived).
    report = schedule("wikipedia-9stage", "--dataset-tokens", "920M")
    assert report["stages"][0]["dataset_fraction"] == pytest.approx(32_768_000 / 920e6)
    assert round(report["stages"][-1]["dataset_epochs_after"], 2) == 1.77
    assert report["dataset_epochs"] == pytest.approx(1_626_624_000 / 920e6)


def test_wikipedia_9stage_prints_the_plans_dataset_coverage():
    report = schedule("wikipedia-9stage")
    # "Size: 237,758 Wikipedia articles", "Tokens: ~920M total", "225,870 train / 11,888 validation"
    assert (report["dataset_documents"], report["dataset_tokens"]) == (237_758, 920 * M)
    assert report["dataset_training_documents"] == 225_870
    # "2.3× dataset coverage" …: examples / 225,870 training articles (237,758 less the 5% held out).
    # The plan rounds 0.558 down to 0.5 and 1.771 down to 1.7, hence the tolerance.
    coverage = [2.3, 1.1, 1.1, 0.6, 0.5, 0.5, 0.4, 0.5, 1.7]
    assert column(report, "dataset_coverage") == pytest.approx(coverage, abs=0.08)
    # Chunks/Doc: ~920M tokens / 237,758 articles / seq_len (the plan writes 3.78 as 3.7)
    chunks = [60, 30, 15, 7.5, 5, 3.7, 2.5, 1.9, 1.9]
    assert column(report, "chunks_per_document") == pytest.approx(chunks, rel=0.03)


# ----------------------------------------------------------------- the lesson (004_da0d…)
def non_embedding_params(name: str) -> int:
    """N of the preset's model at the GPT-2 vocabulary (its tokenizer)."""
    return resolve_shape(load_preset(name).model, GPT2_VOCAB_SIZE).params_non_embedding


def test_1b_compact_is_the_lessons_starter():
    report, cfg = schedule("1b-compact"), load_preset("1b-compact")
    assert non_embedding_params("1b-compact") == pytest.approx(1 * B, rel=0.03)  # N = 1B (0.97B)
    assert report["target_tokens"] == 20 * B  # D = 20B ≈ 20·N
    assert budgets(report) == [10 * B, 8 * B, 2 * B]  # A = 10B, B = 8B, C = 2B
    assert column(report, "seq_len") == [2048, 2048, 8192]  # seq_len 2k, C at 8k
    assert column(report, "tokens_per_step") == [65_536] * 3  # ≈ 65k tokens/step
    a, b, c = report["stages"]
    assert a["peak_lr"] == 3e-4 and a["peak_lr"] * a["min_lr_ratio"] == pytest.approx(5e-5)  # 3e-4 → 5e-5
    assert a["decay"] == "cosine"
    # warmup 1% of the steps (derived: 1% of 305,176)
    assert a["warmup_steps"] == 3052 and report["total_steps"] == 305_176
    # Derived: B lowered 1.5× (the lesson's ~1.5–2×) to the same 5e-5 floor; C at 8k = 4 × 2k with RoPE
    # scaling 4. Chosen: C's LR 1e-5 (the lesson's range 1e-5 … 5e-6), held constant.
    assert b["peak_lr"] == 2e-4 and b["peak_lr"] * b["min_lr_ratio"] == pytest.approx(5e-5)
    assert (c["peak_lr"], c["decay"], c["rope_scaling"]) == (1e-5, "constant", 4.0)
    assert [s["rope_scaling"] for s in (a, b)] == [1.0, 1.0]
    assert cfg.model.dropout == 0.1 and cfg.optim.beta2 == 0.95 and cfg.curriculum.grad_clip == 1.0


def test_7b_base_is_the_lessons_starter():
    report, cfg = schedule("7b-base"), load_preset("7b-base")
    assert non_embedding_params("7b-base") == pytest.approx(7 * B, rel=0.01)  # N = 7B (6.98B)
    assert report["target_tokens"] == 140 * B  # D = 140B = 20·N
    assert budgets(report) == [40 * B, 80 * B, 20 * B]  # A = 40B, B = 80B, C = 20B
    assert column(report, "seq_len") == [2048, 4096, 8192]  # seq_len 2k → 4k, C at 8k
    assert column(report, "tokens_per_step") == [131_072] * 3  # ≈ 131k tokens/step
    a, b, c = report["stages"]
    assert a["peak_lr"] == 1.5e-4 and a["peak_lr"] * a["min_lr_ratio"] == pytest.approx(2e-5)  # 1.5e-4 → 2e-5
    assert a["decay"] == "cosine"
    assert a["warmup_steps"] == 10_681 and report["total_steps"] == 1_068_116  # warmup 1% (derived)
    # Derived: B lowered 1.5× to the same 2e-5 floor; C's RoPE scaling 2 = 8192 / 4096.
    assert b["peak_lr"] == 1e-4 and b["peak_lr"] * b["min_lr_ratio"] == pytest.approx(2e-5)
    assert (c["peak_lr"], c["decay"], c["rope_scaling"]) == (5e-6, "constant", 2.0)  # C: LR 5e-6
    assert cfg.model.dropout == 0.1  # dropout 0.1
    assert (cfg.optim.weight_decay, cfg.optim.beta2) == (0.05, 0.95)  # wd 0.05, β2 = 0.95


def test_7b_base_prints_its_size_and_optimizer():
    report = schedule("7b-base")
    assert report["model"]["params_non_embedding"] == pytest.approx(7 * B, rel=0.01)
    assert (report["optim"]["weight_decay"], report["optim"]["beta2"], report["model"]["dropout"]) == (0.05, 0.95, 0.1)
    assert report["optim"]["base_lr"] == 1.5e-4  # "LR max 1.5e-4"
    # Derived (the shape is Llama-3-8B's body, see the preset): 32 × 4096 at the GPT-2 tokenizer's vocabulary
    assert report["model"]["shape"]["n_layers"] == 32 and report["model"]["shape"]["d_model"] == 4096
    assert report["model"]["shape"]["vocab_size"] == 50_257


# ------------------------------------------------------------ not from a plan: kept as they were
def test_demo_and_baseline_are_unchanged():
    demo = schedule("demo")
    assert column(demo, "seq_len") == [32, 64, 128, 256]
    assert budgets(demo) == [245_760, 368_640, 491_520, 1_351_680]
    assert column(demo, "tokens_per_step") == [4096] * 4
    assert (demo["total_steps"], demo["target_tokens"]) == (600, 2_457_600)
    base = schedule("baseline")
    assert [(s["seq_len"], s["batch_size"]) for s in base["stages"]] == [(2048, 16)]
    assert (base["total_steps"], base["target_tokens"]) == (100_000, 3_276_800_000)
