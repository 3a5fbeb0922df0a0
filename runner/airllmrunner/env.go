package airllmrunner

import (
	"path/filepath"
	"slices"
	"strings"
)

// LibraryPathVar is the dynamic loader's search path variable on Linux.
const LibraryPathVar = "LD_LIBRARY_PATH"

// droppedVars are set by Ollama for llama-server's GGML backends only.
var droppedVars = []string{"GGML_BACKEND_PATH"}

// CleanEnv returns the runner's environment: env (as Ollama prepared it for
// llama-server, "KEY=value" entries) without the GGML backend variables and
// without LD_LIBRARY_PATH entries inside ollamaDirs (Ollama's lib/ollama, its
// GPU library directories, the runner's own directory), so PyTorch loads its
// own ROCm libraries. LD_LIBRARY_PATH is removed when nothing is left of it.
// Everything else is kept, notably ROCR_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES
// and HSA_OVERRIDE_GFX_VERSION, which select and describe the GPU.
func CleanEnv(env []string, ollamaDirs []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		key, value, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			out = append(out, kv)
		case slices.Contains(droppedVars, key):
		case key == LibraryPathVar:
			if kept := cleanLibraryPath(value, ollamaDirs); kept != "" {
				out = append(out, key+"="+kept)
			}
		default:
			out = append(out, kv)
		}
	}
	return out
}

// cleanLibraryPath drops empty entries and entries equal to or below one of dirs.
func cleanLibraryPath(value string, dirs []string) string {
	var kept []string
	for _, entry := range filepath.SplitList(value) {
		if entry != "" && !insideAny(entry, dirs) {
			kept = append(kept, entry)
		}
	}
	return strings.Join(kept, string(filepath.ListSeparator))
}

func insideAny(path string, dirs []string) bool {
	path = filepath.Clean(path)
	for _, dir := range dirs {
		if dir == "" {
			continue
		}
		rel, err := filepath.Rel(filepath.Clean(dir), path)
		if err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return true
		}
	}
	return false
}
