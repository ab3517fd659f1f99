"""The backend as a long-lived worker for the add-on: protocol requests in, one job at a time, replies out.

Why a worker: Blender's UI must stay responsive while a job runs, answer cancel and ping at once, and not
reload models for every run. ``serve`` frames JSON lines on streams (``python -m backend serve`` uses the
process's stdin/stdout); ``Worker`` validates requests, runs jobs in a thread and reports through a
``send`` function, so the add-on can also drive it in-process. Every job failure becomes one error reply
and the worker carries on. torch is imported only inside jobs, so the worker is ready at once.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from . import __version__, protocol
from .errors import BackendError, CancelledError, InputError, out_of_memory_advice
from .files import atomic_write
from .progress import ProgressCallback

Send = Callable[[dict], None]
PROGRESS_INTERVAL = 0.05  # seconds between progress replies within a stage; stage changes and ends always go out
SHUTDOWN_WAIT = 30.0  # seconds a running job gets to reach its next progress point when the worker stops
JOB_PREFIX = "imageto3d-job-"
MESH_FILE = "mesh.npz"
VIEWS_FILE = "views.png"
SHEET_TILE = 128
SHEET_COLUMNS = 9

def serve(stdin: TextIO, stdout: TextIO, results_dir: Path | None = None) -> None:
    """Answer protocol lines from ``stdin`` on ``stdout`` until a shutdown request or end of input.

    While serving, ``sys.stdout`` points at stderr, so stray prints from libraries cannot corrupt the protocol.
    """
    write_lock = threading.Lock()

    def send(message: dict) -> None:
        line = protocol.encode(message)
        with write_lock:
            try:
                stdout.write(line)
                stdout.flush()
            except (OSError, ValueError):  # the reader is gone; the loop ends at end of input
                pass

    saved_stdout, sys.stdout = sys.stdout, sys.stderr
    worker = Worker(send, results_dir)
    try:
        send({"type": "ready", "protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid()})
        while True:
            line = _read_line(stdin)
            if line is None:
                break
            if isinstance(line, protocol.ProtocolError):
                send(protocol.error_reply(None, f"invalid request: {line}"))
                continue
            if not line.strip():
                continue
            try:
                message = protocol.decode(line)
            except protocol.ProtocolError as exc:
                send(protocol.error_reply(None, f"invalid request: {exc}"))
                continue
            if not worker.handle(message):
                break
    finally:
        worker.shutdown()
        sys.stdout = saved_stdout


def protocol_streams() -> tuple[TextIO, TextIO]:
    """This process's stdin, and its real stdout reserved for protocol lines; file descriptor 1 then goes to stderr.

    Redirecting the descriptor, not just ``sys.stdout``, also keeps native libraries' prints off the protocol.
    """
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    try:
        os.dup2(2, 1)
    except OSError:  # no usable stderr (a windowless launch): native prints are dropped instead
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
    stdout = open(protocol_fd, "w", encoding="utf-8", newline="\n")
    return stdin, stdout


def _read_line(stdin: TextIO) -> str | protocol.ProtocolError | None:
    """The next line without its newline; None at end of input; an error (after skipping it) for an overlong line."""
    try:
        chunk = stdin.readline(protocol.MAX_LINE + 1)
        if not chunk:
            return None
        if chunk.endswith("\n") or len(chunk) <= protocol.MAX_LINE:
            return chunk.rstrip("\r\n")
        while chunk and not chunk.endswith("\n"):
            chunk = stdin.readline(protocol.MAX_LINE + 1)
    except (OSError, ValueError):  # closed or broken input ends the session like end of input
        return None
    return protocol.ProtocolError(f"line too long: more than {protocol.MAX_LINE} characters")


@dataclass
class _Job:
    id: str
    spec: dict
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Worker:
    """Validates requests, runs one job at a time in a thread, and replies through ``send`` (thread-safe)."""

    def __init__(self, send: Send, results_dir: Path | None = None) -> None:
        self._send = send
        self._results_dir = Path(results_dir) if results_dir is not None else Path(tempfile.gettempdir())
        self._lock = threading.Lock()
        self._job: _Job | None = None
        self._models = _ModelCache()

    def handle(self, message: Any) -> bool:
        """Act on one decoded message; False when it asks the worker to stop. Never raises: a bug becomes an error reply."""
        try:
            return self._handle(message)
        except Exception as exc:
            self._send(protocol.error_reply(None, *describe_error(exc)))
            return True

    def _handle(self, message: Any) -> bool:
        try:
            request = protocol.validate_request(message)
        except protocol.ProtocolError as exc:
            self._send(protocol.error_reply(exc.request_id, f"invalid request: {exc}"))
            return True
        kind = request["type"]
        if kind == "shutdown":
            return False
        if kind == "ping":
            self._send({"type": "pong", "id": request["id"]})
        elif kind == "cancel":
            with self._lock:  # held while replying, so this error never overtakes the job's final reply
                if self._job is not None and self._job.id == request["id"]:
                    self._job.cancel.set()
                else:
                    self._send(protocol.error_reply(request["id"], f"cannot cancel {request['id']!r}: no such job is running"))
        else:
            with self._lock:
                if self._job is not None:
                    self._send(protocol.error_reply(request["id"], f"busy: job {self._job.id!r} is still running; cancel it or wait"))
                    return True
                job = _Job(request["id"], request["job"])
                job.thread = threading.Thread(target=self._run, args=(job,), name=f"backend-job-{job.id}", daemon=True)
                self._job = job
                job.thread.start()
        return True

    def shutdown(self, timeout: float = SHUTDOWN_WAIT) -> None:
        """Cancel the running job and give it ``timeout`` seconds to stop at its next progress point."""
        with self._lock:
            job = self._job
            if job is not None:
                job.cancel.set()
        if job is not None and job.thread is not None:
            job.thread.join(timeout)

    def _run(self, job: _Job) -> None:
        final = protocol.error_reply(job.id, "internal error: the job ended without a result")
        try:
            mesh, info = JOBS[job.spec["kind"]](job.spec, _JobContext(job, self._send, self._models, self._results_dir))
            final = {"type": "result", "id": job.id, "mesh": mesh, "info": info}
        except CancelledError:
            final = {"type": "cancelled", "id": job.id}
        except Exception as exc:  # every failure becomes one reply; the worker lives on
            message, trace = describe_error(exc)
            if out_of_memory_advice(exc) is not None:
                self._models.release()
            final = protocol.error_reply(job.id, message, trace)
        finally:
            with self._lock:  # free the slot before replying, so a start sent on receipt of the reply is accepted
                self._job = None
                self._send(final)


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(one-line message, traceback): user errors as they are, out-of-memory with advice, anything else as internal."""
    if isinstance(exc, BackendError):
        return _one_line(str(exc)) or type(exc).__name__, ""
    trace = "".join(traceback.format_exception(exc))
    advice = out_of_memory_advice(exc)
    if advice is not None:
        return advice, trace
    if isinstance(exc, ImportError):
        return f"missing Python package ({_one_line(str(exc))}): install the backend's requirements into {sys.executable}", trace
    return f"internal error: {type(exc).__name__}: {_one_line(str(exc))}", trace


