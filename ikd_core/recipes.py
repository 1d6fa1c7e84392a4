"""Named training recipes: ``paper`` (the paper's setting on the chosen backbone) and ``cpu`` (a few minutes on a
laptop CPU). A recipe fills the settings a user did not give; the rest of :class:`~ikd_core.train.TrainConfig`
keeps its defaults."""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # AdamW 5e-5, batch 2, 50 epochs, 256 px, constant lr, IKD loss (AHSM + CSL), product of levels, max score.
    "paper": {"image_size": 256, "epochs": 50, "batch_size": 2, "lr": 5e-5, "schedule": "constant",
              "student": "forward", "loss": "ikd", "denoise": False, "level_norm": False, "combine": "product",
              "score_topk": 1, "ood_penalty": 0.0},
    # The README's CPU recipe: efficientnet_lite0 at 256 px, batch 8, lr 1e-2, 60 epochs or the time limit.
    "cpu": {"image_size": 256, "epochs": 60, "batch_size": 8, "lr": 1e-2, "schedule": "constant",
            "student": "forward", "loss": "ikd", "denoise": False, "level_norm": False, "combine": "product",
            "score_topk": 1, "ood_penalty": 0.0},
}


def recipe_settings(name: str, **given: Any) -> dict[str, Any]:
    """The recipe's settings, overridden by every ``given`` value that is not None.

    Args:
        name: a key of :data:`RECIPES`.
        given: settings chosen explicitly (None = not given).

    Returns:
        Keyword arguments for :class:`~ikd_core.train.TrainConfig`.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return {**RECIPES[name], **{k: v for k, v in given.items() if v is not None}}
