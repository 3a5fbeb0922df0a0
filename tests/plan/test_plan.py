"""`ollama-airllm plan`: model resolution, the header-only facts, every path, and the decision it explains."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ollama_airllm import fit
from ollama_airllm.devtools import tinymodel
from ollama_airllm.plan.model import read_model

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "packaging" / "profiles").glob("*.yaml"))
MAIN = [sys.executable, "-c", "from ollama_airllm.cli import main; main()"]
GiB = 2**30
DESKTOP_THREADS = "16"
"""llama-server's threads on the reference profiles' machines (plan's default is this machine's cores)."""
PATH_KEYS = {
    "path",
    "feasible",
    "gpu_layers",
    "vram_bytes",
    "ram_bytes",
    "decode_tps",
    "ttft_s",
    "ttft_16k_s",
    "workload_s",
}


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAIN, "plan", *args], capture_output=True, text=True, timeout=120)


def plan_json(*args: str) -> dict:
    if "--threads" not in args:
        args = (*args, "--threads", DESKTOP_THREADS)
    result = plan(*args, "--json", "--calibration", "/nonexistent/calibration.json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def models(tmp_path_factory, ggufs) -> dict[str, Path]:
    """A 70B-shaped dense model, a Qwen3-30B-A3B-shaped MoE, an 8B (sparse headers) and a real tiny one."""
    d = tmp_path_factory.mktemp("models")
    hf = tinymodel.make_hf_model(d / "hf", n_layers=2)
    return {
        "dense70": ggufs.write(d / "dense70.gguf", ggufs.LLAMA_70B),
        "moe30": ggufs.write(d / "moe30.gguf", ggufs.QWEN3_30B_A3B),
        "dense8": ggufs.write(d / "dense8.gguf", ggufs.LLAMA_8B),
        "tiny": tinymodel.write_gguf(hf, d / "tiny.gguf", qtype="Q8_0"),
    }


def test_json_schema(models):
    result = plan_json(str(models["moe30"]))
    assert set(result) == {"model", "machine", "workload", "paths", "decision"}
    assert set(result["decision"]) == {"path", "airllm", "n_cpu_moe", "reason", "warnings"}
    assert set(result["workload"]) == {"takeover", "prompt_tokens", "output_tokens"}
    assert set(result["machine"]) >= {
        "profile",
        "gpus",
        "usable_vram_bytes",
        "ram_free_bytes",
        "calibration",
        "rates",
    }
    assert [p["path"] for p in result["paths"]] == ["all-gpu", "fit", "cpu-moe", "runner"]
    for p in result["paths"]:
        assert set(p) == PATH_KEYS and p["decode_tps"] > 0 and p["ttft_16k_s"] > 0, p
    assert "documented defaults" in result["machine"]["calibration"]
    assert "llama-server on 16 CPU threads" in result["machine"]["calibration"]
    defaults = fit.rates_from_calibration({}, result["model"]["facts"]["weight_type"], 16)
    assert result["machine"]["rates"] == {k: float(v) for k, v in vars(defaults).items()}
    assert result["machine"]["rates"]["cpu_weight_read"] == 16 * fit.DEFAULT_RATES.cpu_weight_read


def test_few_llama_server_threads_make_its_cpu_part_compute_bound(models):
    """llama.cpp's CPU decode runs at its per-thread rate times the threads, not at memory speed: on one
    thread a dense 70B's CPU-side layers are slower than the runner's streaming, on 16 they are not."""
    profile = str(ROOT / "packaging/profiles/rx7900xtx.yaml")
    one = plan_json(str(models["dense70"]), "--profile", profile, "--threads", "1")
    desktop = plan_json(str(models["dense70"]), "--profile", profile)
    fit_one, fit_desktop = ({p["path"]: p for p in r["paths"]}["fit"] for r in (one, desktop))
    assert one["machine"]["rates"]["cpu_weight_read"] == fit.DEFAULT_RATES.cpu_weight_read
    cpu_bytes = fit_one["ram_bytes"]  # a dense model reads every CPU-side byte per token
    assert 1 / fit_one["decode_tps"] >= cpu_bytes / (fit.DEFAULT_RATES.cpu_weight_read * 1e9)
    assert fit_desktop["decode_tps"] > 4 * fit_one["decode_tps"]
    assert one["decision"]["path"] == "runner" and desktop["decision"]["path"] == "fit"


def test_a_bad_thread_count_is_a_usage_error(models):
    result = plan(str(models["tiny"]), "--threads", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--threads" in result.stderr


def test_header_facts_are_the_tensors_sums(models, ggufs):
    """The facts plan reads equal the sums over the shapes the file was written with."""
    s = ggufs.QWEN3_30B_A3B
    info = read_model(models["moe30"], "moe30", 32768, 1)
    tensors = ggufs._tensors(s)
    sizes = {name: ggufs.nbytes(shape, q) for name, shape, q in tensors}
    f = info.facts
    assert f.weight_bytes == sum(sizes.values())
    assert f.layer_bytes == sum(n for name, n in sizes.items() if name.startswith("blk."))
    assert f.expert_bytes == sum(n for name, n in sizes.items() if "_exps." in name)
    assert (f.n_layer, f.n_expert, f.n_expert_used, f.weight_type) == (48, 128, 8, "q4_k")
    assert f.kv_bytes == 2 * 48 * 4 * (2048 // 32) * 32768 * 2
    assert info.model_bytes == models["moe30"].stat().st_size + f.kv_bytes


def test_context_is_clamped_to_the_training_context(models):
    info = read_model(models["tiny"], "tiny", 32768, 2)
    assert info.n_ctx == info.n_ctx_train * 2 < 32768 * 2


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_reference_profile_explains_every_model(profile, models):
    """In each reference profile's situation, each model gets every path and a decision that follows the
    auto policy: all on the GPU when it fits usable VRAM, else the faster of llama-server and the runner."""
    for name in ("dense70", "moe30", "dense8"):
        result = plan_json(str(models[name]), "--profile", str(profile))
        decision, usable = result["decision"], result["machine"]["usable_vram_bytes"]
        by_path = {p["path"]: p for p in result["paths"]}
        assert set(by_path) == {"all-gpu", "fit", "runner"} | ({"cpu-moe"} if name == "moe30" else set())
        size = result["model"]["model_bytes"]
        if size <= usable:
            assert decision["path"] == "all-gpu" and "<= usable VRAM" in decision["reason"], (name, decision)
            continue
        assert by_path["all-gpu"]["feasible"] is False
        if size - usable > result["machine"]["ram_free_bytes"]:
            assert decision["path"] == "runner" and "does not fit RAM + VRAM" in decision["reason"]
            continue
        llama = (
            by_path["cpu-moe"] if "cpu-moe" in by_path and by_path["cpu-moe"]["feasible"] else by_path["fit"]
        )
        faster = "runner" if by_path["runner"]["workload_s"] < llama["workload_s"] else llama["path"]
        assert decision["path"] == faster, (profile.stem, name, decision)
        assert " tok/s vs llama-server " in decision["reason"] and "MiB" in decision["reason"]
        if decision["path"] == "cpu-moe":
            assert decision["n_cpu_moe"] == llama["gpu_layers"] > 0
            assert f"--n-cpu-moe {decision['n_cpu_moe']}" in decision["reason"]


def test_moe_on_a_24_gib_card_gets_the_smallest_n_that_fits(models):
    """By hand: the MoE's model_bytes minus N layers of experts must fit usable VRAM, N - 1 must not."""
    result = plan_json(str(models["moe30"]), "--profile", str(ROOT / "packaging/profiles/rx7900xtx.yaml"))
    f, size = result["model"]["facts"], result["model"]["model_bytes"]
    usable = result["machine"]["usable_vram_bytes"]
    per_layer_experts = f["expert_bytes"] / f["n_layer"]
    n = result["decision"]["n_cpu_moe"]
    assert result["decision"]["path"] == "cpu-moe"
    assert size - n * per_layer_experts <= usable < size - (n - 1) * per_layer_experts


