"""The add-on's handle on the backend worker: start a job, poll its events, cancel it, close.

The UI calls ``poll`` from a ``bpy.app.timers`` function (or ``run`` where there is no event loop, as in
background mode) and never blocks on the worker. Whatever goes wrong on the worker's side arrives as an
``error`` event, so a job always ends in exactly one final event and the busy state is always released.
No bpy and no torch here; numpy (shipped with Blender) only to load result meshes. Use from one thread.
"""

from __future__ import annotations

import os
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .backend import protocol
from .transports import InProcessTransport, SubprocessTransport, Transport

__all__ = ["BackendBusy", "BackendClient", "BackendTimeout", "InProcessTransport", "JobEvent", "MeshArrays",
           "SubprocessTransport", "Transport"]

POLL_INTERVAL = 0.05  # seconds between polls in ``run``


class BackendBusy(RuntimeError):
    """A job is already running: one at a time."""


class BackendTimeout(TimeoutError):
    """``run`` gave up waiting; the job was asked to cancel and ``busy`` clears when its final event is polled."""


@dataclass
class JobEvent:
    """One thing that happened to a job; ``job_id`` is "" for backend errors that belong to no job."""

    kind: str  # "progress" | "result" | "error" | "cancelled"
    job_id: str
    stage: str = ""
    step: int = 0
    total: int = 0
    mesh: "MeshArrays | None" = None  # for results of mesh jobs
    info: dict = field(default_factory=dict)
    message: str = ""
    traceback: str = ""


@dataclass
class MeshArrays:
    """The result mesh in memory: vertices (V, 3) float32 z-up world, faces (F, 3) int, colours (V, 3) uint8 sRGB."""

    vertices: "np.ndarray"
    faces: "np.ndarray"
    colors: "np.ndarray"


class BackendClient:
    """Runs jobs on a worker reached through ``transport``, one at a time."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._job: str | None = None

    @property
    def busy(self) -> bool:
        return self._job is not None

    def start(self, job: dict) -> str:
        """Validate ``job`` (``ValueError`` naming the field if it breaks the protocol), send it, return its id."""
        if self._job is not None:
            raise BackendBusy(f"job {self._job} is still running: cancel it or wait for it to finish")
        protocol.validate_job(job)
        job_id = uuid.uuid4().hex
        self._transport.send({"type": "start", "id": job_id, "job": job})
        self._job = job_id  # only once sent: a failed send must not leave the client busy
        return job_id

    def poll(self) -> list[JobEvent]:
        """Events since the last call, without blocking; result meshes are loaded and their files removed."""
        events = []
        for message in self._transport.receive():
            event = self._event(message)
            if event is not None:
                events.append(event)
        return events

    def cancel(self, job_id: str) -> None:
        """Ask the running job to stop at its next progress point; a ``cancelled`` event follows (or its result, if too late)."""
        if job_id == self._job:
            self._transport.send({"type": "cancel", "id": job_id})

    def run(self, job: dict, on_event: Callable[[JobEvent], None] | None = None, timeout: float | None = None) -> JobEvent:
        """Start ``job`` and block until its final event, which is returned; every event also goes to ``on_event``."""
        job_id = self.start(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
                if event.job_id == job_id and event.kind in protocol.FINAL_TYPES:
                    return event
            if deadline is not None and time.monotonic() > deadline:
                self.cancel(job_id)
                raise BackendTimeout(f"job {job_id} did not finish within {timeout:g} s; it was asked to cancel")
            time.sleep(POLL_INTERVAL)

    def discard(self, event: JobEvent) -> None:
        """Remove what is left of a result on disk (its contact sheet) once it was used, or is not wanted."""
        views = event.info.get("views")
        if isinstance(views, str) and self._in_results(Path(views)):
            _remove_result_file(Path(views).resolve())

    def close(self) -> None:
        """Stop the worker and remove every temporary result file."""
        self._transport.close()
        self._job = None

    def _event(self, message: dict) -> JobEvent | None:
        kind, job_id = message["type"], message.get("id")
        if kind == "error" and job_id is None:
            return JobEvent("error", "", message=message["message"], traceback=message["traceback"])
        if kind not in ("progress", *protocol.FINAL_TYPES) or job_id != self._job:
            return None  # ready, pong, or a late message about a job that already ended
        if kind == "progress":
            return JobEvent("progress", job_id, stage=message["stage"], step=message["step"], total=message["total"])
        self._job = None
        if kind == "error":
            return JobEvent("error", job_id, message=message["message"], traceback=message["traceback"])
        if kind == "cancelled":
            return JobEvent("cancelled", job_id)
        if message["mesh"] is None:
            return JobEvent("result", job_id, info=message["info"])
        try:
            mesh = self._take_mesh(Path(message["mesh"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            return JobEvent("error", job_id, message=f"the backend's result mesh is unreadable: {exc}", info=message["info"])
        return JobEvent("result", job_id, mesh=mesh, info=message["info"])

    def _in_results(self, path: Path) -> bool:
        """Whether ``path`` lies in the results folder: the only files a worker's reply may make the client touch."""
        return path.resolve().is_relative_to(self._transport.results_dir.resolve())

    def _take_mesh(self, path: Path) -> MeshArrays:
        """Load and check a result npz, then delete it (and its folder, unless the contact sheet is still there)."""
        if not self._in_results(path) or path.suffix != ".npz":
            raise ValueError(f"{path} is not a result file in {self._transport.results_dir}")
        path = path.resolve()
        try:
            with np.load(path, allow_pickle=False) as data:
                mesh = MeshArrays(data["vertices"], data["faces"], data["colors"])
        finally:
            _remove_result_file(path)
        _check_mesh(mesh)
        return mesh


def _remove_result_file(path: Path) -> None:
    """Delete one result file, and its job folder once that is empty (the contact sheet may still be there)."""
    path.unlink(missing_ok=True)
    try:
        os.rmdir(path.parent)
    except OSError:
        pass


def _check_mesh(mesh: MeshArrays) -> None:
    v, f, c = mesh.vertices, mesh.faces, mesh.colors
    if v.ndim != 2 or v.shape[1] != 3 or v.dtype != np.float32 or not np.isfinite(v).all():
        raise ValueError(f"vertices must be finite float32 (V, 3), got {v.dtype} {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype.kind not in "iu" or (f.size and (f.min() < 0 or f.max() >= len(v))):
        raise ValueError(f"faces must be (F, 3) integer indices into the {len(v)} vertices")
    if c.shape != v.shape or c.dtype != np.uint8:
        raise ValueError(f"colors must be uint8 (V, 3), got {c.dtype} {c.shape}")
