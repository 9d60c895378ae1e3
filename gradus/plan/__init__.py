"""Planning without torch: the compute-optimal worksheet (:mod:`.worksheet`, composed of :mod:`.inputs`,
:mod:`.scaling` and :mod:`.stages`, printed by :mod:`.worksheet_text`), the per-stage timeline and
memory estimate (:mod:`.timeline`, :mod:`.memory`) and the hardware table (:mod:`.hardware`).

Nothing here imports torch; ``gradus plan --measure`` reaches torch through
:func:`gradus.train.measure.measure_stage_throughput`, called by the command, not by this package.
"""

from gradus.plan.hardware import GPUS, GPUSpec, gpu_spec, parse_bytes
from gradus.plan.inputs import Hardware, PlanInputs
from gradus.plan.scaling import peak_lr_for_params
from gradus.plan.worksheet import Plan, make_plan
from gradus.plan.worksheet_text import plan_config_yaml, render_plan

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
