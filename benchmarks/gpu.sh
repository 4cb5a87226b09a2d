#!/usr/bin/env bash
# Issue #10's GPU figures, each beside the release before it, in one call of the lent GPU machine.
# That machine has torch and CUDA 13 but not our other dependencies, and no network; a session
# has 15 minutes of it, its start included.
#
# Here, with the project's environment active, once per session:
#     bash benchmarks/gpu.sh prepare [COMMIT]      # COMMIT to compare with, default HEAD~1
# puts wheels of the missing packages for its Python 3.12 in .whl/ (the versions installed
# here; faiss as faiss-cpu, since faiss-gpu's CUDA 12 build cannot load there) and COMMIT's
# files in .prev/, both ignored by git. Then, through the device tool:
#     run(command="bash benchmarks/gpu.sh measure", carry=[".whl", ".prev"], timeout_s=600)
# Each figure is printed and kept as JSON in $OUT, the most wanted first, so that a run cut short
# still returns those: 20,000 224 px JPEGs indexed, queries at 1M vectors, 160 12 MP JPEGs
# indexed. COUNT, N, LARGE and DEVICE (20000, 1000000, 160, cuda) make a smaller dry run on a CPU:
#     COUNT=300 N=20000 LARGE=8 DEVICE=cpu bash benchmarks/gpu.sh measure
set -euo pipefail
cd "$(dirname "$0")/.."

MISSING=(open_clip_torch ftfy wcwidth faiss sqlalchemy pydantic pydantic-core annotated-types
    typing-inspection flask itsdangerous blinker flask-cors waitress pillow-heif simplejpeg watchdog)

prepare() {
    local commit=${1:-HEAD~1}
    rm -rf .whl .prev && mkdir .whl .prev
    python - "${MISSING[@]}" <<'EOF' | xargs python -m pip download -q -d .whl --no-deps \
        --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    if name == "faiss":
        for local in ("faiss-gpu", "faiss-cpu"):
            try:
                print(f"faiss-cpu=={version(local)}")
                break
            except PackageNotFoundError:
                pass
    else:
        print(f"{name}=={version(name)}")
EOF
    git archive "$commit" | tar -x -C .prev
    du -sh .whl .prev
}

measure() {
    local count=${COUNT:-20000} n=${N:-1000000} large=${LARGE:-160} device=${DEVICE:-cuda}
    local out=${OUT:-/tmp/gpu-figures}
    local images=/tmp/gpu-224px
    rm -rf "$images" && mkdir -p "$out"
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    if [ "$device" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv; fi
    python3 benchmarks/make_images.py --count "$count" --out "$images" --size 224x224
    python3 benchmarks/index_throughput.py --images "$images" --device "$device" \
        --batch-size 256 --baseline .prev --runs 2 | tee "$out/index_224px.json"
    python3 benchmarks/query_latency.py --n "$n" --device "$device" --json --baseline .prev \
        | tee "$out/query_latency.json"
    python3 benchmarks/index_throughput.py --generate "$large" --device "$device" \
        --baseline .prev --runs 1 | tee "$out/index_12mp.json"
}

"$@"
