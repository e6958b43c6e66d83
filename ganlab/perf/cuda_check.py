"""Keep `torch.cuda.is_available()` cheap where NVIDIA's management library (NVML) cannot be loaded.

Why: Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when it is imported, asking torch for a fork-safe device count
through NVML. Where libnvidia-ml cannot be loaded (machines without an NVIDIA driver), torch retries the dlopen on
every call (~0.15 ms here) and then falls back to cudaGetDeviceCount, the check it makes without the variable. Torch's
Adam and AdamW call `is_available()` on every step (their graph-capture health check), so a GAN iteration on a CPU
paid ~0.3 ms for nothing (a tiny Adam step: 207 -> 57 us). Where NVML loads, the variable is left alone.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"


@cache
def nvml_loadable() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")  # the name torch.cuda loads
    except OSError:
        return False
    return True


def skip_unloadable_nvml_check() -> None:
    """Drop Lightning's NVML request when NVML cannot load (torch would fall back on every call anyway). Call it
    after Lightning is imported: its import sets the variable."""
    if os.environ.get(VARIABLE) == "1" and not nvml_loadable():
        del os.environ[VARIABLE]
