#!/usr/bin/env bash
# Build llama.cpp's llama-server (CPU only) and a tiny random-weight GGUF model, once.
#
#   bash tools/realserver/build.sh            # or: make realserver
#
# Everything lands in $RS (default ~/.cache/runner-realserver), outside the repo:
#   $RS/bin/llama-server   llama.cpp's OpenAI-compatible server
#   $RS/tiny.gguf          random weights, self-made vocabulary (make_model.py)
# Sources: the llama.cpp tree vendored in the PyPI sdist of llama-cpp-python (so the only
# download is from PyPI); the model needs the PyPI `gguf` package (in a private venv here).
# Re-running is cheap: finished steps are skipped. See docs/REALSERVER.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RS=${RS:-${XDG_CACHE_HOME:-$HOME/.cache}/runner-realserver}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
GGUF_VERSION=${GGUF_VERSION:-0.19.0}
JOBS=${JOBS:-2}
PY=${PY:-python3}
mkdir -p "$RS"
cd "$RS"
t0=$(date +%s)

if [ ! -x bin/llama-server ]; then
  mkdir -p dl
  sdist="dl/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz"
  if [ ! -f "$sdist" ]; then
    # The sdist only; pip prepares its metadata, nothing is compiled here.
    "$PY" -m pip download -q --no-deps --no-binary :all: -d dl \
      "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" > dl/download.log 2>&1 \
      || { tail -30 dl/download.log; exit 1; }
  fi
  src="dl/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}"
  [ -d "$src" ] || tar -C dl -xzf "$sdist"
  gen=()
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  # Static build of only the llama-server target: no web UI (it would be downloaded),
  # no OpenSSL/curl, no tests or examples.
  cmake -S "$src/vendor/llama.cpp" -B build "${gen[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    > build.log 2>&1 || { tail -50 build.log; exit 1; }
  cmake --build build --target llama-server -j "$JOBS" >> build.log 2>&1 \
    || { tail -50 build.log; exit 1; }
  mkdir -p bin
  cp build/bin/llama-server bin/llama-server.tmp
  mv bin/llama-server.tmp bin/llama-server
  echo "llama-server built in $(( $(date +%s) - t0 )) s"
fi

if [ ! -f tiny.gguf ]; then
  [ -x venv/bin/python ] || "$PY" -m venv venv
  venv/bin/pip install -q "gguf==${GGUF_VERSION}" numpy > venv.log 2>&1 || { tail -30 venv.log; exit 1; }
  venv/bin/python "$HERE/make_model.py" --out tiny.gguf.tmp
  mv tiny.gguf.tmp tiny.gguf
fi
echo "realserver ready in $RS ($(( $(date +%s) - t0 )) s)"
