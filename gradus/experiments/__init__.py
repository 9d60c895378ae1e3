"""Experiments over whole training runs: sweeps, ablations and the curriculum-vs-baseline comparison (layer 5).

Every arm is a complete ``gradus train`` run in its own process and run directory; this package builds the
arms' configs (:mod:`~gradus.experiments.arms`), runs them (:mod:`~gradus.experiments.runner`), tunes
learning rates (:mod:`~gradus.experiments.tuning`), measures the curves (:mod:`~gradus.experiments.analysis`)
and draws them (:mod:`~gradus.experiments.plots`). ``gradus sweep``, ``gradus compare`` and
``benchmarks/curriculum_speedup.py`` are thin layers over it (the benchmark's arm catalogue is
:mod:`~gradus.experiments.speedup_arms`, its runs and summaries :mod:`~gradus.experiments.speedup`).
``benchmarks/stage_throughput.py`` is a thin layer over :mod:`~gradus.experiments.throughput` (the trainer
against a plain PyTorch loop, step for step) and :mod:`~gradus.experiments.throughput_table`.
"""
