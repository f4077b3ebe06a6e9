#!/usr/bin/env bash
# Packs the Python packages that bench/gpu_checks.sh needs beyond a stock CUDA + PyTorch image
# (taichi, mitsuba, drjit, OpenEXR, trimesh, pydantic, tomli-w, dill) into one SITE.tar.xz, for a GPU
# machine that cannot reach a package index:
#
#     bash bench/make_site.sh [OUT.tar.xz] [PYTHON_VERSION]     # default .dev/site.tar.xz, 3.12
#     bash bench/gpu_checks.sh .dev/site.tar.xz                 # there
#
# Wheels are downloaded for CPython PYTHON_VERSION on manylinux x86-64 (the GPU machine's Python,
# not this one's), unpacked, and pruned of what the checks never load (Mitsuba's variants other than
# scalar_rgb, llvm_ad_rgb and cuda_ad_rgb, headers, stubs; Taichi's C API and examples): about 61 MB.
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-.dev/site.tar.xz}
PYV=${2:-3.12}
PY=${PY:-python3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
pkgs=$("$PY" - <<'PY'
from importlib.metadata import version
names = ["taichi", "mitsuba", "drjit", "OpenEXR", "trimesh", "pydantic", "pydantic_core", "annotated-types",
         "typing-inspection", "tomli_w", "dill"]
print(" ".join(f"{n}=={version(n)}" for n in names))  # the versions this checkout is tested with
PY
)
plat=""
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 \
         manylinux2014 manylinux1; do
    plat="$plat --platform ${p}_x86_64"
done
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp $plat \
    -d "$W/wheels" $pkgs
mkdir "$W/site"
for w in "$W"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$W/site"; done
cd "$W/site"
rm -rf taichi/_lib/c_api taichi/examples mitsuba/include mitsuba/mitsuba_stubs mitsuba/pkgconfig mitsuba/cmake
rm -f mitsuba/*.pyi
for v in mitsuba/*_ad_*.cpython-*.so mitsuba/scalar_*.cpython-*.so; do
    case "$v" in */scalar_rgb.*|*/llvm_ad_rgb.*|*/cuda_ad_rgb.*) ;; *) rm -f "$v";; esac
done
cd - >/dev/null
mkdir -p "$(dirname "$OUT")"
tar -C "$W/site" -cJf "$OUT.tmp" . && mv "$OUT.tmp" "$OUT"
ls -l "$OUT"
