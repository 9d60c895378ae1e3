#!/usr/bin/env bash
# Run ON the lent GPU machine (through the device tool, with carry=[".gpu"] from prepare.sh): installs the
# carried wheels and measures stage throughput (tokens/s, MFU, memory, transition seconds, framework vs a
# plain loop) at bf16 with torch.compile. One model per call, to stay inside the 10-minute command limit:
#   bash benchmarks/gpu/run.sh 124M     # the aggressive preset's six stages, 64 -> 2048
#   bash benchmarks/gpu/run.sh 270M     # streaming-1b's stages 1, 4, 7 and 10 (8 -> 2048)
#   bash benchmarks/gpu/run.sh 124M-sync  # first and last stage under train.host_sync every_step, then lagged
#                                         # (issue 14 §3: the step time a per-step host sync costs)
#   bash benchmarks/gpu/run.sh 124M-gns   # what measuring the gradient noise scale costs a step on the GPU
#                                         # (issue 30 §1 target <= 1%; issue 32 §2), interleaved off/on pairs
#   bash benchmarks/gpu/run.sh host-sync-124M  # the same measurement as 124M-sync, by issue 32 §2's name
#   bash benchmarks/gpu/run.sh fp8-124M   # FP8 against bf16 (issue 32 §2): tokens/s, MFU, loss after N steps;
#   bash benchmarks/gpu/run.sh fp8-270M   #   benchmarks/results/gpu/fp8_<model>.json, each arm kept when done, so
#   bash benchmarks/gpu/run.sh fp8-1B     #   a rerun continues where a killed call stopped (1B: activation
#                                         #   checkpointing on; FSDP shards only across 2+ GPUs)
#   bash benchmarks/gpu/run.sh 124M-compare [wikitext|code]  # ramp curriculum vs WSD full/half-batch baselines,
#                                         #   two LRs per arm, two seeds; each call adds runs for 8 minutes until
#                                         #   benchmarks/results/gpu/compare_124M_<corpus>.json says complete
#   bash benchmarks/gpu/run.sh 1B-memory  # 1b-compact's peak memory per stage against gradus plan's estimate
# Results land in $OUT (the device tool brings them back), the log beside them.
set -uo pipefail
model=${1:?usage: run.sh 124M|270M|124M-sync|host-sync-124M|124M-gns|fp8-124M|fp8-270M|fp8-1B|124M-compare [corpus]|1B-memory}
out=${OUT:-benchmarks/results}
# The pip of the python3 that holds torch; a Python that refuses system-wide installs gets --break-system-packages
# (the machine is thrown away after the session).
python3 -m pip install -q --no-index --no-deps .gpu/wheels/*.whl \
  || python3 -m pip install -q --no-index --no-deps --break-system-packages .gpu/wheels/*.whl \
  || { echo "run.sh: could not install the carried wheels (did prepare.sh run, and is .gpu carried?)" >&2; exit 2; }
export PYTHONPATH=$PWD GRADUS_SHARED_DATA=$PWD/.gpu/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pydantic; print('torch', torch.__version__, 'pydantic', pydantic.__version__)"
case $model in
  124M) args=(--preset aggressive --model-preset 124M --steps-per-stage 20 --repeats 1) ;;
  270M) args=(--preset streaming-1b --model-preset 270M --stages 0,3,6,-1 --steps-per-stage 15 --repeats 1) ;;
  124M-sync|host-sync-124M)
    for mode in every_step lagged; do
      timeout 270 python3 benchmarks/stage_throughput.py --preset aggressive --model-preset 124M --stages 0,-1 \
          --steps-per-stage 30 --repeats 1 --set train.host_sync=$mode --data local --device cuda --precision bf16 \
          --compile on --peak measured --out "$out/stage_throughput_124M_sync_${mode}.json" 2>&1 \
          | tee "$out/stage_throughput_124M_sync_${mode}.log"
    done
    exit 0 ;;
  124M-gns)
    timeout 540 python3 benchmarks/noise_scale_overhead.py --model-preset 124M --shapes 1024x32:4,128x256:4 \
        --pairs 12 --device cuda --out "$out/noise_scale_overhead_124M_gpu.json" 2>&1 \
        | tee "$out/noise_scale_overhead_124M_gpu.log"
    exit 0 ;;
  fp8-124M|fp8-270M|fp8-1B)
    size=${model#fp8-}
    extra=()
    [ "$size" = 1B ] && extra=(--activation-checkpointing full)
    # The result lives in the tree (carried back and forth), so a rerun reads the finished arm back.
    mkdir -p benchmarks/results/gpu
    timeout 560 python3 benchmarks/gpu/fp8_vs_bf16.py --model "$size" "${extra[@]}" \
        --out "benchmarks/results/gpu/fp8_${size}.json" 2>&1 | tee "$out/fp8_${size}.log"
    cp "benchmarks/results/gpu/fp8_${size}.json" "$out/" 2>/dev/null
    exit 0 ;;
  124M-compare)
    corpus=${2:-wikitext}
    # The file lives in the tree and carries every finished run, so a call on a fresh machine reads them back;
    # the run directories (.gpu-runs/, ignored) stay on a warm machine, where a stopped run resumes.
    mkdir -p benchmarks/results/gpu
    timeout 580 python3 benchmarks/gpu/compare_124M.py --corpus "$corpus" --max-minutes 8 \
        --out "benchmarks/results/gpu/compare_124M_${corpus}.json" 2>&1 | tee "$out/compare_124M_${corpus}.log"
    cp "benchmarks/results/gpu/compare_124M_${corpus}.json" "$out/" 2>/dev/null
    exit 0 ;;
  1B-memory)
    mkdir -p benchmarks/results/gpu
    timeout 560 python3 benchmarks/gpu/memory_1B.py --out benchmarks/results/gpu/memory_1B.json 2>&1 \
        | tee "$out/memory_1B.log"
    cp benchmarks/results/gpu/memory_1B.json "$out/" 2>/dev/null
    exit 0 ;;
  *) echo "run.sh: unknown measurement $model (124M, 270M, 124M-sync, host-sync-124M, 124M-gns, fp8-124M, fp8-270M," \
          "fp8-1B, 124M-compare or 1B-memory)" >&2; exit 2 ;;
esac
timeout 560 python3 benchmarks/stage_throughput.py "${args[@]}" --data local --device cuda --precision bf16 \
    --compile on --peak measured --out "$out/stage_throughput_${model}_gpu.json" 2>&1 | tee "$out/stage_throughput_${model}_gpu.log"
