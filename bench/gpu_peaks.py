"""The GPU's roof for `bench/gpu_real_size.py`: peak dense fp16 tensor TFLOP/s and memory bandwidth by
device name (vendor datasheets), and the limits they put on a measured time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# (name fragment, dense fp16/bf16 tensor TFLOP/s, memory GB/s) from vendor datasheets, SXM parts unless
# named. The first fragment found in the lower-cased device name wins, so specific names come first.
GPU_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("gh200", 989.0, 4000.0), ("h200", 989.0, 4800.0), ("h100 pcie", 756.0, 2000.0),
    ("h100 nvl", 835.0, 3900.0), ("h100", 989.0, 3350.0), ("b200", 2250.0, 8000.0),
    ("a100-sxm4-80gb", 312.0, 2039.0), ("a100 80gb pcie", 312.0, 1935.0), ("a100", 312.0, 1555.0),
    ("a10g", 70.0, 600.0),  # no NVIDIA datasheet: the commonly quoted AWS figure
    ("a10", 125.0, 600.0), ("l40s", 362.0, 864.0), ("l40", 181.0, 864.0), ("l4", 121.0, 300.0),
    ("t4", 65.0, 320.0), ("v100", 125.0, 900.0),
)  # fmt: skip


@dataclass(frozen=True)
class Peaks:
    """The device's roof: dense fp16 tensor TFLOP/s and memory GB/s (None: unknown, ratios n/a)."""

    tflops: float | None
    bandwidth_gbs: float | None
    source: str

    def limit_ms(self, flops: float | None = None, nbytes: float | None = None) -> float | None:
        if flops is not None and self.tflops:
            return flops / (self.tflops * 1e12) * 1e3
        if nbytes is not None and self.bandwidth_gbs:
            return nbytes / (self.bandwidth_gbs * 1e9) * 1e3
        return None


def peaks_for_name(name: str) -> tuple[str, float, float] | None:
    """The `GPU_PEAKS` row for a CUDA device name such as "NVIDIA H100 80GB HBM3", or None."""
    return next((row for row in GPU_PEAKS if row[0] in name.lower()), None)


def find_peaks(device: str, peak_tflops: float | None, bandwidth_gbs: float | None) -> Peaks:
    """`GPU_PEAKS` by device name, each value overridable; nothing on CPU or meta unless overridden."""
    tflops = gbs = None
    source = "none (not a GPU)"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        row = peaks_for_name(name)
        if row is None:
            source = f"{name}: not in GPU_PEAKS, pass --peak-tflops and --bandwidth-gbs"
        else:
            tflops, gbs, source = row[1], row[2], f"GPU_PEAKS[{row[0]!r}] for {name}"
    if peak_tflops is not None or bandwidth_gbs is not None:
        source += "; overridden on the command line"
    return Peaks(peak_tflops or tflops, bandwidth_gbs or gbs, source)


def measure_roof(
    device: str, dtype: torch.dtype, *, size: int = 8192, copy_bytes: int = 4 << 30
) -> dict[str, float]:
    """This GPU's own roof, next to the datasheet's: the best of ten `size`^3 matrix products in `dtype`
    (TFLOP/s, random data) and of ten device-to-device copies of `copy_bytes` (GB/s, bytes read plus
    written; at most a quarter of the free memory each way, so a small card measures too). Clocks, power
    limits and the part's variant (SXM or PCIe) make it differ from `GPU_PEAKS`."""
    copy_bytes = min(copy_bytes, torch.cuda.mem_get_info(device)[0] // 4 // 2 * 2)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    src = torch.empty(copy_bytes // 2, dtype=torch.int16, device=device)
    dst = torch.empty_like(src)

    def best_seconds(fn: Callable[[], object]) -> float:
        times = []
        for i in range(13):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            if i >= 3:  # three warm-ups
                times.append(start.elapsed_time(end) / 1e3)
        return min(times)

    matmul_s = best_seconds(lambda: a @ b)
    copy_s = best_seconds(lambda: dst.copy_(src))
    return {"tflops": 2 * size**3 / matmul_s / 1e12, "bandwidth_gbs": 2 * copy_bytes / copy_s / 1e9}
