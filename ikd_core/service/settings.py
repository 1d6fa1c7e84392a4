"""The studio's settings: read from the environment once, when the app is built, into one frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .access import AccessPolicy
from .paths import StudioPaths
from .uploads import MAX_INSPECT_SIDE
from .workspaces import Quota

#: The longest GPU call (seconds) that ``IKD_GPU_MAX_DURATION`` may ask for is below ZeroGPU's 300 s.
GPU_DURATION_RANGE = (10, 299)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(env.get(name) or default)


def gpu_max_duration(environ: Mapping[str, str] | None = None) -> int:
    """``IKD_GPU_MAX_DURATION`` (default 120 s): the longest ZeroGPU call asked for.

    Args:
        environ: The environment (default ``os.environ``).

    Returns:
        The duration in seconds; ``SystemExit`` if it is outside :data:`GPU_DURATION_RANGE`.
    """
    env = os.environ if environ is None else environ
    value = _int(env, "IKD_GPU_MAX_DURATION", 120)
    lo, hi = GPU_DURATION_RANGE
    if not lo <= value <= hi:
        raise SystemExit("IKD_GPU_MAX_DURATION must be 10-299 seconds")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the studio reads from the environment (README "Public mode" lists the variables).

    Public mode (``SPACE_ID`` set, or ``IKD_PUBLIC=1``) tightens the defaults: per-visitor workspaces, no server
    paths, fewer and smaller images, a training time limit.
    """

    paths: StudioPaths
    policy: AccessPolicy
    quota: Quota
    #: Images scored per Inspect request, and the largest side they are decoded at.
    max_inspect_images: int
    inspect_max_side: int
    #: Larger images (by their header) are refused before decoding (``None``: the engine's limit).
    max_image_pixels: int | None
    #: Inspect requests handled at once (their images then take turns at the fair gate, two at a time).
    inspect_concurrency: int
    #: A training run's time limit (minutes), ``None`` for none.
    max_train_minutes: float | None
    #: Gradio's limit on each upload, e.g. ``"100mb"``.
    max_file_size: str
    #: Idle seconds after which a visitor's workspace is removed (public mode).
    workspace_ttl_s: float
    #: Gradio's temporary files: every FREQUENCY seconds, those older than AGE seconds are deleted.
    delete_cache: tuple[int, ...]
    #: Bytes of cached anomaly maps kept for re-rendering.
    prediction_cache_bytes: int
    #: Backend of CPU predictors: ``auto`` (onnxruntime where it reproduces torch), ``torch`` or ``onnx``.
    backend: str
    #: Live tab: the largest side frames are scored at, and how long a stream may last (seconds).
    live_max_side: int
    live_time_limit: int
    max_gif_images: int = 32
    #: Exported GIFs kept on disk per workspace (older ones are deleted).
    max_kept_exports: int = 16

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings.

        Args:
            environ: The environment to read (default ``os.environ``); tests pass their own.

        Returns:
            The settings.
        """
        env = dict(os.environ if environ is None else environ)
        paths = StudioPaths.from_env(env)
        policy = AccessPolicy.from_env(paths, env)
        public = policy.public
        return cls(
            paths=paths,
            policy=policy,
            quota=Quota.from_env(env),
            max_inspect_images=_int(env, "IKD_MAX_INSPECT_IMAGES", 8 if public else 64),
            inspect_max_side=_int(env, "IKD_INSPECT_MAX_SIDE", 1024 if public else MAX_INSPECT_SIDE),
            max_image_pixels=_int(env, "IKD_MAX_IMAGE_PIXELS", 16_000_000 if public else 0) or None,
            inspect_concurrency=_int(env, "IKD_INSPECT_CONCURRENCY", 16),
            max_train_minutes=float(env.get("IKD_MAX_TRAIN_MINUTES") or (10 if public else 0)) or None,
            max_file_size=env.get("IKD_MAX_FILE_SIZE", "100mb" if public else "1gb"),
            workspace_ttl_s=float(env.get("IKD_WORKSPACE_TTL_S") or 7200),
            delete_cache=tuple(int(v) for v in env.get("IKD_DELETE_CACHE", "3600,86400").split(",", 1)),
            prediction_cache_bytes=int(env.get("IKD_PREDICTION_CACHE_MB", "256")) * 1024**2,
            backend=env.get("IKD_BACKEND", "auto"),
            live_max_side=_int(env, "IKD_LIVE_MAX_SIDE", 256),
            live_time_limit=_int(env, "IKD_LIVE_TIME_LIMIT", 60 if public else 600),
        )

    @property
    def public(self) -> bool:
        """Public mode: per-visitor workspaces and quotas, no server paths."""
        return self.policy.public

    @property
    def allow_server_paths(self) -> bool:
        """Whether requests may name server folders (private mode only)."""
        return self.policy.server_paths
