"""Named training recipes: ``paper`` (the paper's setting on the chosen backbone), ``cpu`` (a few minutes on a
laptop CPU) and ``cpu-fused`` (the same minutes, with the segmentation head fused with the distillation map). A
recipe fills the settings a user did not give; the rest of :class:`~ikd_core.train.TrainConfig` keeps its
defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_CPU: dict[str, Any] = {
    "image_size": 256, "epochs": 60, "batch_size": 8, "lr": 1e-2, "schedule": "constant", "student": "forward",
    "loss": "ikd", "denoise": True, "segment": False, "segment_map": "head", "score_map": "map", "level_norm": False,
    "combine": "product", "score_topk": 1, "ood_penalty": 0.0}

RECIPES: dict[str, dict[str, Any]] = {
    # AdamW 5e-5, batch 2, 50 epochs, 256 px, constant lr, IKD loss (AHSM + CSL), product of levels, max score.
    "paper": {"image_size": 256, "epochs": 50, "batch_size": 2, "lr": 5e-5, "schedule": "constant",
              "student": "forward", "loss": "ikd", "denoise": False, "segment": False, "segment_map": "head",
              "score_map": "map", "level_norm": False, "combine": "product", "score_topk": 1, "ood_penalty": 0.0},
    # The README's CPU recipe: efficientnet_lite0 at 256 px, batch 8, lr 1e-2, 60 epochs or the time limit, and the
    # denoising student, the paper's loss and map. The app's default on a CPU, and the shipped demo checkpoints'.
    "cpu": _CPU,
    # The CPU recipe with the segmentation head fused with the distillation map (--segment --segment-map fused): the
    # real-image bench's choice (results/decision.md: it beats the CPU recipe up to the seeds' spread at 3 and 10
    # minutes, AU-PRO 0.757 vs 0.716 and 0.770 vs 0.735, image AUROC alike, and meets every goal of issue 16), and on
    # the real defects it calls more of them at its fitted threshold (results/real_bench_dev_verdict.md). Not the
    # default: on the shipped demo object its verdict at the threshold fitted on 6 held-out images fails the app's
    # 80 % / 80 % on 2 seeds of 3 (the CPU recipe on 1 of 3; results/demo_verdict_seeds.md), and still on 2 of 3
    # with 200 good demo images, where the CPU recipe passes on all 3 (results/demo_verdict_n200.md).
    "cpu-fused": {**_CPU, "segment": True, "segment_map": "fused"},
}

#: Each recipe in a line, for the command line's help and the app's training form.
RECIPE_NOTES: dict[str, str] = {
    "paper": "the paper's setting: AdamW 5e-5, batch 2, 50 epochs, the paper's loss and map",
    "cpu": "minutes on a CPU: batch 8, lr 1e-2, 60 epochs, with the denoising student, which sees synthetic defects "
           "while it learns",
    "cpu-fused": "the cpu recipe plus a segmentation head fused with the distillation map: better defect maps on real "
                 "images in the same minutes (the bench's choice), but with few good images its threshold, and so "
                 "its verdict, varies more from run to run",
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
