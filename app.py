"""IKD Studio: a Gradio 6 web app for unsupervised image anomaly segmentation with Informative Knowledge
Distillation. ``python app.py`` prepares the demo data and the ready checkpoint, then serves on
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (default 127.0.0.1:7860).

The app lives in the ``ui`` package (one module per tab, shared state in ``ui.context``, GPU work in ``ui.gpu``);
this file reads the settings once (:class:`ikd_core.service.Settings`), builds the app and launches it. ``demo``
is importable without side effects, except on ZeroGPU, where the ready model is loaded on the CPU at import as
ZeroGPU expects.

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

import logging
import os

import ui
from ikd_core.service import Settings
from ui import gpu

studio = ui.build_app(Settings.from_env())
demo = studio.demo

if gpu.ZERO_GPU:  # the documented ZeroGPU pattern: load models at import, on the CPU, before the GPU worker forks
    studio.ctx.warm_up()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    studio.ctx.warm_up()
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **studio.launch_kwargs(),
    )
