"""Named training recipes: ``paper`` (the paper's setting on the chosen backbone), ``cpu`` (a few minutes on a
laptop CPU: the real-image bench's choice) and ``cpu-denoise`` (the same minutes, the denoising student alone). A
recipe fills the settings a user did not give; the rest of :class:`~ikd_core.train.TrainConfig` keeps its
defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The optimisation of the CPU recipes and the denoising student, with the paper's loss and map.
_CPU_DENOISE: dict[str, Any] = {
    "image_size": 256, "epochs": 60, "batch_size": 8, "lr": 1e-2, "schedule": "constant", "student": "forward",
    "loss": "ikd", "denoise": True, "segment": False, "segment_map": "head", "score_map": "map", "level_norm": False,
    "combine": "product", "score_topk": 1, "ood_penalty": 0.0}

RECIPES: dict[str, dict[str, Any]] = {
    # AdamW 5e-5, batch 2, 50 epochs, 256 px, constant lr, IKD loss (AHSM + CSL), product of levels, max score.
    "paper": {"image_size": 256, "epochs": 50, "batch_size": 2, "lr": 5e-5, "schedule": "constant",
              "student": "forward", "loss": "ikd", "denoise": False, "segment": False, "segment_map": "head",
              "score_map": "map", "level_norm": False, "combine": "product", "score_topk": 1, "ood_penalty": 0.0},
    # The README's CPU recipe, the app's default on a CPU and the shipped demo checkpoints': efficientnet_lite0 at
    # 256 px, batch 8, lr 1e-2, 60 epochs or the time limit, the denoising student with the paper's loss, and the
    # segmentation head fused with the distillation map, the image score taken on the map's distillation part. The
    # real-image bench's choice (results/decision_recipe.md): it meets every goal of issue 16 at 3 and 10 minutes
    # (AU-PRO 0.759 and 0.774 against 0.716 and 0.735 for the denoising student alone). Its student is the denoising
    # student's (the head's loss never reaches it), so at equal epochs its score ranks images as the denoising
    # student's does and its verdict is the same (results/demo_verdict_recipe.md); the head costs time per epoch.
    "cpu": {**_CPU_DENOISE, "segment": True, "segment_map": "fused", "score_map": "distillation"},
    # The denoising student alone (the CPU recipe until 2026-12-08): 1.2-1.5x the epochs per minute on the real-image
    # bench (17.1 vs 11.3 epochs in 3 minutes, 52.0 vs 41.9 in 10), coarser maps.
    "cpu-denoise": _CPU_DENOISE,
}

#: Each recipe in a line, for the command line's help and the app's training form.
RECIPE_NOTES: dict[str, str] = {
    "paper": "the paper's setting: AdamW 5e-5, batch 2, 50 epochs, the paper's loss and map",
    "cpu": "minutes on a CPU (the bench's choice): batch 8, lr 1e-2, 60 epochs, a denoising student, which sees "
           "synthetic defects while it learns, and a segmentation head fused with the distillation map; the image "
           "score is the distillation part's",
    "cpu-denoise": "the cpu recipe without the segmentation head: 1.2-1.5x the epochs per minute, coarser defect "
                   "maps",
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
    chosen = {k: v for k, v in given.items() if v is not None}
    settings = {**RECIPES[name], **chosen}
    # A recipe's setting that needs what an explicit choice turned off gives way; explicit choices never do (a
    # conflict between them is TrainConfig's error). The head learns from the denoising student's anomalies, and
    # level normalisation is for a map without the head; the distillation-part score needs the fused map.
    if "segment" not in chosen and (not settings.get("denoise") or settings.get("level_norm")):
        settings["segment"] = False
    if "score_map" not in chosen and not (settings.get("segment") and settings.get("segment_map") == "fused"):
        settings["score_map"] = "map"
    return settings
