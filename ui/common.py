"""Helpers every tab uses that need no app state: request values checked, text made inert, file lists."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr

from ikd_core import service
from ikd_core.backbones import BACKBONES
from ikd_core.data.sources import default_checkpoint_name
from ikd_core.data.synthetic import DEMO_CATEGORIES
from ikd_core.visualize import COLORMAPS

log = logging.getLogger("ikd_studio")

REPO = Path(__file__).resolve().parents[1]
DEMO_CATEGORY = "demo_texture"
DEFAULT_BACKBONE = "efficientnet_lite0"
#: The shipped checkpoints, preferred as the first active model.
READY_CHECKPOINTS = [default_checkpoint_name(c, DEFAULT_BACKBONE) for c in DEMO_CATEGORIES]
BACKBONE_CHOICES = [
    ("efficientnet_lite0 (default, works offline)", "efficientnet_lite0"),
    ("hrnet_w32 (as in the paper)", "hrnet_w32"),
    ("resnet18", "resnet18"),
    ("wide_resnet50_2", "wide_resnet50_2"),
    ("hrnet_w18", "hrnet_w18"),
    ("hrnet_w48", "hrnet_w48"),
]
assert {v for _, v in BACKBONE_CHOICES} <= set(BACKBONES)


def md(text: object) -> str:
    """A user- or file-supplied string, inert in Markdown and HTML."""
    return service.escape_markdown(text)


def file_list(files: Any) -> list[str]:
    """The paths of a Gradio file value (one path, a list of paths or of file objects, or ``None``)."""
    if files is None:
        return []
    if isinstance(files, (str, Path)):
        return [str(files)]
    return [str(getattr(f, "name", f)) for f in files if f]


def verdict_text(anomalous: bool) -> str:
    """The verdict shown for a score above (or not) the threshold."""
    return "anomalous" if anomalous else "normal"


def checked_display(threshold: Any, alpha: Any, cmap: Any) -> tuple[float, float, str]:
    """Display settings from a request, checked here (an API client bypasses the widgets: a raw NaN passes them).

    Args:
        threshold: Normalised threshold, 0 to 1.
        alpha: Overlay opacity, 0 to 1.
        cmap: Colormap name.

    Returns:
        The checked (threshold, alpha, cmap).
    """
    if cmap not in COLORMAPS:
        raise gr.Error(f"unknown colormap; choose one of {', '.join(COLORMAPS)}")
    return (
        float(service.number(threshold, "threshold", 0.0, 1.0)),
        float(service.number(alpha, "overlay opacity", 0.0, 1.0)),
        str(cmap),
    )


def example_gallery(paths: list[str]) -> list[tuple[str, str]]:
    """Example thumbnails with captions: the defect type (the test sub-folder) and the file name."""
    return [(p, f"{Path(p).parent.name}/{Path(p).name}") for p in paths or []]