def _one_line(text: str, limit: int = 2000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _JobContext:
    """What a job function needs: progress (the cancel point), the model cache and a results folder."""

    def __init__(self, job: _Job, send: Send, models: "_ModelCache", results_dir: Path) -> None:
        self._job, self._send, self.models, self._results_dir = job, send, models, results_dir
        self._last: tuple[str, float] = ("", 0.0)
        self.started = time.perf_counter()

    def progress(self, stage: str, step: int, total: int) -> None:
        """The pipelines' ProgressCallback: raises CancelledError once cancel was asked, else reports (throttled)."""
        if self._job.cancel.is_set():
            raise CancelledError("cancelled")
        now = time.monotonic()
        if stage != self._last[0] or step <= 0 or step >= total or now - self._last[1] >= PROGRESS_INTERVAL:
            self._last = (stage, now)
            self._send({"type": "progress", "id": self._job.id, "stage": str(stage), "step": int(step), "total": int(total)})

    def output_folder(self) -> Path:
        self._results_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=JOB_PREFIX, dir=self._results_dir))


class _ModelCache:
    """The last reconstruction pipeline and view generator stay loaded, so consecutive jobs skip loading.

    Keys include the weights' modification times, so a checkpoint retrained in place is reloaded.
    Only one of each is kept: two Zero123 models rarely fit on a GPU.
    """

    def __init__(self) -> None:
        self._reconstruction: tuple[tuple, Any] | None = None
        self._generator: tuple[tuple, Any] | None = None

    def reconstruction(self, checkpoint: str | None, device: Any, progress: ProgressCallback) -> Any:
        from .checkpoints import DEFAULT_CHECKPOINT
        from .reconstruction import ReconstructionPipeline

        key = (_file_key(Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT), str(device))
        if self._reconstruction is None or self._reconstruction[0] != key:
            self._reconstruction = None
            self._free()
            progress("loading reconstruction", 0, 1)
            self._reconstruction = (key, ReconstructionPipeline.from_checkpoint(checkpoint, str(device)))
            progress("loading reconstruction", 1, 1)
        return self._reconstruction[1]

    def generator(self, folder: str, device: Any, progress: ProgressCallback) -> Any:
        from .devices import generation_dtype
        from .generation.zero123 import Zero123Generator

        key = (_file_key(Path(folder)), str(device))
        if self._generator is None or self._generator[0] != key:
            self._generator = None
            self._free()
            progress("loading view generator", 0, 1)
            self._generator = (key, Zero123Generator.from_folder(folder, device, generation_dtype(device)))
            progress("loading view generator", 1, 1)
        return self._generator[1]

    def release(self) -> None:
        """Drop every model (after running out of memory): the next job reloads what it needs."""
        self._reconstruction = self._generator = None
        self._free()

    @staticmethod
    def _free() -> None:
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _file_key(path: Path) -> tuple:
    """A path plus the modification times of it and its direct children: changes when weights are replaced."""
    try:
        resolved = path.resolve()
        children = sorted(resolved.iterdir()) if resolved.is_dir() else []
        return (str(resolved), resolved.stat().st_mtime_ns, tuple((c.name, c.stat().st_mtime_ns) for c in children))
    except OSError:
        return (str(path),)


