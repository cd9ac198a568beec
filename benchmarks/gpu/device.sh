#!/usr/bin/env bash
# The GPU benchmarks in one call, on a lent GPU host, from the repository root, with the parts
# that benchmarks/gpu/bundle.sh made already there (.gpuN/ folders, carried one a call; each
# call's command may run `benchmarks/gpu/device.sh --gather` to keep its part outside the tree):
#
#   benchmarks/gpu/device.sh OUT_DIR [SECONDS (480)]
#
# 1. bench_gpu.py: onnxruntime windows/s on CUDA against the host's CPU, CUDA asserted;
# 2. bench_full_tile.py: a full 10980x10980 tile through inference's pipeline on CUDA (asserted)
#    and on the CPU (fp32 and int8), times, peak RSS and map agreement;
# 3. eurosat_rgb_recipe.py: the full-resolution ResNet-18 on EuroSAT RGB with the whole recipe,
#    its epochs chosen to end within what is left of SECONDS.
# Each step logs to OUT_DIR; a failed step does not stop the next.
set -uo pipefail
work=/tmp/eostream-gpu
gather() {
  mkdir -p "$work/parts"
  for f in .gpu[0-9]*/*; do  # each part once (a later call may find earlier folders there)
    [[ -e $f && ! -e $work/parts/${f##*/} ]] && cp "$f" "$work/parts/"
  done
  ls -l "$work/parts"
}
if [[ ${1:-} == --gather ]]; then gather; exit; fi
out=${1:?output folder}
budget=${2:-480}
start=$SECONDS
mkdir -p "$out"
exec > >(tee -a "$out/device.log") 2>&1
say() { echo "[$(date -u +%H:%M:%S) +$((SECONDS - start))s] $*"; }

say "gathering the bundle"
gather
if [[ ! -d $work/site/onnxruntime ]]; then
  cat "$work"/parts/part-* > "$work/bundle.tar"
  want=$(cat "$work/parts/bundle.sha256")
  have=$(sha256sum < "$work/bundle.tar" | cut -d' ' -f1)
  [[ $want == "$have" ]] || { say "bundle checksum mismatch: a part is missing"; exit 1; }
  mkdir -p "$work/site" "$work/data"
  tar -xf "$work/bundle.tar" -C "$work" && rm "$work/bundle.tar"
  tar -xJf "$work/site.tar.xz" -C "$work/site" & site=$!
  tar -xJf "$work/data.tar.xz" -C "$work/data" & data=$!
  tar -xJf "$work/rest.tar.xz" -C "$work" || say "rest.tar.xz: unpacking failed"
  wait "$site" || say "site.tar.xz: unpacking failed"
  wait "$data" || say "data.tar.xz: unpacking failed"
fi
say "unpacked: $(du -sh "$work/site" | cut -f1) of packages, $(du -sh "$work/data" | cut -f1) of data"
# the workspace's own packages run from their sources; their metadata says which version
for project in shared services/*; do
  name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$project/pyproject.toml")
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$project/pyproject.toml")
  info=$work/site/${name//-/_}-$version.dist-info
  mkdir -p "$info" && printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' "$name" "$version" \
    > "$info/METADATA"
done

# onnxruntime-gpu finds CUDA 13, cuBLAS and cuDNN in the host's nvidia wheels (torch's)
nvidia=$(python3 -c "import nvidia, os; print(list(nvidia.__path__)[0])" 2>/dev/null)
libs=$(find "$nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
src=$PWD/shared/src:$PWD/services/inference/src:$PWD/services/trainer/src
export PYTHONPATH=$work/site:$src:$PWD/services/registry-bridge/src
export EOSTREAM_DATA_DIR=$work/data EOSTREAM_BENCH_CACHE=$work/cache
export TRAINER_CACHE_DIR=$work/trainer-cache TRAINER_NUM_THREADS=$(nproc) PYTHONUNBUFFERED=1
nvidia-smi | tee "$out/nvidia-smi.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# a CUDA session of the real model, or why not (a missing library shows in ldd)
python3 - "$work/cache/model-rgb-e3-s42/rgb.onnx" <<'EOF' || ldd "$work/site/onnxruntime/capi/libonnxruntime_providers_cuda.so" | grep -i "not found"
import sys, onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
s = ort.InferenceSession(sys.argv[1], providers=["CUDAExecutionProvider"])
print("a session runs on", s.get_providers())
sys.exit(s.get_providers()[0] != "CUDAExecutionProvider")
EOF
lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200

step() {  # name seconds command...
  local name=$1 limit=$2; shift 2
  say "== $name (up to ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  grep -v -E "^\s+20[0-9]{2}-|Warning|warn\(" "$out/$name.log" | tail -30
  say "$name: rc=$rc"
}

steps=${STEPS:-bench_gpu full_tile train}
[[ $steps == *bench_gpu* ]] && step bench_gpu 120 python3 benchmarks/inference/bench_gpu.py --json "$out/bench_gpu.json"
[[ $steps == *full_tile* ]] && step full_tile 300 python3 benchmarks/inference/bench_full_tile.py --providers cuda cpu \
  --threads "$(nproc)" --json "$out/full_tile.json"
for batch in ${CUDA_BATCHES:-}; do  # the full tile on CUDA at other batch sizes
  step "full_tile_b$batch" 120 python3 benchmarks/inference/bench_full_tile.py --providers cuda \
    --precisions fp32 --batch-size "$batch" --threads "$(nproc)" --json "$out/full_tile_b$batch.json"
done
train_steps=${TRAIN_STEPS:-ema}
fits=$(wc -w <<< "$train_steps")
left=$((budget - (SECONDS - start)))
# per fit; patches, warm-up and test take ~75 s
minutes=$(python3 -c "print(max(0.5, ($left - 75) / 60 / $fits))")
[[ $steps == *train* ]] && step train "$left" python3 benchmarks/train/eurosat_rgb_recipe.py \
  --architecture resnet18 --batch-size 128 --steps $train_steps --epochs 40 --minutes "$minutes" \
  --split-file "$work/split.json"
nvidia-smi --query-gpu=name,memory.used,memory.total,temperature.gpu --format=csv
say "done"
