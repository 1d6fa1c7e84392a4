"""Named training recipes: ``paper`` (the paper's setting on the chosen backbone) and ``cpu`` (a few minutes on a
laptop CPU). A recipe fills the settings a user did not give; the rest of :class:`~ikd_core.train.TrainConfig`
keeps its defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # AdamW 5e-5, batch 2, 50 epochs, 256 px, constant lr, IKD loss (AHSM + CSL), product of levels, max score.
    "paper": {"image_size": 256, "epochs": 50, "batch_size": 2, "lr": 5e-5, "schedule": "constant",
              "student": "forward", "loss": "ikd", "denoise": False, "segment": False, "segment_map": "head",
              "score_map": "map", "level_norm": False, "combine": "product", "score_topk": 1, "ood_penalty": 0.0},
    # The README's CPU recipe: efficientnet_lite0 at 256 px, batch 8, lr 1e-2, 60 epochs or the time limit, and the
    # denoising student, the paper's loss and map. On the real-image bench (results/decision.md) the fused
    # segmentation head (--segment --segment-map fused) beats it up to the seeds' spread at 3 and 10 minutes (AU-PRO;
    # image AUROC alike), and on the real defects it calls more of them at its fitted threshold
    # (results/real_bench_dev_verdict.md), but the shipped demo object fails the app's 80 % / 80 % with it (a long
    # tail of good scores over 6 held-out images; 1 seed of 3 passes, 2 of 3 for this recipe:
    # results/demo_verdict_seeds.md), so it stays an option, with or without --score-map distillation.
    "cpu": {"image_size": 256, "epochs": 60, "batch_size": 8, "lr": 1e-2, "schedule": "constant",
            "student": "forward", "loss": "ikd", "denoise": True, "segment": False, "segment_map": "head",
            "score_map": "map", "level_norm": False, "combine": "product", "score_topk": 1, "ood_penalty": 0.0},
}

#: The settings that choose the method (student, loss, score side), as opposed to the optimisation's.
METHOD_KEYS = ("student", "loss", "denoise", "segment", "segment_map", "score_map", "level_norm", "combine",
               "score_topk", "ood_penalty")


def method_parts(settings: Mapping[str, Any]) -> list[str]:
    """In words, each method setting of ``settings`` (a ``TrainConfig`` as a dict, e.g. a checkpoint's
    ``train_config``) that is not the paper's; empty for the paper's method. Values of any type are shown as text."""
    s = {k: settings.get(k, RECIPES["paper"][k]) for k in METHOD_KEYS}
    parts = []
    if s["student"] != "forward":
        parts.append(f"{s['student']} student")
    if s["loss"] != "ikd":
        parts.append(f"{s['loss']} loss")
    if s["denoise"]:
        parts.append("denoising student")
    if s["segment"]:
        parts.append("segmentation head" + (", fused with the distillation map" if s["segment_map"] == "fused" else ""))
    if s["score_map"] != "map":
        parts.append(f"score from the {s['score_map']} map")
    if s["level_norm"]:
        parts.append("level normalisation")
    if s["combine"] != "product":
        parts.append(f"{s['combine']} of levels")
    if s["score_topk"] != 1:
        parts.append(f"score: mean of top {s['score_topk']}")
    if s["ood_penalty"]:
        parts.append(f"OOD penalty {s['ood_penalty']}")
    return parts


def paper_method(**given: Any) -> dict[str, Any]:
    """The paper's method settings (:data:`METHOD_KEYS` of the ``paper`` recipe), overridden by ``given``: what the
    real-image bench lays its methods on, whatever a recipe's default."""
    return {**{k: RECIPES["paper"][k] for k in METHOD_KEYS}, **given}


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
