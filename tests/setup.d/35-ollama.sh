# shellcheck shell=bash
# The patched Ollama for the e2e suite (tests/e2e), built the way the PKGBUILD's prepare() and build()
# do it: Ollama's Go module from the module proxy, runner/airllmrunner's non-test files copied in as
# github.com/ollama/ollama/airllmrunner, airllm.patch applied with `patch -Np1`, then `go build` with
# the version ldflags. Cached under $OAR_CACHE keyed by the version and the hash of the patch and the
# Go package. Its lib/ollama holds the reference llama-server and llama-quantize (30-llama-server.sh),
# where Ollama looks for them. Exports OLLAMA_BIN.
OAR_OLLAMA_VERSION=0.34.4
oar_ol_key="$(cat "$REPO_ROOT/airllm.patch" "$REPO_ROOT"/runner/airllmrunner/*.go | sha256sum | cut -c1-12)"
oar_ol_dir="$OAR_CACHE/ollama-$OAR_OLLAMA_VERSION-$oar_ol_key"
if [[ ! -x "$oar_ol_dir/bin/ollama" ]]; then
  oar_step "building the patched Ollama v$OAR_OLLAMA_VERSION (once per patch; a few minutes)"
  oar_ol_tmp="$(mktemp -d "$OAR_CACHE/.ollama-build.XXXXXX")"
  oar_ol_mod="$(go mod download -json "github.com/ollama/ollama@v$OAR_OLLAMA_VERSION" | jq -r .Dir)"
  cp -r "$oar_ol_mod" "$oar_ol_tmp/ollama"
  chmod -R u+w "$oar_ol_tmp/ollama"
  install -d "$oar_ol_tmp/ollama/airllmrunner"
  find "$REPO_ROOT/runner/airllmrunner" -maxdepth 1 -name '*.go' ! -name '*_test.go' \
    -exec install -m644 -t "$oar_ol_tmp/ollama/airllmrunner" {} +
  patch -d "$oar_ol_tmp/ollama" -Np1 -i "$REPO_ROOT/airllm.patch" >/dev/null
  (cd "$oar_ol_tmp/ollama" && GOFLAGS="-trimpath -mod=readonly" nice -n 10 go build -o "$oar_ol_tmp/out/bin/ollama" \
    -ldflags "-X=github.com/ollama/ollama/version.Version=$OAR_OLLAMA_VERSION -X=github.com/ollama/ollama/server.mode=release" .)
  rm -rf "$oar_ol_dir"
  mv "$oar_ol_tmp/out" "$oar_ol_dir"
  rm -rf "$oar_ol_tmp"
  unset oar_ol_tmp oar_ol_mod
fi
# Linux layout: bin/ollama finds its helpers in ../lib/ollama.
mkdir -p "$oar_ol_dir/lib/ollama"
ln -sfn "$LLAMA_SERVER_BIN" "$oar_ol_dir/lib/ollama/llama-server"
ln -sfn "$LLAMA_QUANTIZE_BIN" "$oar_ol_dir/lib/ollama/llama-quantize"
export OLLAMA_BIN="$oar_ol_dir/bin/ollama"
unset oar_ol_dir oar_ol_key
