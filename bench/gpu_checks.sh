#!/usr/bin/env bash
# Every GPU check of the issues in one run on a CUDA machine (issues 4, 6, 7): the `gpu` tests, the
# training throughput of each preset, the path tracer against Mitsuba's cuda_ad_rgb at 512^2 and
# 1024^2, and path-traced dataset generation. Results (JSON + log) go to $OUT (default
# bench/results/gpu/). Each step has its own time limit so that one hang cannot eat the rest.
#
#     bash bench/gpu_checks.sh [SITE.tar.xz]
#     STEPS="tests pt512 dataset pt1024 train_cli" bash bench/gpu_checks.sh   # a subset, in this order
#
# Steps: tests (pytest -m gpu), train (bench/train.py, each preset), pt512, dataset, pt1024,
# train_compile (bench/train.py, paper with torch.compile), train_cli (`trirender train --compile`
# end to end on a fresh rasterized dataset; its metrics.csv goes to the log). Default: all of them.
# Not in the default: ab (bench/ab.py run on the GPU: the trees `python bench/ab.py prepare REV ...`
# exported to .dev/ab here, which the GPU machine must receive, timed in alternation).
#
# SITE.tar.xz: optional site-packages (taichi, mitsuba, drjit, pydantic, trimesh, ...) for a machine
# that cannot install them (made by bench/make_site.sh); it is unpacked to /tmp/site and put on
# PYTHONPATH.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
LOG=$OUT/gpu_checks.log
export PYTHONUNBUFFERED=1
if [ -n "${1:-}" ]; then
    "${PY:-python3}" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall('/tmp/site')" "$1" \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PY:-python3}

step() {  # step SECONDS command...: run with a time limit, log everything, never stop the script
    local limit=$1; shift
    echo "=== $(date +%T) [${limit}s] $*" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | grep -v "^\[Taichi\] version" | tee -a "$LOG"
    echo "=== exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

step 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 60 "$PY" -c "import torch, taichi, numba, numpy; print(torch.__version__, torch.cuda.get_device_name(0), taichi.__version__, numba.__version__, numpy.__version__)"
STEPS=${STEPS:-"tests train pt512 dataset pt1024 train_compile train_cli"}
want() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }

want tests && step 180 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_pathtracer.py tests/test_train.py
want train && step 150 "$PY" bench/train.py --device cuda --presets paper,small,tiny --variants "0,0,0;1,1,0" --steps 20 --warmup 5 \
    --child-timeout 90 --out "$OUT/train_gpu.json"
want pt512 && step 160 "$PY" bench/pathtracer.py --backend gpu --size 512 --mitsuba-variants cuda_ad_rgb,llvm_ad_rgb \
    --make-reference 4096 --out "$OUT/pathtracer_gpu512.json"
want dataset && step 90 "$PY" bench/dataset.py --renderers path --path-scenes 100 --out "$OUT/dataset_gpu.json"
want pt1024 && step 120 "$PY" bench/pathtracer.py --backend gpu --size 1024 --mitsuba-variants cuda_ad_rgb --rounds 1 \
    --mesh-tris 0 --make-reference 2048 --out "$OUT/pathtracer_gpu1024.json"
want train_compile && step 150 "$PY" bench/train.py --device cuda --presets paper --variants "1,1,1" --steps 20 --warmup 5 \
    --child-timeout 140 --append --out "$OUT/train_gpu.json"
want ab && step 400 "$PY" bench/ab.py run --backend gpu --size 512 --repeats 9 --rounds 3 --out "$OUT/ab_gpu.json"
if want train_cli; then
    # What a user runs: rasterize a dataset, then train the paper model with torch.compile for
    # 120 s of wall time (compilation included) and keep the run's metrics.
    D=/tmp/gpu_checks_data; R=/tmp/gpu_checks_run; rm -rf "$D" "$R"
    step 90 "$PY" -m trirender dataset generate rooms_ring --out "$D" --scenes 2000 --workers 8
    step 170 "$PY" -m trirender train "$D" --out "$R" --preset paper --device cuda --compile \
        --minutes 2 --no-progress
    step 10 cat "$R/metrics.csv"
fi
echo "=== done $(date +%T)" | tee -a "$LOG"
