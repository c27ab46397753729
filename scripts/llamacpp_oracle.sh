#!/usr/bin/env bash
# Builds llama.cpp's llama-perplexity and llama-quantize from the llama-cpp-python sdist (CPU only), converts a
# shipped Llama-architecture checkpoint to GGUF f32, quantizes it to Q8_0 and Q4_0 and records llama-perplexity's
# --kl-divergence statistics as the fixture that tests/metrics/test_llamacpp_oracle.py matches.
#
# usage: scripts/llamacpp_oracle.sh [build|fixture|all]   (default: all)
# env:   WORK      scratch folder for the sdist and the build (default /tmp/qsens-llamacpp)
#        PYTHON    python with torch, transformers, numpy, safetensors, sentencepiece (default: .venv or python3)
#        JOBS      parallel compile jobs (default 2; the machine is shared)
set -euo pipefail

STAGE="${1:-all}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/tmp/qsens-llamacpp}"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
JOBS="${JOBS:-2}"
SDIST_VERSION="0.3.36"
SRC="$WORK/llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp"
BUILD="$WORK/build"
BIN="$BUILD/bin"

CHECKPOINT="$REPO/checkpoints/gutenberg/h32/s0/wsd-f0.4/h32-s0-wsd-f0.4-d033.554M"
FIXTURE="$REPO/tests/fixtures/llamacpp"
N_CTX=128
N_CHUNKS=24

build() {
    mkdir -p "$WORK"
    if [ ! -d "$SRC" ]; then
        (cd "$WORK" && "$PYTHON" -m pip download "llama-cpp-python==$SDIST_VERSION" --no-binary :all: --no-deps -d .)
        tar -xzf "$WORK/llama_cpp_python-$SDIST_VERSION.tar.gz" -C "$WORK"
    fi
    # GGML_NATIVE=OFF: no -march=native, so the kernels (and their rounding) do not depend on the build host's CPU.
    # C++ at -O1 compiles ~2x faster on a shared 2-core machine; the C kernels (ggml.c, quants) stay at -O3 and
    # neither level enables fast-math, so the arithmetic is IEEE either way.
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" -DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF \
        -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF
    nice -n 5 cmake --build "$BUILD" --config Release -j"$JOBS" --target llama-perplexity llama-quantize
}

fixture() {
    "$FIXTURE/make_fixture.sh" "$SRC" "$BIN" "$CHECKPOINT" "$FIXTURE" "$N_CTX" "$N_CHUNKS" "$PYTHON"
}

case "$STAGE" in
    build) build ;;
    fixture) fixture ;;
    all) build; fixture ;;
    *) echo "unknown stage '$STAGE' (allowed: build, fixture, all)" >&2; exit 2 ;;
esac
