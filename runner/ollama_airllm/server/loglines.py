"""Log lines in llama.cpp's exact phrasing, printed on stdout, for Ollama's memory parser.

Ollama (llm/llama_server.go, memoryParsingWriter) reads from the runner's output:
  `using device ROCm0 (<name>) (<pci id>) - N MiB free`            -> free VRAM at load
  `<component>: <backend> model|KV|compute|output buffer size = X MiB` -> size / size_vram in `ollama ps`
  `offloaded N/M layers to GPU`                                      -> full offload or not
Resident layers (and the resident output head) count as GPU; streamed layers are host memory
(`CPU_Mapped`, as llama.cpp names mmapped weights), so `ollama ps` shows an honest split.
"""

from __future__ import annotations

import sys

MIB = 1024 * 1024


def emit(line: str) -> None:
    sys.stdout.write(line.rstrip("\n") + "\n")
    sys.stdout.flush()


def backend_name(device: str) -> str:
    """llama.cpp's backend buffer name for a torch device: ROCm0 / CUDA0 / CPU."""
    if not device.startswith("cuda"):
        return "CPU"
    import torch

    index = int(device.split(":")[1]) if ":" in device else 0
    return f"{'ROCm' if getattr(torch.version, 'hip', None) else 'CUDA'}{index}"


def device_lines() -> list[str]:
    """`using device ...` for each GPU torch sees (before the model is loaded), like llama.cpp."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        pci = "unknown id"
        if getattr(props, "pci_bus_id", None) is not None:
            pci = (
                f"{getattr(props, 'pci_domain_id', 0):04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            )
        free, _total = torch.cuda.mem_get_info(i)
        out.append(
            f"llama_model_load_from_file_impl: using device {backend_name(f'cuda:{i}')} "
            f"({props.name}) ({pci}) - {free // MIB} MiB free"
        )
    return out


def buffer_line(component: str, backend: str, kind: str, nbytes: int) -> str:
    """e.g. `load_tensors:        ROCm0 model buffer size =  1234.56 MiB` (llama.cpp's %12s / %8.2f)."""
    width = 12 if kind == "model" else 10
    pad = " " if kind == "output" else ""
    return f"{component}: {backend:>{width}} {pad}{kind} buffer size = {nbytes / MIB:8.2f} MiB"


def load_lines(info) -> list[str]:
    """The lines llama.cpp prints while loading, computed from the engine's EngineInfo."""
    gpu = backend_name(info.device)
    on_gpu = gpu != "CPU"
    n_total = info.n_layer + 1  # llama.cpp counts the output layer as offloadable
    n_gpu = (info.n_resident_layers + (1 if info.head_resident else 0)) if on_gpu else 0
    lines = [
        f"print_info: arch             = {info.architecture}",
        f"print_info: n_ctx_train      = {info.n_ctx_train}",
        f"print_info: n_layer          = {info.n_layer}",
        f"print_info: file type        = {info.file_type}",
        f"print_info: file size        = {info.file_size / 2**30:.2f} GiB",
        f"load_tensors: offloaded {n_gpu}/{n_total} layers to GPU",
        buffer_line("load_tensors", "CPU_Mapped", "model", info.host_bytes),
    ]
    if on_gpu:
        lines.append(buffer_line("load_tensors", gpu, "model", info.resident_bytes))
    else:
        lines.append(buffer_line("load_tensors", "CPU", "model", info.resident_bytes))
    lines += [
        f"llama_context: n_seq_max     = {info.n_slots}",
        f"llama_context: n_ctx         = {info.n_ctx * info.n_slots}",
        f"llama_context: n_ctx_seq     = {info.n_ctx}",
        buffer_line("llama_kv_cache", gpu, "KV", info.kv_bytes),
        buffer_line("llama_context", gpu, "compute", info.compute_bytes + info.staging_bytes),
        f"load_tensors: layer streaming: {info.n_resident_layers} resident, "
        f"{info.n_streamed_layers} streamed from the file, "
        f"{info.streamed_bytes_per_pass / MIB:.2f} MiB read per token",
    ]
    if info.experts is not None:
        lines.append(expert_line(info.experts))
    if info.graphs is not None and info.graphs.runs:
        runs = ", ".join(_units(a, b, info.n_layer) for a, b in info.graphs.runs)
        lines.append(f"load_tensors: decode graphs: {runs} replayed as one graph each")
    return lines


def _units(a: int, b: int, n_layer: int) -> str:
    """Units a..b-1 as text: "layers 0-39 + output", "layer 7", "output"."""
    last = min(b, n_layer) - 1
    text = "" if a == n_layer else f"layer {a}" if last == a else f"layers {a}-{last}"
    return (f"{text} + output" if text else "output") if b > n_layer else text


def expert_line(st) -> str:
    """The expert residency and the bytes the routed experts of one token read (before any cache hit)."""
    streamed = st.n_moe_layers - st.resident_experts // st.n_expert
    per_token = streamed * st.n_used * st.expert_bytes
    return (
        f"load_tensors: experts: {st.n_used} of {st.n_expert} per token in {st.n_moe_layers} layers, "
        f"{st.resident_experts} resident, cache {st.cache_bytes / MIB:.2f} MiB; "
        f"{per_token / MIB:.2f} MiB of experts read per token at most (hit rate in /props)"
    )