def _image2mesh(job: dict, ctx: _JobContext) -> tuple[str, dict]:
    import torch

    from .devices import resolve_device
    from .image_to_mesh import STAGE1_STEPS, STAGE2_STEPS, ImageToMeshPipeline
    from .preprocess import prepare

    from .generation.bundled import generator_folder

    ctx.progress("preprocess", 0, 1)
    prepared = prepare(job["image"])  # a bad image fails in a moment, before any model is loaded
    ctx.progress("preprocess", 1, 1)
    device = resolve_device(job["device"])
    generator = ctx.models.generator(str(generator_folder(job["zero123"])), device, ctx.progress)
    reconstruction = ctx.models.reconstruction(job["checkpoint"], device, ctx.progress)
    loaded = time.perf_counter()
    steps = job["steps"]
    stage1, stage2 = (steps, max(2, round(steps * 2 / 3))) if steps else (STAGE1_STEPS, STAGE2_STEPS)
    torch.manual_seed(job["seed"])
    result = ImageToMeshPipeline(generator, reconstruction)(
        prepared, job["polar"], stage1, stage2, job["seed"], job["resolution"], job["views_dir"], ctx.progress)
    ran = time.perf_counter()
    sheet = _contact_sheet([result.input_image, *result.views.values()])
    mesh, views = _write_result(result.mesh, sheet, ctx)
    info = _mesh_info(result.mesh, result.polar, result.polar_source, reconstruction, ctx.started, loaded, ran)
    info["views"] = views
    return mesh, info


