"""Gradio's sweep of old temporary files, made safe beside concurrent uploads.

Gradio (6.31) deletes the app's old temporary files (``gr.Blocks(delete_cache=...)``) from a worker thread that
iterates the live set of those files (``route_utils.delete_files_created_by_app``). An upload that adds to the set
meanwhile raises "Set changed size during iteration", which ends the scheduled task for good: from then on no upload
is ever deleted, and a public Space's disk fills. :func:`install` replaces that function with one that iterates a
snapshot of each set and logs, instead of raising, what it cannot delete, so one bad sweep never stops the next.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from gradio import route_utils

log = logging.getLogger(__name__)


def delete_files_created_by_app(blocks: Any, age: int | None) -> None:
    """Delete the app's temporary files whose status changed more than ``age`` seconds ago (all when ``age`` is None),
    except the files a component keeps in its cache; the same rule as Gradio's, on snapshots of the sets."""
    try:
        keep: set[str] = set()
        for component in list(blocks.blocks.values()):
            keep.update(getattr(component, "keep_in_cache", set()))
        now = time.time()
        for temp_set in list(blocks.temp_file_sets):
            gone = set()
            for file in list(temp_set):  # a snapshot (atomic under the GIL): uploads may add to the set meanwhile
                if file in keep:
                    continue
                path = Path(file)
                try:
                    if age is None or now - path.lstat().st_ctime > age:
                        path.unlink()
                        gone.add(file)
                except FileNotFoundError:
                    gone.add(file)
                except OSError as exc:
                    log.warning("could not delete temporary file %s: %s", file, exc)
            temp_set.difference_update(gone)
    except Exception:  # noqa: BLE001 - the schedule must survive: the next sweep retries
        log.exception("sweep of Gradio's temporary files failed; the next one retries")


def install() -> None:
    """Make Gradio's scheduled (and closing) sweep use :func:`delete_files_created_by_app`."""
    if hasattr(route_utils, "delete_files_created_by_app"):
        route_utils.delete_files_created_by_app = delete_files_created_by_app
