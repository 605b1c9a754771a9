#!/usr/bin/env bash
# What a GPU node with no internet lacks to run benchmarks/gpu_throughput.py, in one folder:
# wheels of the packages below at the versions installed here (for the node's Python, default
# 3.12, x86_64; without their own dependencies, so the node's PyTorch, numpy, pyarrow and numba
# are used as they are), and the example records. Run it from the repository root:
#
#   benchmarks/gpu_node_bundle.sh .whl [PYTHON_VERSION]
#
# then, on the node, from a copy of the repository with the folder beside it:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD CAPSFUS_SHARED=$PWD/.whl/shared python3 benchmarks/gpu_throughput.py --json gpu.json
set -euo pipefail
bundle=${1:?usage: benchmarks/gpu_node_bundle.sh FOLDER [PYTHON_VERSION]}
python_version=${2:-3.12}
packages=(transformers tokenizers huggingface_hub safetensors accelerate submitit zstandard)
shared=${CAPSFUS_SHARED:-../shared}

pins=()
for package in "${packages[@]}"; do
    pins+=("$package==$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package")")
done
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
rm -rf "$bundle"
mkdir -p "$bundle/shared/data"
python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$python_version" \
    "${platforms[@]}" -d "$bundle" "${pins[@]}"
cp "$shared/data/capsfusion_example_5k.json" "$bundle/shared/data/"
echo "gpu_node_bundle: ${pins[*]} and the example records in $bundle ($(du -sh "$bundle" | cut -f1))"
