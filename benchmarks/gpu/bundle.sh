#!/usr/bin/env bash
# Builds, on a machine with the internet and the data folder, what benchmarks/gpu/device.sh needs
# on an offline GPU host that has Python 3.12, torch and the CUDA 13 libraries but none of
# eostream's other packages, when files can only reach it in parts of a few tens of MiB:
#
#   * site.tar.xz: cp312 wheels of onnxruntime-gpu (CUDA 13 build) and the packages the
#     benchmarks import that such a host lacks, each checked against its hash in
#     benchmarks/gpu/host-wheels.txt (written on the first run), unpacked; the CUDA provider's
#     kernels pruned to one GPU architecture (prune_fatbin.py: 255 MB of wheel becomes ~110 MB of
#     bundle);
#   * data.tar.xz: the EuroSAT RGB patches and the 29RKH tile from $EOSTREAM_DATA_DIR;
#   * rest.tar.xz: cache/, bench_full_tile's model (fp32, int8, MLM item, test windows) from
#     $EOSTREAM_BENCH_CACHE, built first with `bench_full_tile.py --size 256` if missing; and
#     split.json, eurosat_rgb_recipe's train/val/test split (the catalogue's, seed 42).
#
# The bundle is one tar cut into parts of PART_MIB, each in a folder .gpuN/ of its own at the
# repository root (git-ignored through .git/info/exclude), with bundle.sha256 in the last.
#
#   EOSTREAM_DATA_DIR=/path/to/data EOSTREAM_BENCH_CACHE=$PWD/.gpu/cache \
#       benchmarks/gpu/bundle.sh [SM (90)] [PART_MIB (54)]
set -euo pipefail
cd "$(dirname "$0")/../.."
sm=${1:-90}
part_mib=${2:-54}
work=.gpu
: "${EOSTREAM_DATA_DIR:?the data folder}"
: "${EOSTREAM_BENCH_CACHE:=$PWD/$work/cache}"
export EOSTREAM_BENCH_CACHE
python=${PYTHON:-.venv/bin/python}
mkdir -p "$work/wheels" "$work/bundle"

if [[ ! -f $work/bundle/site.tar.xz ]]; then  # built once; delete it to rebuild
  # Versions as in uv.lock; packages the host has (numpy, torch, pillow, onnx, httpx, ...) left out.
  wheels=(
    onnxruntime-gpu==1.31.1 pydantic==2.14.3 pydantic-core==2.50.4 pydantic-settings==2.16.3
    python-dotenv==1.2.4 typing-inspection==0.4.5 annotated-types==0.8.0 typing-extensions==4.16.0
    pystac==1.15.2 stac-model==0.7.0 rasterio==1.4.4 affine==3.0.1 cligj==0.7.2
    click-plugins==1.1.1.2 shapely==2.2.0 SQLAlchemy==2.1.9 cloudevents==2.2.0 deprecation==2.1.0
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
    orjson==3.13.0
  )
  # their dependencies that the host has already
  host=(numpy packaging attrs click certifi urllib3 six python-dateutil pyparsing)
  # Every wheel is checked against the hash pinned for it in $pinned: the pins above and their
  # dependencies, resolved for cp312 manylinux_2_28 (uv.lock cannot give these hashes: it holds
  # cp311 wheels only, and no onnxruntime-gpu). Without the file, it is resolved from the index
  # and written once: review and commit it; every later bundle then gets exactly those files.
  pinned=benchmarks/gpu/host-wheels.txt
  if [[ ! -f $pinned ]]; then
    omit=()
    for p in "${host[@]}"; do omit+=(--no-emit-package "$p"); done
    printf '%s\n' "${wheels[@]}" | "${UV:-uv}" pip compile - --quiet --generate-hashes \
      --no-header --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
      --only-binary :all: "${omit[@]}" -o "$pinned"
    echo "wrote $pinned (hashes from the index): review it and commit it" >&2
  fi
  rm -rf "$work/wheels" && mkdir -p "$work/wheels"
  python3 -m pip download --quiet --require-hashes --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$work/wheels" -r "$pinned"

  site=$work/site
  rm -rf "$site" && mkdir -p "$site"
  for w in "$work"/wheels/*.whl; do
    case $(basename "$w") in  # what the host has already
      numpy-*|packaging-*|attrs-*|click-8*|certifi-*|urllib3-*|six-*|python_dateutil-*|pyparsing-*) ;;
      *) unzip -q -o "$w" -d "$site" ;;
    esac
  done
  python3 benchmarks/gpu/prune_fatbin.py "$site/onnxruntime/capi/libonnxruntime_providers_cuda.so" "$sm"
  tar -C "$site" -cf - . | xz -T0 -6 > "$work/bundle/site.tar.xz"
fi
if [[ ! -f $work/bundle/data.tar.xz ]]; then
  tar -C "$EOSTREAM_DATA_DIR" -cf - eurosat_rgb \
    sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled | xz -T0 -6 > "$work/bundle/data.tar.xz"
fi

model=$EOSTREAM_BENCH_CACHE/model-rgb-e3-s42
[[ -f $model/rgb.int8.onnx ]] || "$python" benchmarks/inference/bench_full_tile.py --size 256
rest=$work/rest
rm -rf "$rest" && mkdir -p "$rest/cache"
cp -r "$model" "$rest/cache/"  # without its training cache and calibration patches
rm -rf "$rest/cache/model-rgb-e3-s42/cache" "$rest/cache/model-rgb-e3-s42/rgb/calibration.npy"
"$python" - "$rest/split.json" <<'EOF'
import argparse, importlib.util, sys
from pathlib import Path
from eostream.shared.settings import load_settings
from eostream.trainer.settings import TrainerSettings
spec = importlib.util.spec_from_file_location("recipe", "benchmarks/train/eurosat_rgb_recipe.py")
recipe = importlib.util.module_from_spec(spec); spec.loader.exec_module(recipe)
out = Path(sys.argv[1]); out.unlink(missing_ok=True)
args = argparse.Namespace(split_file=out, samples_per_class=None)
print({k: len(v) for k, v in recipe.split_patches(load_settings(TrainerSettings, bus="memory"), args).items()})
EOF
tar -C "$rest" -cf - . | xz -T0 -6 > "$work/bundle/rest.tar.xz"

rm -rf .gpu[0-9]*
tar -C "$work/bundle" -cf "$work/bundle.tar" .
sha256sum < "$work/bundle.tar" | cut -d' ' -f1 > "$work/bundle.sha256"
split -b "${part_mib}M" -d -a 2 "$work/bundle.tar" "$work/part-"
n=0
for part in "$work"/part-*; do
  n=$((n + 1)); mkdir -p ".gpu$n"; mv "$part" ".gpu$n/"
done
cp "$work/bundle.sha256" ".gpu$n/"
ls -l .gpu[0-9]*/
echo "bundle: $(du -h "$work/bundle.tar" | cut -f1) in $n parts; carry .gpu1 .. .gpu$n, one a call"
