"""The Model tab: three panels, one job each. :mod:`ui.checkpoints_panel` (the active checkpoint: choose, upload,
download, delete), :mod:`ui.data_panel` (training data sources, MVTec AD download or archive upload) and
:mod:`ui.training_panel` (training, whose new model is shown beside the active one until the user chooses it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from .checkpoints_panel import CheckpointsPanel
from .context import AppContext
from .data_panel import DataPanel
from .training_panel import TrainingPanel

if TYPE_CHECKING:
    from .inspect_tab import InspectTab


@dataclass
class ModelTab:
    """The Model tab's panels."""

    checkpoints: CheckpointsPanel
    data: DataPanel
    training: TrainingPanel

    def wire(self, inspect: InspectTab) -> None:
        """The panels' events (a checkpoint change also re-inspects the images in ``inspect``)."""
        self.checkpoints.wire(inspect)
        self.data.wire()
        self.training.wire()


def build(ctx: AppContext) -> ModelTab:
    """Create the Model tab's components (inside ``gr.Tab``).

    Args:
        ctx: The app's context.

    Returns:
        The tab, its panels holding their components.
    """
    checkpoints = CheckpointsPanel(ctx).build()
    gr.Markdown("## Train a new model")
    data = DataPanel(ctx).build()
    return ModelTab(checkpoints, data, TrainingPanel(ctx, checkpoints, data).build())