def test_dense_70b_on_a_24_gib_card_stays_on_llama_server_fit(models):
    """The issue's point: the CPU computes a dense model's overflow from RAM faster than PCIe streams it."""
    result = plan_json(str(models["dense70"]), "--profile", str(ROOT / "packaging/profiles/rx7900xtx.yaml"))
    assert result["decision"]["path"] == "fit" and not result["decision"]["airllm"]
    by_path = {p["path"]: p for p in result["paths"]}
    assert by_path["fit"]["decode_tps"] > by_path["runner"]["decode_tps"]


def _profile_with(tmp_path: Path, **airllm) -> Path:
    data = yaml.safe_load((ROOT / "packaging/profiles/rx7900xtx.yaml").read_text())
    data["airllm"].update(airllm)
    out = tmp_path / "profile.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def test_the_profile_policy_and_workload_reach_the_decision(models, tmp_path):
    never = plan_json(str(models["moe30"]), "--profile", str(_profile_with(tmp_path, takeover="never")))
    assert never["decision"]["reason"].startswith("llama-server: OLLAMA_AIRLLM_TAKEOVER=never")
    assert never["decision"]["n_cpu_moe"] > 0
    over = plan_json(str(models["dense70"]), "--profile", str(_profile_with(tmp_path, takeover="over-vram")))
    assert over["decision"]["path"] == "runner" and over["workload"]["takeover"] == "over-vram"
    long = plan_json(
        str(models["dense70"]),
        "--profile",
        str(_profile_with(tmp_path, workload_prompt_tokens=65536, workload_output_tokens=16)),
    )
    assert "workload 65536+16 tokens" in long["decision"]["reason"]


