"""Background training jobs, their events and curves, and who may control them."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.sources import DataSpec, build_datasets
from ..errors import IKDError
from ..evaluation import Curves, compute_curves
from ..train import train

log = logging.getLogger(__name__)


@dataclass
class JobEvent:
    """One message from a :class:`TrainingJob`: ``kind`` is ``status``, ``progress`` or ``end``."""

    kind: str
    message: str = ""
    progress: Any = None  # ikd_core.train.Progress for kind == "progress"


class TrainingJob:
    """Runs :func:`ikd_core.train.train` in a background thread.

    Progress arrives as :class:`JobEvent` objects on :attr:`events` (``Progress`` reports during
    training, ``status`` texts between phases, one ``end`` last). :meth:`stop` sets :attr:`stop_event`;
    training then ends at the next step and nothing is written, unless it was ``stop(keep=True)``: then the model
    trained so far is fitted, evaluated and saved, marked stopped early (the same through ``stop_file``).
    When done, :attr:`state` is ``finished``, ``cancelled`` or ``failed``, with :attr:`result` / :attr:`curves`
    or :attr:`error`.
    With ``release_reservation``, ``out_path`` came from :func:`~ikd_core.service.reserve_checkpoint_path` and its
    reservation is released when the run ends, whatever the outcome (before the ``end`` event).
    """

    def __init__(
        self,
        spec: DataSpec,
        config: Any,
        out_path: str | os.PathLike[str] | None,
        curves: bool = True,
        device: Any = None,
        datasets: tuple[Any, Any] | None = None,
        stop_file: str | os.PathLike[str] | None = None,
        release_reservation: bool = False,
    ) -> None:
        self.spec = spec
        self.release_reservation = release_reservation
        self.datasets = datasets  # (train, test) already built and checked, e.g. by check_training_data
        self.config = config
        self.out_path = Path(out_path) if out_path is not None else None
        self.want_curves = curves
        self.device = device
        self.events: queue.Queue[JobEvent] = queue.Queue()
        self.stop_event = threading.Event()
        self.keep_on_stop = False
        self.stop_file = Path(stop_file) if stop_file is not None else None
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

    def stop(self, keep: bool = False) -> None:
        """Ask the run to stop at the next step; with ``keep`` the model trained so far is still saved (marked
        stopped early), else no checkpoint is written."""
        self.keep_on_stop = keep
        self.stop_event.set()

    def should_stop(self) -> bool:
        """:meth:`stop` was called, or another process created :attr:`stop_file` (see :class:`StopFile`)."""
        if not self.stop_event.is_set() and self.stop_file is not None and self.stop_file.exists():
            self.stop_event.set()
        return self.stop_event.is_set()

    def keep_requested(self) -> bool:
        """Whether the stop asked for keeps the partial model (the stop file's word wins: it is the latest)."""
        if self.stop_file is not None:
            kept = StopFile.read_keep(self.stop_file)
            if kept is not None:
                return kept
        return self.keep_on_stop

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
            self._status("preparing data")
            if self.datasets is not None:
                train_ds, test_ds = self.datasets
            else:
                train_ds, test_ds = build_datasets(self.spec, self.config.image_size)
            self.n_train = len(train_ds)  # type: ignore[arg-type]
            self.n_test = len(test_ds) if test_ds is not None else 0  # type: ignore[arg-type]
            if self.should_stop():
                self.state = "cancelled"
                return
            self._status(f"building the {self.config.backbone} teacher and student")
            result = train(
                train_ds, test_ds, self.config, out_path=self.out_path, category=self.spec.category,
                data_info=self.spec.to_dict(), callback=self._on_progress, should_stop=self.should_stop,
                device=self.device, keep_on_stop=self.keep_requested,
            )
            self.result = result
            if result.cancelled:
                self.state = "cancelled"
                return
            if self.want_curves and result.test_outputs is not None and result.metrics:
                self._status("computing ROC and PRO curves")
                self.curves = compute_curves(result.test_outputs, result.metrics)
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
            if self.release_reservation and self.out_path is not None:
                from .checkpoint_store import release_checkpoint_path

                release_checkpoint_path(self.out_path)
            self.events.put(JobEvent("end", self.state))


class JobRegistry:
    """Training jobs by owner (e.g. a browser session), so that Stop only stops the caller's run. A job is any
    handle with ``stop()`` and ``done``: a :class:`TrainingJob`, or a :class:`StopFile` for a run in another
    process."""

    def __init__(self) -> None:
        self._jobs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def put(self, owner: str, job: Any) -> None:
        with self._lock:
            self._jobs[owner] = job

    def get(self, owner: str) -> Any:
        with self._lock:
            return self._jobs.get(owner)

    def stop(self, owner: str, keep: bool = False) -> bool:
        """Stop the owner's running job (``keep``: save the model trained so far); False if it has none."""
        job = self.get(owner)
        if job is None or job.done:
            return False
        job.stop(keep=keep)
        return True

    def discard(self, owner: str, job: Any) -> None:
        with self._lock:
            if self._jobs.get(owner) is job:
                del self._jobs[owner]


class StopFile:
    """A stop request that crosses processes: on ZeroGPU a training run lives in a worker process, so the Stop
    button (in the server process) asks it to stop by creating a file the run polls every step. The file holds
    ``keep`` (save the model trained so far) or ``discard``."""

    def __init__(self, folder: str | os.PathLike[str], job_id: str | None = None) -> None:
        self.job_id = job_id or uuid.uuid4().hex
        self.path = Path(folder) / f"{self.job_id}.stop"

    def set(self, keep: bool = False) -> None:
        """Ask the run to stop; ``keep``: save what was trained so far. Written atomically (a rename), so the
        run never reads half a word."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        tmp.write_text("keep" if keep else "discard")
        os.replace(tmp, self.path)

    @staticmethod
    def read_keep(path: str | os.PathLike[str]) -> bool | None:
        """What a stop file asks: True keep, False discard, None no stop file."""
        try:
            return Path(path).read_text().strip() == "keep"
        except OSError:
            return None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    # the job-handle interface of :class:`JobRegistry`
    stop = set

    @property
    def done(self) -> bool:
        return False  # the registry drops the handle when the run ends


@dataclass
class TrainingUpdate:
    """What :func:`stream_training` reports: only plain, picklable values (numbers, strings, dicts, arrays),
    because on ZeroGPU every yielded value is pickled from the GPU worker to the server process.

    ``kind`` is ``status`` (``message``), ``progress`` (``progress`` plus the ``losses`` logged since the last
    update) or ``end`` (``state``: finished, cancelled or failed, with the results or ``error``).
    """

    kind: str
    message: str = ""
    progress: Any = None  # ikd_core.train.Progress (a dataclass of numbers)
    losses: list[tuple[int, float]] = field(default_factory=list)
    state: str = ""
    error: str | None = None
    checkpoint: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: Curves | None = None
    seconds: float = 0.0


def stream_training(job: TrainingJob, poll: float = 0.5, every: float = 1.0) -> Iterator[TrainingUpdate]:
    """Start ``job`` and report on it until it ends: a status or progress update at most every ``every``
    seconds (and one at least every ``poll`` seconds while nothing happens, so a consumer can stop it), then
    one ``end`` update. Closing the generator early (the client went away) stops the run; nothing is saved.
    """
    job.start()
    sent = 0
    last = 0.0
    try:
        for ev in job.iter_events(poll=poll):
            if ev is not None and ev.kind == "end":
                break
            now = time.monotonic()
            if ev is not None and ev.kind == "status":
                yield TrainingUpdate("status", message=ev.message)
                last = now
            elif now - last >= every or ev is None:
                losses = job.losses[sent:]
                sent += len(losses)
                yield TrainingUpdate("progress", progress=job.last_progress, losses=list(losses))
                last = now
        job.join()
        end = TrainingUpdate("end", state=job.state, error=job.error, losses=job.losses[sent:])
        if job.state == "finished" and job.result is not None:
            res = job.result
            end.checkpoint = str(res.checkpoint) if res.checkpoint is not None else None
            end.metadata, end.metrics, end.seconds = res.metadata, res.metrics, res.seconds
            end.curves = job.curves
        yield end
    finally:
        if not job.done:
            job.stop()
            job.join(timeout=60)
