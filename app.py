"""IKD Studio: a Gradio 6 web app for unsupervised image anomaly segmentation with Informative Knowledge
Distillation. ``python app.py`` prepares the demo data and the ready checkpoint, then serves on
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (default 127.0.0.1:7860).

The app lives in the ``ui`` package (one module per tab, settings and shared state in ``ui.state``, GPU work in
``ui.gpu``); this file builds it and launches it. ``demo`` is importable without side effects, except on ZeroGPU,
where the ready model is loaded on the CPU at import as ZeroGPU expects.

Settings (environment): ``IKD_STORAGE`` (one folder for everything written, e.g. ``/data`` on a Space with
persistent storage; the shipped checkpoints are copied there on first start) or the single folders
``IKD_PRETRAINED_DIR``, ``IKD_DATA_DIR`` and ``IKD_WORK_DIR``; ``IKD_PUBLIC`` (default: on when ``SPACE_ID`` is
set) turns on public mode (per-visitor workspaces and quotas, no server paths; README "Public mode" lists its
settings); ``IKD_ALLOW_SERVER_PATHS=0`` hides server folders in private mode; ``IKD_MAX_FILE_SIZE`` limits each
upload; ``IKD_DELETE_CACHE`` (``FREQUENCY,AGE`` in seconds, default ``3600,86400``) sweeps Gradio's temporary
files; ``IKD_GPU_MAX_DURATION`` (default 120, below 300) is the longest ZeroGPU call; ``IKD_PREDICTION_CACHE_MB``
(default 256) bounds the cached maps that re-rendering uses.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

if "ui.state" in sys.modules:  # a second launch in one process (tests): read the environment again
    importlib.reload(sys.modules["ui.gpu"])
    importlib.reload(sys.modules["ui.state"])

import ui  # noqa: E402
from ui import gpu, state  # noqa: E402
from ui.state import warm_up  # noqa: E402

# What tests and scripts look at.
PATHS, POLICY, PUBLIC, ALLOW_SERVER_PATHS = state.PATHS, state.POLICY, state.PUBLIC, state.ALLOW_SERVER_PATHS
WORKSPACES, JOBS, PREDICTIONS, PREDICTORS = state.WORKSPACES, state.JOBS, state.PREDICTIONS, gpu.PREDICTORS
SOURCES, SRC_DEMO, SRC_MVTEC, SRC_FOLDER, SRC_UPLOAD = (state.SOURCES, state.SRC_DEMO, state.SRC_MVTEC,
                                                       state.SRC_FOLDER, state.SRC_UPLOAD)
MAX_INSPECT_IMAGES = state.MAX_INSPECT_IMAGES
ensure_demo_data = state.ensure_demo_data
launch_kwargs = ui.launch_kwargs

demo = ui.build_demo()

if gpu.ZERO_GPU:  # the documented ZeroGPU pattern: load models at import, on the CPU, before the GPU worker forks
    warm_up()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    warm_up()
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_kwargs(),
    )
