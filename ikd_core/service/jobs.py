"""Background training jobs, their events and curves, and who may control them."""

from __future__ import annotations

import logging
import os
import queue
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.sources import DataSpec
from ..errors import IKDError

log = logging.getLogger(__name__)


@dataclass
class JobEvent:
    """One message from a :class:`TrainingJob`: ``kind`` is ``status``, ``progress`` or ``end``."""

    kind: str
    message: str = ""
    progress: Any = None  # ikd_core.train.Progress for kind == "progress"


@dataclass
class Curves:
    """ROC / PRO curves of a trained model on its test set (empty arrays where undefined)."""

    image_roc: tuple[Any, Any]
    pixel_roc: tuple[Any, Any]
    pro: tuple[Any, Any]
    metrics: dict[str, float]


class TrainingJob:
    """Runs :func:`ikd_core.train.train` in a background thread.

    Progress arrives as :class:`JobEvent` objects on :attr:`events` (``Progress`` reports during
    training, ``status`` texts between phases, one ``end`` last). :meth:`stop` sets :attr:`stop_event`;
    training then ends at the next step and nothing is written. When done, :attr:`state` is
    ``finished``, ``cancelled`` or ``failed``, with :attr:`result` / :attr:`curves` or :attr:`error`.
    """

    def __init__(
        self,
        spec: DataSpec,
        config: Any,
        out_path: str | os.PathLike[str] | None,
        curves: bool = True,
        device: Any = None,
        datasets: tuple[Any, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.datasets = datasets  # (train, test) already built and checked, e.g. by check_training_data
        self.config = config
        self.out_path = Path(out_path) if out_path is not None else None
        self.want_curves = curves
        self.device = device
        self.events: queue.Queue[JobEvent] = queue.Queue()
        self.stop_event = threading.Event()
        self.state = "pending"  # pending | running | finished | cancelled | failed
        self.result: Any = None
        self.curves: Curves | None = None
        self.error: str | None = None
        self.losses: list[tuple[int, float]] = []
        self.last_progress: Any = None
        self.n_train = 0
        self.n_test = 0
        self._thread = threading.Thread(target=self._run, name="ikd-training", daemon=True)

    # public API -----------------------------------------------------------------------------
    def start(self) -> TrainingJob:
        self.state = "running"
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the run to stop at the next step; no checkpoint is written for a stopped run."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.state in ("finished", "cancelled", "failed")

    def iter_events(self, poll: float = 0.5) -> Iterable[JobEvent | None]:
        """Events as they come; ``None`` every ``poll`` seconds without one; stops after ``end``."""
        while True:
            try:
                ev = self.events.get(timeout=poll)
            except queue.Empty:
                if self.done and self.events.empty():
                    return
                yield None
                continue
            yield ev
            if ev.kind == "end":
                return

    # worker ---------------------------------------------------------------------------------
    def _status(self, message: str) -> None:
        self.events.put(JobEvent("status", message))

    def _on_progress(self, p: Any) -> None:
        self.last_progress = p
        if p.phase == "train":
            self.losses.append(((p.epoch - 1) * p.steps_per_epoch + p.step, float(p.loss)))
        self.events.put(JobEvent("progress", p.phase, p))

    def _run(self) -> None:
        try:
            from ..data.sources import build_datasets
            from ..train import train

            self._status("preparing data")
            if self.datasets is not None:
                train_ds, test_ds = self.datasets
            else:
                train_ds, test_ds = build_datasets(self.spec, self.config.image_size)
            self.n_train = len(train_ds)  # type: ignore[arg-type]
            self.n_test = len(test_ds) if test_ds is not None else 0  # type: ignore[arg-type]
            if self.stop_event.is_set():
                self.state = "cancelled"
                return
            self._status(f"building the {self.config.backbone} teacher and student")
            result = train(
                train_ds, test_ds, self.config, out_path=self.out_path, category=self.spec.category,
                data_info=self.spec.to_dict(), callback=self._on_progress, should_stop=self.stop_event.is_set,
                device=self.device,
            )
            self.result = result
            if result.cancelled:
                self.state = "cancelled"
                return
            if self.want_curves and result.test_outputs is not None and result.metrics:
                self._status("computing ROC and PRO curves")
                self.curves = curves_from_outputs(result.test_outputs)
            self.state = "finished"
        except IKDError as exc:
            self.error = str(exc)
            self.state = "failed"
        except Exception as exc:  # noqa: BLE001 - reported to the user, never kills the server
            log.error("training failed:\n%s", traceback.format_exc())
            self.error = f"training failed: {type(exc).__name__}: {exc}"
            self.state = "failed"
        finally:
            if self.state == "running":
                self.state = "failed"
                self.error = self.error or "training ended unexpectedly"
            self.events.put(JobEvent("end", self.state))


def curves_from_outputs(res: dict[str, Any]) -> Curves:
    """Curves and metrics from :func:`ikd_core.train.predict_maps` outputs."""
    from ..metrics import image_roc_curve, pixel_roc_curve, pro_curve
    from ..train import compute_metrics

    known = res["labels"] >= 0
    scores, labels = res["scores"][known], res["labels"][known]
    maps, masks = res["maps"][known], res["masks"][known]
    fpr, tpr, _ = image_roc_curve(scores, labels)
    has_masks = bool(masks.sum() > 0)
    if has_masks:
        pfpr, ptpr, _ = pixel_roc_curve(maps, masks)
        ofpr, opro = pro_curve(maps, masks)
    else:
        pfpr = ptpr = ofpr = opro = []
    return Curves((fpr, tpr), (pfpr, ptpr), (ofpr, opro), compute_metrics(res))


class JobRegistry:
    """Training jobs by owner (e.g. a browser session), so that Stop only stops the caller's run."""

    def __init__(self) -> None:
        self._jobs: dict[str, TrainingJob] = {}
        self._lock = threading.Lock()

    def put(self, owner: str, job: TrainingJob) -> None:
        with self._lock:
            self._jobs[owner] = job

    def get(self, owner: str) -> TrainingJob | None:
        with self._lock:
            return self._jobs.get(owner)

    def stop(self, owner: str) -> bool:
        """Stop the owner's running job; False if it has none."""
        job = self.get(owner)
        if job is None or job.done:
            return False
        job.stop()
        return True

    def discard(self, owner: str, job: TrainingJob) -> None:
        with self._lock:
            if self._jobs.get(owner) is job:
                del self._jobs[owner]
