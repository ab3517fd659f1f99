"""How the add-on reaches the backend worker: a thread in Blender's Python, or a child process over pipes.

Both transports carry protocol messages (dicts, see backend/protocol.py) and never raise for worker
failures: a worker that cannot start, crashes, hangs or speaks garbage comes back as an ``error`` message,
so the UI has one stream to handle. Nothing here imports torch; the in-process worker imports it in its
own thread, on the first job.
"""

from __future__ import annotations

import importlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from .backend import protocol

CLOSE_WAIT = 5.0  # seconds a worker gets to finish after shutdown before it is killed / abandoned
RESULTS_PREFIX = "imageto3d-results-"
HANG_TIMEOUT = 120.0  # seconds without any reply, pongs included, after which a worker with a job counts as hung
CANCEL_TIMEOUT = 30.0  # seconds a cancelled job gets to stop before its worker is stopped (or abandoned)
PING_INTERVAL = 2.0  # seconds of silence during a job before the worker is pinged
KEEPALIVE = "keepalive"  # the id of the transport's own pings; their pongs only show the worker is alive


class Transport(Protocol):
    """What ``BackendClient`` needs from a way of running the worker."""

    @property
    def results_dir(self) -> Path:
        """The folder the worker writes job results into; owned by the transport and removed by ``close``."""

    def send(self, message: dict) -> None:
        """Deliver a request, starting the worker first for ``start`` and ``ping``; never raises for worker failures."""

    def receive(self) -> list[dict]:
        """Every worker message that arrived since the last call (non-blocking), plus transport errors."""

    def close(self) -> None:
        """Stop the worker (shutdown, then kill or abandon) and remove ``results_dir``."""


class _ResultsFolder:
    """A temporary folder created on first use and removed on close."""

    def __init__(self) -> None:
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix=RESULTS_PREFIX))
        return self._path

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


class _Watchdog:
    """Tells when a worker with a job is stuck, for both transports.

    A job can compute for minutes between progress replies, so silence alone proves nothing: after
    ``PING_INTERVAL`` of it the transport pings, and the worker answers from its reading thread while the
    job runs. No reply at all for ``hang_timeout`` means the worker itself is stuck. A job still running
    ``cancel_timeout`` after a cancel is stuck in one step (native code, a deadlock) and is given up.
    """

    def __init__(self, hang_timeout: float, cancel_timeout: float) -> None:
        self.hang_timeout, self.cancel_timeout = hang_timeout, cancel_timeout
        self.job: str | None = None  # the job whose final reply is awaited
        self._heard = self._pinged = 0.0
        self._cancelled: float | None = None

    def started(self, job_id: str) -> None:
        self.job, self._cancelled = job_id, None
        self._heard = self._pinged = time.monotonic()

    def cancelling(self, job_id: str) -> None:
        if job_id == self.job and self._cancelled is None:
            self._cancelled = time.monotonic()

    def heard(self, message: dict) -> None:
        self._heard = time.monotonic()
        if message["type"] in protocol.FINAL_TYPES and message["id"] == self.job:
            self.job = None

    def tend(self, stop: Callable[[], None], ping: Callable[[dict], None], what: str) -> list[dict]:
        """After a transport took in the worker's replies: ``stop`` a worker to give up and return its job's final
        reply (``what`` names the worker in it), or ``ping`` one that has been silent a while."""
        verdict = self._verdict()
        if verdict is not None:
            stop()
            return [self._give_up(verdict, what)]
        if self._ping_due():
            ping({"type": "ping", "id": KEEPALIVE})
        return []

    def _ping_due(self) -> bool:
        """Whether to ping now (at most once per interval, only during a job)."""
        now = time.monotonic()
        if self.job is None or now - max(self._heard, self._pinged) < PING_INTERVAL:
            return False
        self._pinged = now
        return True

    def _verdict(self) -> str | None:
        """"cancelled" or "hung" once the worker has to be given up; None while all is well."""
        if self.job is None:
            return None
        now = time.monotonic()
        if self._cancelled is not None and now - self._cancelled > self.cancel_timeout:
            return "cancelled"
        return "hung" if now - self._heard > self.hang_timeout else None

    def _give_up(self, verdict: str, what: str) -> dict:
        """The final reply for the job of a worker given up for ``verdict``; clears the job."""
        job, self.job = self.job, None
        if verdict == "cancelled":
            return {"type": "cancelled", "id": job}
        return protocol.error_reply(job, f"{what} stopped responding for {self.hang_timeout:g} s and was stopped: see the "
                                         "console; raise the time-out in the preferences if a step is this slow on your machine")