def test_a_bad_takeover_in_the_profile_is_one_line(models, tmp_path):
    result = plan(str(models["tiny"]), "--profile", str(_profile_with(tmp_path, takeover="sometimes")))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "airllm.takeover" in result.stderr and "sometimes" in result.stderr, result.stderr


def test_calibrated_rates_are_used(models, tmp_path):
    calibrate = subprocess.run(
        [*MAIN, "calibrate", "--quick", "-o", str(tmp_path / "cal.json"), "--models-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert calibrate.returncode == 0, calibrate.stderr
    result = plan(str(models["tiny"]), "--json", "--calibration", str(tmp_path / "cal.json"))
    doc = json.loads(result.stdout)
    cal = json.loads((tmp_path / "cal.json").read_text())["rates"]
    assert doc["machine"]["calibration"].startswith(f"calibration {tmp_path / 'cal.json'}")
    assert doc["machine"]["rates"]["host_memory_read"] == cal["host_memory_read"]["value"]


def _pull(models_dir: Path, name: str, tag: str, blob: Path, namespace: str = "library") -> None:
    """Lay out a model as `ollama pull` stores it: the blob by digest, the manifest naming it."""
    data = blob.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (models_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (models_dir / "blobs" / f"sha256-{digest}").write_bytes(data)
    manifest = models_dir / "manifests" / "registry.ollama.ai" / namespace / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 1},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)},
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))


def test_an_ollama_name_resolves_through_the_manifest(models, tmp_path):
    _pull(tmp_path, "tiny", "latest", models["tiny"])
    _pull(tmp_path, "tiny", "q8", models["tiny"], namespace="someone")
    for name in ("tiny", "tiny:latest", "someone/tiny:q8", "registry.ollama.ai/someone/tiny:q8"):
        doc = plan_json(name, "--models-dir", str(tmp_path))
        assert doc["model"]["path"].startswith(str(tmp_path / "blobs" / "sha256-")), name
        assert doc["model"]["name"] == name and doc["decision"]["path"] == "all-gpu"


@pytest.mark.parametrize(
    ("model", "code", "message"),
    [
        ("nosuch", 1, "model nosuch not found: no manifest"),
        ("nosuch:7b", 1, "library/nosuch/7b (ollama pull nosuch:7b)"),
        ("/no/such/file.gguf", 1, "no such file"),
        ("bad name!", 2, "is not a GGUF file or an Ollama name"),
        ("a/b/c/d", 2, "is not a GGUF file or an Ollama name"),
        ("../x", 1, "no such file"),
    ],
)
def test_a_bad_model_is_one_line(tmp_path, model, code, message):
    result = plan(model, "--models-dir", str(tmp_path))
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_file_that_is_not_gguf_is_a_usage_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = plan(str(tmp_path / "notes.txt"))
    assert result.returncode == 2 and "not a readable GGUF file" in result.stderr, result.stderr


def test_a_manifest_without_a_model_layer(tmp_path):
    manifest = tmp_path / "manifests/registry.ollama.ai/library/empty/latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": []}))
    result = plan("empty", "--models-dir", str(tmp_path))
    assert result.returncode == 1 and "no layer of type application/vnd.ollama.image.model" in result.stderr


def test_the_table(models):
    result = plan(str(models["moe30"]), "--calibration", "/nonexistent.json")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in (
        "llama-server, all on the GPU",
        "--fit",
        "--n-cpu-moe N",
        "AirLLM runner",
        "TTFT 16k s",
        "Ollama will take: llama-server --n-cpu-moe N",
        "Why: llama-server: runner",
    ):
        assert text in out, out
