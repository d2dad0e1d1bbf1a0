#!/usr/bin/env bash
# One GPU check in one run: the paper models' train steps in bfloat16 at a GPU batch (with MFU),
# the contrastive-loss benchmark, and the contrastive share of the UPerNet-Swin-T step.
#
#   bash benchmarks/device_check.sh            # on a machine with an NVIDIA GPU
# Environment: PYTHON (default python3), OUT (folder for the results; default ./device_check),
#   MODELS (default deeplabv3,hrnet,ocrnet,upernet_swin_t,upernet_swin_b), BATCH (default 16),
#   PEAK_TFLOPS (the GPU's dense bf16 peak for MFU; default 989, an H100/H200 SXM),
#   MODEL_TIMEOUT (seconds per model, default 240), SIZE (crop, default 512), PARALLEL (1, the
#   default: every model in its own process at once, timed one at a time; 0: one after another).
# JAX with CUDA: the python's own if it sees a GPU; else wheels in ./.whl (pip download
#   jax[cuda12] ... -d .whl), else `pip install "jax[cuda12]"` (needs a package index).
# Writes $OUT/device_check.json (everything), $OUT/models_gpu.json, $OUT/models_gpu_ce.json and
# prints one table per part.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/device_check}"
MODELS="${MODELS:-deeplabv3,hrnet,ocrnet,upernet_swin_t,upernet_swin_b}"
BATCH="${BATCH:-16}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
MODEL_TIMEOUT="${MODEL_TIMEOUT:-240}"
SIZE="${SIZE:-512}"
PARALLEL="${PARALLEL:-1}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

# Wheels carried in .whl (pure-Python packages this image lacks, e.g. ml_collections).
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/msc_seg_site .whl/*.whl && export PYTHONPATH="/tmp/msc_seg_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
if [ "${REQUIRE_GPU:-1}" = 1 ] && ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  echo "JAX sees no GPU: installing jax[cuda12]" >&2
  "$PY" -m pip install -q "jax[cuda12]" || { echo "no CUDA JAX could be installed" >&2; exit 1; }
fi
nvidia-smi 2>/dev/null --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'

WORK="$(mktemp -d)"
if [ "$PARALLEL" = 1 ]; then
  # One process per model, all at once: the compiles (CPU-bound, the long part) overlap, while a
  # file lock lets only one process at a time run its timed steps, so timings stay clean.
  # Memory is taken on demand (no 75 % preallocation per process).
  export XLA_PYTHON_CLIENT_PREALLOCATE=false MSC_SEG_BENCH_TIMING_LOCK="$WORK/timing.lock"
fi
run_models() {  # NAME-OF-JSON ARGS...: one models.py run, log into $WORK
  local name="$1"; shift
  "$PY" benchmarks/models.py --batch "$BATCH" --size "$SIZE" --dtype bfloat16 --repeats 3 \
    --timeout "$MODEL_TIMEOUT" --json "$WORK/$name.json" "$@" >"$WORK/$name.out" 2>"$WORK/$name.log"
}
echo "== 1. models: train step in bfloat16, batch $BATCH, ${SIZE}x$SIZE, CE + aux + 0.1 MS+CS"
echo "== 2. contrastive share: UPerNet-Swin-T step without the contrastive term"
echo "== 3. contrastive loss alone"
pids=()
for m in ${MODELS//,/ }; do
  run_models "model_$m" --models "$m" & pids+=($!)
  [ "$PARALLEL" = 1 ] || wait
done
run_models ce_upernet_swin_t --models upernet_swin_t --contrastive-weight 0 & pids+=($!)
# FLOPs for MFU: the GPU program's cost analysis misses cuDNN / cuBLAS work, so count them on the
# CPU from the lowered program (no weights, no compile).
JAX_PLATFORMS=cpu "$PY" benchmarks/train_flops.py --models "$MODELS" --batch "$BATCH" \
  --size "$SIZE" --json "$OUT/train_flops.json" >"$WORK/train_flops.out" 2>"$WORK/train_flops.log" &
pids+=($!)
[ "$PARALLEL" = 1 ] || wait
(
  # The loss benchmark times as soon as it starts: it holds the timing lock throughout.
  cmd=("$PY" benchmarks/contrastive_loss.py --cases "${CONTRASTIVE_CASES:-small,large}" --repeats 3 --block-size 1024
       --column-block-size 4096)
  if [ "$PARALLEL" = 1 ]; then flock "$MSC_SEG_BENCH_TIMING_LOCK" "${cmd[@]}"; else "${cmd[@]}"; fi
) >"$OUT/contrastive_loss.txt" 2>"$WORK/contrastive_loss.log" & pids+=($!)
wait "${pids[@]}"
cat "$OUT/contrastive_loss.txt"
# Everything into a few files ($OUT may take only a few back): one log, two JSONs.
for f in "$WORK"/*.log "$WORK"/*.out; do echo "===== $(basename "$f")"; cat "$f"; done >"$OUT/log.txt"
"$PY" - "$WORK" "$OUT" <<'EOF'
import json, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def load(path):
    return json.loads(path.read_text()) if path.exists() else []
models = [r for p in sorted(work.glob("model_*.json")) for r in load(p)]
(out / "models_gpu.json").write_text(json.dumps(models, indent=1))
(out / "models_gpu_ce.json").write_text(json.dumps(load(work / "ce_upernet_swin_t.json"), indent=1))
EOF
grep -h '^|' "$WORK"/model_*.out "$WORK"/ce_*.out 2>/dev/null

"$PY" - "$OUT" "$PEAK_TFLOPS" <<'EOF'
import json, pathlib, statistics, sys
out, peak = pathlib.Path(sys.argv[1]), float(sys.argv[2]) * 1e12
def rows(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else []
models, ce = rows("models_gpu.json"), rows("models_gpu_ce.json")
counted = json.loads((out / "train_flops.json").read_text()) if (out / "train_flops.json").exists() else {}
table = ["| model | batch | step s | img/s | TFLOP/step | MFU | compile s | peak GiB |",
         "|---|---|---|---|---|---|---|---|"]
summary = {"peak_tflops": peak / 1e12, "models": [], "contrastive_share": None}
for r in models:
    if "error" in r:
        table.append(f"| {r['model']} | {r['batch']} | failed: {r['error'][:80]} | | | | | |")
        continue
    step = statistics.median(r["train_times_s"])
    flops = counted.get(r["model"], {}).get("0.1") or r.get("train_flops") or float("nan")
    mfu = flops / step / peak
    mem = (r.get("device_peak_bytes") or 0) / 2**30
    table.append(f"| {r['model']} | {r['batch']} | {step:.3f} | {r['batch'] / step:.1f} | "
                 f"{flops / 1e12:.2f} | {100 * mfu:.1f}% | {r['train_compile_s']:.1f} | {mem:.1f} |")
    summary["models"].append(dict(model=r["model"], step_s=step, flops=flops, mfu=mfu,
                                  compile_s=r["train_compile_s"], peak_gib=mem))
with_c = [r for r in models if r["model"] == "upernet_swin_t" and "error" not in r]
if with_c and ce and "error" not in ce[0]:
    a = statistics.median(with_c[0]["train_times_s"])
    b = statistics.median(ce[0]["train_times_s"])
    summary["contrastive_share"] = dict(step_with_s=a, step_without_s=b, share=(a - b) / a)
    table.append(f"\ncontrastive share of the UPerNet-Swin-T step: {a:.3f} s with, {b:.3f} s "
                 f"without -> {100 * (a - b) / a:.1f}%")
print("\n".join(table))
(out / "device_check.json").write_text(json.dumps(summary, indent=2))
EOF
