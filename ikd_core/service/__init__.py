"""UI-agnostic services behind the IKD Studio app: checkpoints, uploads, background training, caches.

Nothing here imports a UI toolkit; the Gradio app (``app.py``) is a thin layer over these functions, and
every user-facing problem is raised as an :class:`~ikd_core.errors.IKDError` whose message can be shown
as is.

The environment is read once, into :class:`Settings` (``Settings.from_env()``; locations in its
:class:`StudioPaths`: ``IKD_PRETRAINED_DIR``, ``IKD_DATA_DIR``, ``IKD_WORK_DIR`` or ``IKD_STORAGE``), so tests and
deployments build an app with their own settings. The training use case (check a request, reserve a checkpoint
name, compare the new model with the active one) is :mod:`ikd_core.service.training`.
"""

from ..evaluation import Curves
from .access import ALLOW_SERVER_PATHS_ENV, PUBLIC_ENV, AccessPolicy, KnownData, public_mode
from .checkpoint_store import (
    CHECKPOINT_SUFFIX,
    MAX_CHECKPOINT_BYTES,
    MAX_SIDECAR_BYTES,
    CheckpointInfo,
    check_checkpoint_name,
    checkpoint_info,
    default_checkpoint,
    import_checkpoint,
    list_checkpoints,
    release_checkpoint_path,
    reserve_checkpoint_path,
    resolve_checkpoint,
    seed_checkpoints,
    unique_path,
)
from .fair import BusyError, FairGate
from .jobs import (
    JobEvent,
    JobRegistry,
    StopFile,
    TrainingJob,
    TrainingUpdate,
    stream_training,
)
from .memory import Trimmer, release_memory
from .paths import DATA_ENV, PRETRAINED_ENV, SHIPPED_PRETRAINED, STORAGE_ENV, WORK_ENV, StudioPaths, sanitize_name
from .predictors import PredictionCache, PredictorCache
from .settings import Settings
from .testsets import SampleIndex, check_training_data, mvtec_missing
from .uploads import (
    MAX_INSPECT_SIDE,
    MAX_UPLOAD_FILE_BYTES,
    MAX_UPLOAD_FILES,
    MAX_UPLOAD_PIXELS,
    MAX_UPLOAD_TOTAL_BYTES,
    MAX_UPLOAD_TOTAL_PIXELS,
    MAX_ZIP_ENTRIES,
    discard_upload,
    extract_images,
    load_inspect_image,
    prune_files,
    uploaded_data_spec,
    zip_directory_size,
)
from .validate import escape_markdown, number, public_message
from .workspaces import Quota, QuotaError, Workspace, WorkspaceManager

__all__ = [
    "ALLOW_SERVER_PATHS_ENV", "AccessPolicy", "BusyError", "CHECKPOINT_SUFFIX", "CheckpointInfo", "Curves",
    "DATA_ENV", "FairGate", "JobEvent", "JobRegistry", "KnownData", "MAX_CHECKPOINT_BYTES", "MAX_INSPECT_SIDE",
    "MAX_SIDECAR_BYTES", "MAX_UPLOAD_FILES", "MAX_UPLOAD_FILE_BYTES", "MAX_UPLOAD_PIXELS", "MAX_UPLOAD_TOTAL_BYTES",
    "MAX_UPLOAD_TOTAL_PIXELS", "MAX_ZIP_ENTRIES", "PRETRAINED_ENV", "PUBLIC_ENV", "PredictionCache",
    "PredictorCache", "Quota", "QuotaError", "SHIPPED_PRETRAINED", "STORAGE_ENV", "SampleIndex", "Settings", "StopFile",
    "StudioPaths", "TrainingJob", "TrainingUpdate", "Trimmer", "WORK_ENV", "Workspace", "WorkspaceManager",
    "check_checkpoint_name", "check_training_data", "checkpoint_info", "default_checkpoint",
    "discard_upload", "escape_markdown", "extract_images", "import_checkpoint", "list_checkpoints",
    "load_inspect_image", "mvtec_missing", "number", "prune_files", "public_message", "public_mode",
    "release_checkpoint_path", "release_memory", "reserve_checkpoint_path", "resolve_checkpoint", "sanitize_name",
    "seed_checkpoints",
    "stream_training", "unique_path", "uploaded_data_spec", "zip_directory_size",
]
