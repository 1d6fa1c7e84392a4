"""Machine description for reports: CPU model, cores, torch threads, GPU and versions.

Used by ``python -m ikd_core benchmark`` (``ikd_core.reproduce``) and by the scripts in ``benchmarks/``.
Imports only torch and the standard library, so it works where optional dependencies are missing.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from . import __version__


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads, GPU (if CUDA) and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ikd_core": __version__,
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        info["timm"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    return info


def machine_lines(info: dict[str, Any]) -> list[str]:
    """Markdown bullet lines describing ``machine_info()``."""
    gpu = f"{info['gpu']} (x{info.get('gpu_count', 1)}, CUDA {info.get('cuda')})" if info.get("gpu") else "none"
    return [
        f"- Machine: {info['cpu']}, {info['cpu_cores']} CPU cores ({info['torch_threads']} torch threads); "
        f"GPU: {gpu}; {info['platform']}",
        f"- Versions: Python {info['python']}, torch {info['torch']}, timm {info['timm']}, "
        f"ikd_core {info['ikd_core']}",
    ]