def _reconstruct(job: dict, ctx: _JobContext) -> tuple[str, dict]:
    import numpy as np
    import torch

    from .devices import resolve_device
    from .views import load_view_folder

    device = resolve_device(job["device"])
    reconstruction = ctx.models.reconstruction(job["checkpoint"], device, ctx.progress)
    loaded = time.perf_counter()
    torch.manual_seed(job["seed"])
    views = load_view_folder(job["views_dir"])
    mesh = reconstruction(views, job["resolution"], ctx.progress)
    ran = time.perf_counter()
    centre = views.reference_c2w[:3, 3]
    polar = math.degrees(math.acos(float(np.clip(centre[2] / max(np.linalg.norm(centre), 1e-12), -1.0, 1.0))))
    path, _ = _write_result(mesh, None, ctx)
    return path, _mesh_info(mesh, polar, "views", reconstruction, ctx.started, loaded, ran)


def _info(job: dict, ctx: _JobContext) -> tuple[None, dict]:
    import numpy as np
    import torch

    from .devices import resolve_device

    device = resolve_device(job["device"])
    reconstruction = ctx.models.reconstruction(job["checkpoint"], device, ctx.progress)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = "Apple GPU (Metal)"
    else:
        name = f"CPU ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"
    checkpoint = _describe_info(reconstruction.info, job["checkpoint"])
    return None, {
        "python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
        "numpy": np.__version__, "backend": __version__, "protocol": protocol.PROTOCOL_VERSION,
        "device": str(device), "device_name": name, "cuda_available": torch.cuda.is_available(),
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "checkpoint": checkpoint, "seconds": round(time.perf_counter() - ctx.started, 3),
    }


def _list_checkpoints(job: dict, ctx: _JobContext) -> tuple[None, dict]:
    from .checkpoints import DEFAULT_CHECKPOINT

    entries = [_describe_folder(DEFAULT_CHECKPOINT, default=True)]
    seen = {str(DEFAULT_CHECKPOINT.resolve())}
    folders = job["folders"]
    for n, folder in enumerate(folders):
        ctx.progress("listing checkpoints", n, len(folders))
        root = Path(folder)
        try:
            candidates = _checkpoint_candidates(root)
        except OSError as exc:
            entries.append(_entry(root, error=f"cannot list {root}: {exc.strerror or exc}"))
            continue
        for path in candidates:
            if str(path.resolve()) not in seen:
                seen.add(str(path.resolve()))
                entries.append(_describe_folder(path) if path.is_dir() else _entry(path, architecture="one2345-lod0 (official .pth)"))
    ctx.progress("listing checkpoints", len(folders), len(folders))
    return None, {"checkpoints": entries}


def _checkpoint_candidates(root: Path) -> list[Path]:
    """``root`` itself if it is a checkpoint folder, its checkpoint sub-folders, and its official ``.pth`` files."""
    from .checkpoints import CONFIG_FILE, WEIGHTS_FILE

    if not root.is_dir():
        raise NotADirectoryError(0, "not a folder")
    children = sorted(root.iterdir())
    candidates = [root] if (root / CONFIG_FILE).exists() else []
    candidates += [c for c in children if c.is_dir() and ((c / CONFIG_FILE).exists() or (c / WEIGHTS_FILE).exists())]
    return candidates + [c for c in children if c.is_file() and c.suffix == ".pth"]


JOBS: dict[str, Callable[[dict, _JobContext], tuple[str | None, dict]]] = {
    "image2mesh": _image2mesh, "reconstruct": _reconstruct, "info": _info, "list_checkpoints": _list_checkpoints}


