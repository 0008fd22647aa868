#!/usr/bin/env bash
# One call on a CUDA machine that has only torch (+ numpy, pyyaml, click, tqdm, pandas,
# pytest): the CUDA tests, the benchmark, the full small, medium and large reproductions
# (train + evaluate, no tracking), then the plain loop trained to the end on small and
# compared with ours (benchmarks/plain_run.py), everything packed into $OUT/results.tar.gz.
#
#   OUT=/tmp/gpu scripts/gpu_measure.sh          # check bench small medium large plain-small
#   OUT=/tmp/gpu scripts/gpu_measure.sh large plain-large   # or any parts, in that order
#   OUT=/tmp/gpu scripts/gpu_measure.sh check bench-variants medium-tied large-tied
#
# Every config of params.yaml is a part of its own (train + evaluate): the 2014 ones and the
# variants (small-tied, small-gru, medium-tied, large-tied).
# bench-variants times the variants beside the 2014 model of their size (tf32, no scaling).
# bench-ddp times large's step and a gradient all-reduce on one GPU (benchmarks/ddp.py).
# adapt-<config> runs the adapt stage (neural cache, dynamic evaluation, tuned on valid) on
# <config>'s model: run <config> first (here or before). bench-adapt times static
# evaluation, the cache and dynamic evaluation side by side (benchmarks/adapt.py).
#   OUT=/tmp/gpu scripts/gpu_measure.sh medium adapt-medium large-tied adapt-large-tied
#   PRECISION=fp32 DEADLINE_S=540 OUT=/tmp/gpu scripts/gpu_measure.sh small
#
#   OUT=/tmp/gpu scripts/gpu_measure.sh seeds-small seeds-medium   # 3 seeds each, mean ± sd
#
# A seeds-<config> part trains and evaluates <config> once per seed in SEEDS (default
# "1 2 3"), keeps each run's metrics under seeds/<config>-seed<N>/ and writes
# seeds/<config>.json: n, mean and sample standard deviation of each perplexity.
# A plain-<config> part compares with metrics/<config>: run <config> first (here or before);
# the plain loop has no autocast, so those parts need PRECISION fp32 or tf32.
# PRECISION (default tf32) is train.precision for the reproductions. DEADLINE_S (default
# none) stops the parts that would run past that many seconds from the start; training
# then resumes from its checkpoint when this runs again on the same machine.
# Needs data/prepared (carry it) or PTBLM_ARCHIVE=<simple-examples.tgz> to prepare it here.
# Wheels in .whl/ (e.g. tqdm if missing there) are installed offline first.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-gpu_out}"
PYTHON="${PYTHON:-python3}"
PRECISION="${PRECISION:-tf32}"
DEADLINE_S="${DEADLINE_S:-0}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
RESULTS="$OUT/results"  # packed at the end: the device tool brings back only a few files
mkdir -p "$RESULTS/logs"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(check bench small medium large plain-small)

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps .whl/*.whl
fi

if [ ! -f data/prepared/train.npy ]; then
    : "${PTBLM_ARCHIVE:?no data/prepared here: carry it, or set PTBLM_ARCHIVE to the archive}"
    "$PYTHON" -m ptblm.cli extract --archive "$PTBLM_ARCHIVE"
    "$PYTHON" -m ptblm.cli prepare
fi

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'cudnn', torch.backends.cudnn.version())"
    lscpu | grep -E 'Model name|^CPU\(s\)' || true
    echo "commit ${PTBLM_COMMIT:-unknown}; precision $PRECISION"
} 2>&1 | tee "$RESULTS/logs/environment.txt"

# The reproductions read params.yaml's copy with train.precision = $PRECISION, tracking off.
GPU_PARAMS="$RESULTS/params-gpu.yaml"
set_param() {  # set_param KEY VALUE [FILE]: train.KEY = VALUE (YAML) in FILE ($GPU_PARAMS)
    "$PYTHON" - "${3:-$GPU_PARAMS}" "$1" "$2" <<'EOF'
import sys, yaml
path, key, value = sys.argv[1:]
params = yaml.safe_load(open(path, encoding="utf-8"))
params["train"][key] = yaml.safe_load(value)
params["tracking"]["enabled"] = False
open(path, "w", encoding="utf-8").write(yaml.safe_dump(params, sort_keys=False))
EOF
}
cp params.yaml "$GPU_PARAMS"
set_param precision "$PRECISION"

left() {  # seconds before DEADLINE_S (a large number when there is none)
    if [ "$DEADLINE_S" -gt 0 ]; then echo $((DEADLINE_S - SECONDS)); else echo 86400; fi
}

train_evaluate() {  # train_evaluate CONFIG PARAMS LOG_SUFFIX: one reproduction, logged
    timeout "$(left)" "$PYTHON" -m ptblm.cli train --params "$2" --model "$1" 2>&1 \
        | tee "$RESULTS/logs/train-$1$3.log" \
        && "$PYTHON" -m ptblm.cli evaluate --params "$2" --model "$1" 2>&1 \
        | tee "$RESULTS/logs/evaluate-$1$3.log"
}

run_seeds() {  # run_seeds CONFIG: every seed in $SEEDS, then n / mean / sd in seeds/CONFIG.json
    local seed params kept
    for seed in ${SEEDS:-1 2 3}; do
        [ "$(left)" -gt 10 ] || { echo "seeds-$1: seed $seed skipped, deadline reached"; return 1; }
        params="$RESULTS/params-gpu-seed$seed.yaml"
        kept="$RESULTS/seeds/$1-seed$seed"
        cp "$GPU_PARAMS" "$params"
        set_param seed "$seed" "$params" \
            && train_evaluate "$1" "$params" "-seed$seed" \
            && mkdir -p "$kept" && cp "metrics/$1/train.json" "metrics/$1/eval.json" \
                "timings/$1/speed.json" "plots/$1/history.csv" "$kept/" \
            || return 1
    done
    "$PYTHON" -m ptblm.cli seeds --config "$1" --output "$RESULTS/seeds/$1.json" \
        "$RESULTS/seeds/$1"-seed* 2>&1 | tee "$RESULTS/logs/seeds-$1.log"
}

run_part() {  # every step chained with &&: `if` switches set -e off inside its condition
    local limit
    limit=$(left)
    [ "$limit" -gt 10 ] || { echo "$1: skipped, deadline reached"; return 1; }
    case "$1" in
        check)
            timeout "$limit" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 \
                | tee "$RESULTS/logs/check.log" \
                || { grep -qE "FAILED.*(graph|dropout)" "$RESULTS/logs/check.log" \
                    && set_param cuda_graphs false \
                    && echo "CUDA graph tests failed: the reproductions run eagerly"; return 1; }
            ;;
        bench)
            timeout "$limit" "$PYTHON" benchmarks/bench.py --device cuda \
                --configs small,medium,large --precisions fp32,tf32,bf16 \
                --scaling-precision tf32 --scaling-steps 50 \
                --note "${BENCH_NOTE:-scripts/gpu_measure.sh}" \
                --out "$RESULTS/benchmarks" 2>&1 | tee "$RESULTS/logs/bench.log"
            ;;
        bench-variants)
            timeout "$limit" "$PYTHON" benchmarks/bench.py --device cuda \
                --configs small,small-tied,small-gru,medium,medium-tied,large,large-tied \
                --precisions tf32 --no-scaling --trajectory-steps 0 \
                --note "${BENCH_NOTE:-scripts/gpu_measure.sh bench-variants}" \
                --out "$RESULTS/benchmarks-variants" 2>&1 | tee "$RESULTS/logs/bench-variants.log"
            ;;
        bench-ddp)  # the 1-GPU baseline of benchmarks/ddp.py (one GPU here: no second rank)
            timeout "$limit" "$PYTHON" benchmarks/ddp.py --device cuda --config large \
                --processes 1 --out "$RESULTS/benchmarks-ddp" 2>&1 | tee "$RESULTS/logs/bench-ddp.log"
            ;;
        bench-adapt)
            timeout "$limit" "$PYTHON" benchmarks/adapt.py --device cuda \
                --configs small,medium,large,medium-tied,large-tied \
                --out "$RESULTS/benchmarks-adapt" 2>&1 | tee "$RESULTS/logs/bench-adapt.log"
            ;;
        adapt-*)
            timeout "$limit" "$PYTHON" -m ptblm.cli adapt --params "$GPU_PARAMS" \
                --model "${1#adapt-}" --no-tracking 2>&1 | tee "$RESULTS/logs/$1.log" \
                && for d in metrics tuning timings; do
                    mkdir -p "$RESULTS/$d" && cp -r "$d/${1#adapt-}" "$RESULTS/$d/"
                done
            ;;
        small | medium | large | test | small-tied | small-gru | medium-tied | large-tied \
            | test-variants)
            train_evaluate "$1" "$GPU_PARAMS" "" \
                && for d in metrics plots timings; do
                    mkdir -p "$RESULTS/$d" && cp -r "$d/$1" "$RESULTS/$d/"
                done
            ;;
        seeds-*)
            run_seeds "${1#seeds-}"
            ;;
        plain-small | plain-medium | plain-large | plain-test)
            timeout "$limit" "$PYTHON" benchmarks/plain_run.py --config "${1#plain-}" \
                --params "$GPU_PARAMS" --precision "$PRECISION" --ours "metrics/${1#plain-}" \
                --out "$RESULTS/plain" 2>&1 | tee "$RESULTS/logs/$1.log"
            ;;
        *)
            echo "unknown part: $1 (check, bench, bench-variants, bench-adapt, a config of" \
                "params.yaml, adapt-<config>, plain-<config>, seeds-<config>)" >&2
            return 2
            ;;
    esac
}

failed=()
for part in "${parts[@]}"; do
    start=$SECONDS
    run_part "$part" || failed+=("$part")  # a failed part is reported at the end
    echo "$part: $((SECONDS - start)) s" | tee -a "$RESULTS/logs/durations.txt"
done

# An interrupted training leaves its checkpoint: keep the epochs it finished.
"$PYTHON" - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path
import torch
for path in Path("checkpoints").glob("*/*.pt"):
    payload = torch.load(path, map_location="cpu", weights_only=True)
    out = Path(sys.argv[1]) / f"partial-{path.parent.name}-{path.stem}.json"
    out.write_text(json.dumps({"epoch": payload["epoch"], "history": payload["history"]}, indent=1))
    print(f"{path}: interrupted after epoch {payload['epoch']} (checkpoint kept)")
EOF
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
