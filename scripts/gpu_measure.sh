#!/usr/bin/env bash
# One call on a CUDA machine that has only torch (+ numpy, pyyaml, click, tqdm, pandas):
# the benchmark on cuda, then the full small, medium and large reproductions (train +
# evaluate, no tracking), everything collected under $OUT.
#
#   OUT=/tmp/gpu scripts/gpu_measure.sh                 # bench small medium large
#   OUT=/tmp/gpu scripts/gpu_measure.sh bench           # or any subset, in the order given
#
# Needs data/prepared (carry it) or PTBLM_ARCHIVE=<simple-examples.tgz> to prepare it here.
# Wheels in .whl/ (e.g. tqdm, matplotlib if missing there) are installed offline first.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-gpu_out}"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT/logs"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(bench small medium large)

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps .whl/*.whl
fi

if [ ! -f data/prepared/train.npy ]; then
    : "${PTBLM_ARCHIVE:?no data/prepared here: carry it, or set PTBLM_ARCHIVE to the archive}"
    "$PYTHON" -m ptblm.cli extract --archive "$PTBLM_ARCHIVE"
    "$PYTHON" -m ptblm.cli prepare
fi

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'cudnn', torch.backends.cudnn.version())"
    git rev-parse HEAD 2>/dev/null || true
} > "$OUT/logs/environment.txt" 2>&1

run_part() {  # every step chained with &&: `if` switches set -e off inside its condition
    case "$1" in
        bench)
            "$PYTHON" benchmarks/bench.py --device cuda --configs small,medium,large \
                --out "$OUT/benchmarks/results" 2>&1 | tee "$OUT/logs/bench.log"
            ;;
        small | medium | large)
            "$PYTHON" -m ptblm.cli train --model "$1" --no-tracking 2>&1 \
                | tee "$OUT/logs/train-$1.log" \
                && "$PYTHON" -m ptblm.cli evaluate --model "$1" 2>&1 \
                | tee "$OUT/logs/evaluate-$1.log" \
                && mkdir -p "$OUT/metrics" && cp -r "metrics/$1" "$OUT/metrics/"
            ;;
        *)
            echo "unknown part: $1 (bench, small, medium, large)" >&2
            return 2
            ;;
    esac
}

failed=()
for part in "${parts[@]}"; do
    start=$SECONDS
    run_part "$part" || failed+=("$part")  # a failed part is reported at the end
    echo "$part: $((SECONDS - start)) s" | tee -a "$OUT/logs/durations.txt"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