class InProcessTransport:
    """The worker as a thread in this Python: no second interpreter, but a stuck job cannot be killed.

    A worker given up by the watchdog is abandoned instead: it is told to shut down, its job stops at its next
    progress point if it ever reaches one, and the next job gets a new worker thread.
    The backend is imported as this add-on's sub-package (``.backend``), never as a top-level module.
    Messages make a JSON round trip both ways, so they behave exactly as over a pipe.
    """

    def __init__(self, hang_timeout: float = HANG_TIMEOUT, cancel_timeout: float = CANCEL_TIMEOUT) -> None:
        self._inbox: queue.Queue[dict] = queue.Queue()
        self._outbox: queue.Queue[dict] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._results = _ResultsFolder()
        self._watchdog = _Watchdog(hang_timeout, cancel_timeout)

    @property
    def results_dir(self) -> Path:
        return self._results.path

    def send(self, message: dict) -> None:
        if self._thread is None or not self._thread.is_alive():
            if message.get("type") not in ("start", "ping"):
                return
            self._inbox = queue.Queue()
            self._thread = threading.Thread(target=self._serve, args=(self._inbox, self.results_dir),
                                            name="imageto3d-backend", daemon=True)
            self._thread.start()
        _watch_request(self._watchdog, message)
        self._inbox.put(protocol.decode(protocol.encode(message)))

    def receive(self) -> list[dict]:
        messages = []
        while True:
            try:
                message = self._outbox.get_nowait()
            except queue.Empty:
                break
            self._watchdog.heard(message)
            messages.append(message)
        return messages + self._watchdog.tend(self._abandon, self._inbox.put, "the backend thread in Blender")

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put({"type": "shutdown"})
            self._thread.join(CLOSE_WAIT)  # a job past its last progress point finishes in the background
        self._thread = None
        self._watchdog.job = None
        self._results.remove()

    def _abandon(self) -> None:
        """Leave the stuck worker thread to end by itself; the next request starts a new one with a new inbox."""
        self._inbox.put({"type": "shutdown"})
        self._thread = None

    def _reply(self, message: dict) -> None:
        self._outbox.put(protocol.decode(protocol.encode(message)))

    def _serve(self, inbox: queue.Queue, results_dir: Path) -> None:
        try:
            worker_module = importlib.import_module(".backend.worker", __package__)
            worker = worker_module.Worker(self._reply, results_dir)
        except Exception as exc:  # answer every request with the reason, instead of hanging the UI
            reason = f"cannot load the backend in Blender's Python: {type(exc).__name__}: {exc}"
            while (message := inbox.get()).get("type") != "shutdown":
                if message.get("type") in ("start", "ping"):
                    self._reply(protocol.error_reply(message.get("id"), reason))
            return
        self._reply({"type": "ready", "protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid()})
        try:
            while worker.handle(inbox.get()):
                pass
        finally:
            worker.shutdown(CLOSE_WAIT)


class _Exited:
    """Reader-thread note: the worker closed its stdout and exited with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code


class _Malformed:
    """Reader-thread note: a line that is not a protocol message."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class SubprocessTransport:
    """The worker as a child process ``PYTHON -m backend serve`` speaking the protocol over its stdin/stdout.

    ``python`` needs torch and the backend's requirements; ``backend_parent`` is the folder that contains
    the ``backend`` package (the child's working folder); ``env`` adds variables to this process's
    environment. The child's stderr goes to this process's console. A crash, a line that is not protocol, or
    a child the watchdog gives up (silent for ``hang_timeout`` s, or still busy ``cancel_timeout`` s after a
    cancel) stop the child, remove its result files and end the job with an error (or ``cancelled``); the
    next ``start`` starts a new child.
    """

    def __init__(self, python: str, backend_parent: Path, env: dict | None = None, hang_timeout: float = HANG_TIMEOUT,
                 cancel_timeout: float = CANCEL_TIMEOUT) -> None:
        self._python = python
        self._cwd = Path(backend_parent)
        self._env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending: list[dict] = []
        self._watchdog = _Watchdog(hang_timeout, cancel_timeout)
        self._write_lock = threading.Lock()
        self._results = _ResultsFolder()

    @property
    def results_dir(self) -> Path:
        return self._results.path

    @property
    def pid(self) -> int | None:
        """The running child's process id (None when no child runs)."""
        return self._proc.pid if self._proc is not None else None

    def send(self, message: dict) -> None:
        kind = message.get("type")
        if self._proc is not None and self._proc.poll() is not None and kind in ("start", "ping"):
            self._discard()  # died since the last receive(): start afresh
        if self._proc is None:
            if kind not in ("start", "ping"):
                return
            try:
                self._spawn()
            except (OSError, ValueError) as exc:
                self._pending.append(protocol.error_reply(
                    message.get("id"), f"cannot start the backend ({self._python} in {self._cwd}): {exc}"))
                return
        _watch_request(self._watchdog, message)
        self._write(message)

    def receive(self) -> list[dict]:
        messages, self._pending = self._pending, []
        if self._proc is None:
            return messages
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Exited):
                messages.append(self._fail(f"the backend process exited unexpectedly (code {item.code}): see the console; "
                                           "the next run starts a new one"))
                return messages
            if isinstance(item, _Malformed):
                messages.append(self._fail(f"the backend sent a message that is not protocol ({item.reason}) and was "
                                           "stopped: see the console; the next run starts a new one"))
                return messages
            if item["type"] == "ready" and item["protocol"] != protocol.PROTOCOL_VERSION:
                messages.append(self._fail(f"the backend speaks protocol {item['protocol']} but the add-on needs "
                                           f"{protocol.PROTOCOL_VERSION}: update the add-on and its backend together"))
                return messages
            self._watchdog.heard(item)
            messages.append(item)
        return messages + self._watchdog.tend(self._discard, self._write, "the backend process")

    def close(self) -> None:
        proc = self._proc
        if proc is not None:
            try:
                with self._write_lock:
                    proc.stdin.write(protocol.encode({"type": "shutdown"}).encode("utf-8"))
                    proc.stdin.close()
                proc.wait(CLOSE_WAIT)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self._discard()
        self._pending, self._watchdog.job = [], None
        self._results.remove()

    def _spawn(self) -> None:
        command = [self._python, "-m", "backend", "serve", "--results-dir", str(self.results_dir)]
        self._proc = subprocess.Popen(command, cwd=self._cwd, env=self._env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self._queue = queue.Queue()
        threading.Thread(target=_read_messages, args=(self._proc, self._queue), name="imageto3d-backend-reader",
                         daemon=True).start()

    def _write(self, message: dict) -> None:
        line = protocol.encode(message).encode("utf-8")
        with self._write_lock:
            try:
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
            except (OSError, ValueError):
                pass  # the child is gone: its reader reports the exit

    def _fail(self, reason: str) -> dict:
        """Drop the child (killing it unless it already exited) and turn ``reason`` into the current job's error."""
        self._discard()
        job, self._watchdog.job = self._watchdog.job, None
        return protocol.error_reply(job, reason)

    def _discard(self) -> None:
        """Kill the child unless it already exited, and remove what it wrote: none of it will be collected now."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(CLOSE_WAIT)
        except subprocess.TimeoutExpired:
            pass
        try:
            proc.stdin.close()  # stdout belongs to the reader thread, which closes it
        except (OSError, ValueError):
            pass
        self._results.remove()


def _watch_request(watchdog: _Watchdog, message: dict) -> None:
    if message.get("type") == "start":
        watchdog.started(message["id"])
    elif message.get("type") == "cancel":
        watchdog.cancelling(message["id"])


def _read_messages(proc: subprocess.Popen, out: queue.Queue) -> None:
    """Reader thread: each stdout line of ``proc`` as a validated message, a ``_Malformed`` note, or finally ``_Exited``."""
    with proc.stdout:
        try:
            while line := proc.stdout.readline(protocol.MAX_LINE + 2):
                try:
                    text = line.decode("utf-8").rstrip("\r\n")
                    out.put(protocol.validate_response(protocol.decode(text)))
                except (UnicodeDecodeError, protocol.ProtocolError) as exc:
                    out.put(_Malformed(" ".join(str(exc).split())[:160]))
                    return
        except (OSError, ValueError):
            pass  # a broken pipe ends the child's stream like end of file
    out.put(_Exited(proc.wait()))
