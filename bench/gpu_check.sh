#!/usr/bin/env bash
# One call on a lent GPU machine (one GPU, 16 cores, the device image: torch, torchvision, timm, numpy, safetensors,
# matplotlib, scikit-learn, pandas, tqdm; no papermill, no pytest): the recover, relabel, validate and RDED selection benches at
# their GPU sizes, decoding with 16 workers and on the GPU, the GPU tests, and a shortened 1000-class rehearsal
# (stages in this process, as `sre2l reproduce --inline` would run them). Meant to take under 10 minutes; it
# prints what it measured and appends it, dated, to bench/RESULTS.md.
#
#   bash bench/gpu_check.sh          # on the GPU machine
#   bash bench/gpu_check.sh --cpu    # the same steps at CPU sizes, the rehearsal as its plan only (CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=gpu
case "${1:-}" in
  --cpu) mode=cpu ;;
  "") ;;
  *) echo "sre2l: error: unknown option ${1}; the options are --cpu" >&2; exit 2 ;;
esac
if [ "$mode" = gpu ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "sre2l: error: no CUDA device here; run with --cpu for the CPU sizes" >&2; exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SRE2L_NO_PROGRESS=1
log="$(mktemp)"; scratch="$(mktemp -d)"; trap 'rm -rf "$log" "$scratch"' EXIT
began=$SECONDS
step() {  # step NAME COMMAND...: run it, keep its output, time it
  local name="$1"; shift; local start=$SECONDS
  echo "### $name: \`$*\`" | tee -a "$log"
  "$@" 2>&1 | grep -v "^[0-9:]* sre2l: " | tee -a "$log"
  echo "($name: $((SECONDS - start)) s)" | tee -a "$log"; echo | tee -a "$log"
}
if [ "$mode" = gpu ]; then
  step recover python bench/recover.py --variant resnet18-224
  step relabel python bench/relabel.py --variant resnet18-224 --epochs 1
  step "relabel, FKD regions" python bench/relabel.py --mode region --variant resnet18-224
  step validate python bench/validate.py --variant resnet18-224 --epochs 1
  step "RDED selection" python bench/selection.py --variant resnet18-224 --device cuda
  step "decoding, 16 workers and on the GPU" python bench/decode.py --classes 100 --workers 16 --device cuda
  step "GPU tests: two CUDA runs agree" python bench/determinism.py --device cuda --set relabel.epochs=5 --set recover.iterations=100
  step "rehearsal, 1000 classes, shortened (stages in this process)" python -m sre2l.cli reproduce imagenet_rehearsal \
    --set squeeze.epochs=1 --set recover.iterations=100 --set relabel.epochs=6 --set validate.epochs=4 \
    --set validate.eval_every=4 --inline --run-dir "$scratch/runs" --out "$scratch/tables"
else
  step recover python bench/recover.py --variant cpu --iterations 3 --warmup 1 --no-compile
  step relabel python bench/relabel.py --variant cpu --epochs 1
  step "relabel, FKD regions" python bench/relabel.py --mode region --variant cpu
  step validate python bench/validate.py --variant cpu --epochs 1
  step "RDED selection" python bench/selection.py --variant cpu
  step decoding python bench/decode.py --classes 4 --val-per-class 8 --workers 2
  step "determinism: two runs agree" python bench/determinism.py --device cpu --set relabel.epochs=2 --set recover.iterations=20
  # CI runs `sre2l reproduce imagenet_rehearsal_ci` once already: here only the 1000-class rehearsal's plan
  step "rehearsal, 1000 classes: its plan" python -m sre2l.cli reproduce imagenet_rehearsal --dry-run \
    --set squeeze.epochs=1 --set recover.iterations=100 --set relabel.epochs=6 --set validate.epochs=4 \
    --set validate.eval_every=4 --run-dir "$scratch/runs"
fi
echo "gpu_check ($mode): $((SECONDS - began)) s in all" | tee -a "$log"
if [ "$mode" = gpu ]; then
  gpu="$(python -c "import torch; print(torch.cuda.get_device_name())")"
  { echo; echo "## bench/gpu_check.sh, $(date -u +%Y-%m-%d), $gpu, torch $(python -c 'import torch; print(torch.__version__)')"
    echo; cat "$log"; } >> bench/RESULTS.md
  echo "appended to bench/RESULTS.md"
fi
