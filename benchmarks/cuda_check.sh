#!/usr/bin/env bash
# The CUDA path, checked and timed on a machine with an NVIDIA GPU (CPU stays the path every test runs):
#
#     bash benchmarks/cuda_check.sh OUT_DIR [ADRENALMNIST3D_64.npz]
#
# 1. the CUDA tests (mixed-precision training learns and hands back a CPU network; devices resolved);
# 2. `fusion-model demo --device cuda`: the main job end to end with the encoder on the GPU (its external-centre
#    AUCs and stage times are comparable with the CPU demo's in the README; float16 autocast, so not identical);
# 3. with the npz: the AdrenalMNIST3D benchmark on the GPU, the shipped config and the full 64^3 resolution with a
#    stride-2 stem (over the 15-minute CPU budget; the GPU says whether resolution is worth its cost).
# Each step's output is also written to LOG_DIR/NAME.log (default OUT_DIR). PYTHON names the interpreter (default
# python3); DEVICE=cpu runs the same steps on the CPU (to check the script, or for the CPU figures beside the GPU's).
set -uo pipefail
out=${1:?usage: bash benchmarks/cuda_check.sh OUT_DIR [NPZ]}
npz=${2:-}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
logs=${LOG_DIR:-$out}
mkdir -p "$out" "$logs"
export PYTHONUNBUFFERED=1

step() {  # step NAME COMMAND...: run, tee its output to LOG_DIR/NAME.log, print its wall time
    local name=$1 started=$SECONDS
    shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$logs/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc, $((SECONDS - started)) s"
}

fm() { "$py" -c 'import sys; from fusion_model.cli import main; sys.argv[0] = "fusion-model"; sys.exit(main())' "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
                              torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no CUDA device)")'
step tests "$py" -m pytest -q -p no:cacheprovider tests/test_encoder.py -k "cuda or device"
step demo fm demo --out "$out/demo" --device "$device" --bootstrap 500
if [ -n "$npz" ]; then
    amn=("$py" benchmarks/adrenalmnist3d.py "$npz" --device "$device" --bootstrap 200)
    step amn_shipped "${amn[@]}" --out "$out/amn_shipped"
    step amn_64_stride2 "${amn[@]}" --out "$out/amn_64" --set preprocess.spacing_mm=1.0 --set encoder.stem_stride=2
fi
