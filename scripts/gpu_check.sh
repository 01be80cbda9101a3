#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU, in under 5 minutes:
#   1. the tests that need a GPU (skipped elsewhere) and the precision/loss-scaling tests;
#   2. one training run per precision (float32, bf16, fp16) of the default experiment;
#   3. a 2-job parallel sweep (hydra/launcher=parallel): both jobs on the GPU(s) at once;
#   4. the benchmark's quick rows.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (default gpu_check/; needs `pip install -e ".[gpu,dev]"`)
# A precision the GPU lacks (bf16 below compute capability 8.0, fp16 below 7.0) is reported as
# refused, which is the expected answer there. The figures go to OUT_DIR/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
export TF_CPP_MIN_LOG_LEVEL=2

say "== device"
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$summary"
python -c "from convlearn.perf import training_device; print(training_device().describe())" 2>&1 | tee -a "$summary"

say "== tests (GPU ones run here)"
python -m pytest -n0 -q -p no:cacheprovider tests/test_perf.py tests/test_training.py 2>&1 | tail -n 3 | tee -a "$summary"

steps=${GPU_CHECK_STEPS:-300}  # fewer for a smoke test on a CPU
say "== one run per precision (default experiment, $steps steps)"
for precision in float32 bf16 fp16; do
    run="$out/run_$precision"
    start=$(date +%s.%N)
    python train.py trainer.precision=$precision trainer.steps=$steps trainer.progress=false \
        "hydra.run.dir=$run" > "$out/run_$precision.log" 2>&1
    rc=$?
    seconds=$(python -c "print(f'{$(date +%s.%N) - $start:.1f}')")
    if [ $rc -ne 0 ]; then
        say "$precision: exit $rc after ${seconds}s: $(tail -n 1 "$out/run_$precision.log")"
        continue
    fi
    python - "$run/metrics.json" "$precision" "$seconds" <<'EOF' | tee -a "$summary"
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: {m['status']}, {m['steps_per_sec']:.1f} steps/s, final loss {m['final_loss']:.4g}, "
      f"rel_mse {m['rel_mse']:.4g}, process {sys.argv[3]} s, device {m['provenance']['device']}")
EOF
done

say "== 2-job parallel sweep"
sweep="$out/sweep"
start=$(date +%s)
python train.py -m hydra/launcher=parallel optimizer.lr=1e-3,3e-3 trainer.steps=$steps trainer.progress=false \
    "hydra.sweep.dir=$sweep" > "$out/sweep.log" 2>&1
say "sweep: exit $? in $(( $(date +%s) - start )) s"
for job in "$sweep"/*/metrics.json; do
    python -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[1], m['status'], \
f\"{m.get('steps_per_sec', 0):.1f} steps/s\", m.get('provenance', {}).get('device'))" "$job" | tee -a "$summary"
done
grep -h "one GPU per parallel job" "$sweep"/*/*.log 2>/dev/null | tee -a "$summary"

say "== benchmark, quick rows"
python scripts/benchmark.py --quick --out "$out/benchmark.json" > "$out/benchmark.log" 2>&1
say "benchmark: exit $?"
tail -n 25 "$out/benchmark.log" | tee -a "$summary"
