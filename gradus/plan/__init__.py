"""Planning without torch: the compute-optimal worksheet (:mod:`.worksheet`), the per-stage timeline and
memory estimate (:mod:`.timeline`, :mod:`.memory`) and the hardware table (:mod:`.hardware`).

Nothing here imports torch; ``gradus plan --measure`` reaches torch through
:func:`gradus.train.measure.measure_stage_throughput`, called by the command, not by this package.
"""

from gradus.plan.hardware import GPUS, GPUSpec, gpu_spec, parse_bytes
from gradus.plan.worksheet import (
    Hardware,
    Plan,
    PlanInputs,
    make_plan,
    peak_lr_for_params,
    plan_config_yaml,
    render_plan,
)

__all__ = [
    "GPUS",
    "GPUSpec",
    "Hardware",
    "Plan",
    "PlanInputs",
    "gpu_spec",
    "make_plan",
    "parse_bytes",
    "peak_lr_for_params",
    "plan_config_yaml",
    "render_plan",
]
