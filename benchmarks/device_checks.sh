#!/usr/bin/env bash
# The checks to run when a GPU machine is lent through the `device` tool (DEVELOPERS.md,
# "A lent GPU"). That machine reaches no package registry, so carry the built virtual
# environment and a warm cache:  run(command="bash benchmarks/device_checks.sh",
# carry=[".venv", ".cache-device"]) after `AURORA_RL_CACHE=.cache-device make run`-style
# warm-up here (worlds and pretrained drafters are built on CPU, then moved to the device).
# Everything it measures lands in $OUT (or ./device-results) as JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-results}"; mkdir -p "$out"
export AURORA_RL_CACHE="${AURORA_RL_CACHE:-$PWD/.cache-device}" HF_HUB_OFFLINE=1
py=.venv/bin/python
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
# 1. lossless on the device: greedy output == model.generate, target-only and speculative, + tokens/s
for world in tiny default; do
  $py benchmarks/device_check.py --device cuda --world "$world" --json "$out/lossless_$world.json" || status=1
done
# 2. the lossless and batched-equivalence tests (they run on CPU tensors: a sanity check of the carried venv)
$py -m pytest -q -x tests/test_lossless.py tests/test_batched_decode.py -k "greedy or batched" > "$out/tests.txt" 2>&1 || status=1
exit $status