def _entry(path: Path, **fields: Any) -> dict:
    entry = {"name": path.stem if path.is_file() else path.name, "path": str(path), "architecture": None, "step": None,
             "metrics": {}, "created": None, "default": False, "error": None}
    entry.update(fields)
    return entry


def _describe_folder(path: Path, default: bool = False) -> dict:
    """One checkpoint folder from its config.json alone (weights are not read): cheap enough for a list."""
    from .checkpoints import CONFIG_FILE, FORMAT_NAME, WEIGHTS_FILE

    try:
        meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ValueError(f"not a {FORMAT_NAME} config")
        if not (path / WEIGHTS_FILE).is_file():
            raise ValueError(f"{WEIGHTS_FILE} is missing")
        config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        step = meta.get("step")
        return _entry(path, default=default, architecture=config.get("architecture"),
                      step=step if isinstance(step, int) and not isinstance(step, bool) else None,
                      metrics=meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {},
                      created=meta.get("created") if isinstance(meta.get("created"), str) else None)
    except (OSError, ValueError) as exc:
        return _entry(path, default=default, error=f"unreadable checkpoint: {_one_line(str(exc), 300)}")


def _describe_info(info: Any, path: str | None) -> dict:
    from .checkpoints import DEFAULT_CHECKPOINT

    return {"name": info.name, "path": path or str(DEFAULT_CHECKPOINT), "architecture": info.config.architecture,
            "step": info.step, "metrics": info.metrics, "created": info.created, "default": path is None}


def _mesh_info(mesh: Any, polar: float, polar_source: str, reconstruction: Any, started: float, loaded: float, ran: float) -> dict:
    name = reconstruction.info.name if reconstruction.info is not None else None
    return {"polar": round(float(polar), 4), "polar_source": polar_source, "vertices": int(len(mesh.vertices)),
            "faces": int(len(mesh.faces)), "device": str(reconstruction.device), "checkpoint": name,
            "timings": {"load": round(loaded - started, 3), "run": round(ran - loaded, 3),
                        "total": round(time.perf_counter() - started, 3)}}


def _write_result(mesh: Any, sheet: bytes | None, ctx: _JobContext) -> tuple[str, str | None]:
    """A new job folder holding the mesh as an npz (vertices float32 z-up, faces int32, colours uint8) and the
    optional contact sheet, each written atomically; the folder is removed again if writing fails."""
    import numpy as np

    if len(mesh.faces) == 0:
        raise InputError("the reconstruction produced no surface (the SDF never crosses zero): check the views and the checkpoint")
    ctx.progress("saving", 0, 1)  # the last point where a cancel stops the job: nothing is written before it
    buffer = io.BytesIO()
    np.savez(buffer, vertices=np.ascontiguousarray(mesh.vertices, np.float32), faces=np.ascontiguousarray(mesh.faces, np.int32),
             colors=np.ascontiguousarray(mesh.colors, np.uint8))
    folder = ctx.output_folder()
    try:
        atomic_write(folder / MESH_FILE, buffer.getvalue())
        if sheet is not None:
            atomic_write(folder / VIEWS_FILE, sheet)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return str(folder / MESH_FILE), str(folder / VIEWS_FILE) if sheet is not None else None


def _contact_sheet(images: list[Any]) -> bytes:
    """The input and the generated views as one PNG grid, so the user can see what the mesh was made from."""
    from PIL import Image

    rows = -(-len(images) // SHEET_COLUMNS)
    sheet = Image.new("RGB", (SHEET_COLUMNS * SHEET_TILE, rows * SHEET_TILE), "white")
    for n, image in enumerate(images):
        tile = image.convert("RGB").resize((SHEET_TILE, SHEET_TILE), Image.Resampling.LANCZOS)
        sheet.paste(tile, ((n % SHEET_COLUMNS) * SHEET_TILE, (n // SHEET_COLUMNS) * SHEET_TILE))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
