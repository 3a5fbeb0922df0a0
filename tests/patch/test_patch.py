"""airllm.patch: it parses, touches only the expected files, stays small, calls what the Go package has."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATCH = ROOT / "airllm.patch"
GO_PACKAGE = ROOT / "runner" / "airllmrunner"

NEW_FILES = {"llm/airllm.go", "llm/airllm_plan_test.go"}
CHANGED_FILES = {"llm/server.go", "llm/llama_server.go"}
MAX_CHANGED_LINES_IN_EXISTING_FILES = 8


def _file_diffs() -> dict[str, str]:
    """The patch split per file: {path: diff text}."""
    parts = re.split(r"^diff --git a/(\S+) b/\S+\n", PATCH.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _added_lines(diff: str) -> list[str]:
    return [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]


def test_git_apply_stat_parses_the_patch(tool):
    git = tool("git")
    result = subprocess.run([git, "apply", "--stat", str(PATCH)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    listed = {line.split("|")[0].strip() for line in result.stdout.splitlines() if "|" in line}
    assert listed == NEW_FILES | CHANGED_FILES
    summary = subprocess.run([git, "apply", "--summary", str(PATCH)], capture_output=True, text=True)
    assert summary.stdout.splitlines() == [f" create mode 100644 {path}" for path in sorted(NEW_FILES)]


def test_patch_touches_only_the_expected_files():
    diffs = _file_diffs()
    assert set(diffs) == NEW_FILES | CHANGED_FILES
    for path in NEW_FILES:
        assert diffs[path].startswith("new file mode 100644\n"), path
    for path in CHANGED_FILES:
        assert "new file mode" not in diffs[path] and "deleted file mode" not in diffs[path], path


def test_changes_to_existing_files_stay_small():
    diffs = _file_diffs()
    changed = sum(
        1
        for path in CHANGED_FILES
        for line in diffs[path].splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )
    assert changed <= MAX_CHANGED_LINES_IN_EXISTING_FILES


def _go_sources() -> str:
    files = sorted(p for p in GO_PACKAGE.glob("*.go") if not p.name.endswith("_test.go"))
    return "\n".join(p.read_text() for p in files)


def test_patch_uses_only_what_the_go_package_exports():
    adapter = "\n".join(_added_lines(_file_diffs()["llm/airllm.go"]))
    used = set(re.findall(r"\bairllmrunner\.([A-Z]\w*)", adapter))
    assert used, "llm/airllm.go no longer calls the decision package"
    sources = _go_sources()
    for name in sorted(used):
        defined = re.search(rf"^(?:func|type) {name}\b", sources, flags=re.M)
        assert defined, f"airllmrunner.{name} is not defined"


def test_patch_imports_the_package_where_prepare_puts_it():
    module = re.search(r"^module (\S+)$", (GO_PACKAGE / "go.mod").read_text(), flags=re.M).group(1)
    assert module == "github.com/ollama/ollama/airllmrunner"
    assert f'\t"{module}"' in _added_lines(_file_diffs()["llm/airllm.go"])


def test_go_package_uses_the_standard_library_only():
    assert "require" not in (GO_PACKAGE / "go.mod").read_text()
    imports = re.findall(r'^\s*(?:import\s+)?"([^"]+)"$', _go_sources(), flags=re.M)
    assert imports and all("." not in path.split("/")[0] for path in imports), imports
