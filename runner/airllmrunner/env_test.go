package airllmrunner

import (
	"slices"
	"testing"
)

func TestCleanEnv(t *testing.T) {
	dirs := []string{"/usr/lib/ollama", "/usr/lib/ollama/rocm_v7_2", "/opt/venv/bin"}
	tests := []struct {
		name string
		env  []string
		want []string
	}{
		{
			name: "what Ollama sets for llama-server is dropped, the GPU selection is kept",
			env: []string{
				"PATH=/usr/bin",
				"LD_LIBRARY_PATH=/usr/lib/ollama:/usr/lib/ollama/rocm_v7_2:/opt/rocm/lib",
				"GGML_BACKEND_PATH=/usr/lib/ollama/rocm_v7_2/libggml-hip.so",
				"ROCR_VISIBLE_DEVICES=GPU-4f1c",
				"HIP_VISIBLE_DEVICES=0",
				"HSA_OVERRIDE_GFX_VERSION=11.0.0",
				"LLAMA_MEDIA_MARKER=<__media_x__>",
			},
			want: []string{
				"PATH=/usr/bin",
				"LD_LIBRARY_PATH=/opt/rocm/lib",
				"ROCR_VISIBLE_DEVICES=GPU-4f1c",
				"HIP_VISIBLE_DEVICES=0",
				"HSA_OVERRIDE_GFX_VERSION=11.0.0",
				"LLAMA_MEDIA_MARKER=<__media_x__>",
			},
		},
		{
			name: "LD_LIBRARY_PATH with only Ollama's directories is removed",
			env:  []string{"LD_LIBRARY_PATH=/opt/venv/bin:/usr/lib/ollama/:/usr/lib/ollama/rocm_v7_2/sub:", "HOME=/x"},
			want: []string{"HOME=/x"},
		},
		{
			name: "a sibling directory with a common prefix is kept",
			env:  []string{"LD_LIBRARY_PATH=/usr/lib/ollama-extra:/usr/lib"},
			want: []string{"LD_LIBRARY_PATH=/usr/lib/ollama-extra:/usr/lib"},
		},
		{
			name: "relative entries and entries without '=' are kept as they are",
			env:  []string{"LD_LIBRARY_PATH=lib::/usr/lib/ollama/../local", "ODD"},
			want: []string{"LD_LIBRARY_PATH=lib:/usr/lib/local", "ODD"}[:0:0],
		},
	}
	// The last case: "/usr/lib/ollama/../local" is /usr/lib/local, outside Ollama's directories.
	tests[3].want = []string{"LD_LIBRARY_PATH=lib:/usr/lib/ollama/../local", "ODD"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CleanEnv(tt.env, dirs); !slices.Equal(got, tt.want) {
				t.Errorf("\n got: %q\nwant: %q", got, tt.want)
			}
		})
	}
}

func TestCleanEnvLeavesInputAlone(t *testing.T) {
	env := []string{"LD_LIBRARY_PATH=/usr/lib/ollama", "GGML_BACKEND_PATH=x"}
	before := slices.Clone(env)
	CleanEnv(env, []string{"/usr/lib/ollama"})
	if !slices.Equal(env, before) {
		t.Errorf("input changed: %q", env)
	}
}
