"""Cancelled, out-of-memory, hung and stuck jobs, and raw garbage on the worker's pipe.

Each ends in exactly one final reply with a clear message, leaves no temporary files, and the next job works.
Real workers throughout: the backend's ``Worker`` in this process (so a cancel can be placed in a chosen stage
from inside the job thread), or ``python -m backend serve`` as the add-on starts it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from addon import transports
from addon.client import BackendClient, InProcessTransport, JobEvent, SubprocessTransport
from backend import protocol
from backend.checkpoints import save_checkpoint
from backend.errors import GPU_MEMORY, SYSTEM_MEMORY
from backend.models import One2345Reconstructor, ReconstructorConfig
from backend.worker import Worker

from .tiny_zero123 import tiny_generator

REPO = Path(__file__).resolve().parents[1]
SPOT_VIEWS = REPO / "examples" / "spot_views"
ENV = {"OMP_NUM_THREADS": "1"}
IMAGE = SPOT_VIEWS / "stage1_8" / "0.png"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random reconstructor with a 32^3 volume: a sphere for any views, in a few seconds on a CPU."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "small", One2345Reconstructor(ReconstructorConfig(volume_resolution=32)))


@pytest.fixture(scope="module")
def tiny_zero123(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("zero123") / "tiny"
    tiny_generator(seed=0).save_folder(folder)
    return folder


def reconstruct(checkpoint: Path, resolution: int = 32) -> dict:
    return protocol.make_job("reconstruct", views_dir=str(SPOT_VIEWS), checkpoint=str(checkpoint), resolution=resolution,
                             device="cpu")


class Replies:
    """A ``Worker``'s send function: records replies and runs ``hook`` on each, in the thread that sent it."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.final = threading.Event()
        self.hook: Callable[[dict], None] = lambda message: None

    def __call__(self, message: dict) -> None:
        self.messages.append(message)
        self.hook(message)
        if message["type"] in protocol.FINAL_TYPES:
            self.final.set()

    def run(self, worker: Worker, job_id: str, job: dict, timeout: float = 300) -> dict:
        """Start ``job`` and return its final reply; ``self.messages`` then holds this job's replies only."""
        self.messages, self.final = [], threading.Event()
        worker.handle({"type": "start", "id": job_id, "job": job})
        assert self.final.wait(timeout), f"job {job_id} did not end: {self.messages[-3:]}"
        return self.messages[-1]

    def stages(self) -> list[str]:
        return list(dict.fromkeys(m["stage"] for m in self.messages if m["type"] == "progress"))


@pytest.fixture()
def private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's temporary folder, so a test can see every temporary file a job leaves."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


IMAGE_STAGES = ["preprocess", "loading view generator", "loading reconstruction", "zero123", "elevation"]
MESH_STAGES = ["volume", "hull coarse", "hull surface", "sdf coarse", "sdf surface", "marching cubes", "vertex colours"]


def test_cancel_in_every_stage_leaves_nothing_and_the_next_job_works(
        tmp_path: Path, private_temp: Path, small_checkpoint: Path, tiny_zero123: Path) -> None:
    replies, results = Replies(), tmp_path / "results"
    worker = Worker(replies, results)
    image_job = protocol.make_job("image2mesh", image=str(IMAGE), zero123=str(tiny_zero123), steps=2, resolution=32,
                                  checkpoint=str(small_checkpoint), device="cpu")
    try:
        # in pipeline order, so each stage is reached: models load on the first job that gets that far, then stay cached
        for n, (stage, job) in enumerate([(s, image_job) for s in IMAGE_STAGES] + [(s, reconstruct(small_checkpoint)) for s in MESH_STAGES]):
            job_id = f"cancel-{n}"

            def cancel_in(message: dict, stage: str = stage, job_id: str = job_id) -> None:
                if message["type"] == "progress" and message["stage"] == stage:
                    replies.hook = lambda message: None
                    worker.handle({"type": "cancel", "id": job_id})  # from inside the job, as a cancel arriving now

            replies.hook = cancel_in
            assert replies.run(worker, job_id, job) == {"type": "cancelled", "id": job_id}, stage
            assert replies.stages()[-1] == stage  # it stopped within the stage
            assert list(results.glob("*")) == [] and list(private_temp.iterdir()) == [], stage

        final = replies.run(worker, "after", reconstruct(small_checkpoint))
        assert final["type"] == "result" and final["info"]["faces"] > 0
        assert "loading reconstruction" not in replies.stages()  # the cancelled jobs left the cache usable
    finally:
        worker.shutdown()


def test_gpu_out_of_memory_is_advice_and_the_models_are_reloaded(tmp_path: Path, small_checkpoint: Path) -> None:
    """No GPU here: ``torch.OutOfMemoryError`` is raised inside the real pipeline, from its first progress point of the
    volume, where the network would allocate on the GPU."""
    replies = Replies()
    worker = Worker(replies, tmp_path / "results")
    try:
        def out_of_memory(message: dict) -> None:
            if message["type"] == "progress" and message["stage"] == "volume":
                replies.hook = lambda message: None
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)")

        replies.hook = out_of_memory
        final = replies.run(worker, "oom", reconstruct(small_checkpoint))
        assert final["type"] == "error" and final["message"] == GPU_MEMORY and "OutOfMemoryError" in final["traceback"]
        assert list((tmp_path / "results").glob("*")) == []

        final = replies.run(worker, "after", reconstruct(small_checkpoint))
        assert final["type"] == "result" and "loading reconstruction" in replies.stages()  # the cache was emptied
    finally:
        worker.shutdown()


def _final(client: BackendClient, job_id: str, timeout: float = 120) -> tuple[JobEvent, list[JobEvent]]:
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.poll():
            events.append(event)
            if event.job_id == job_id and event.kind in protocol.FINAL_TYPES:
                return event, events
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not end: {events[-3:]}")


def _address_space(pid: int) -> int:
    """The process's current virtual memory size in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmSize:")).split()[1]) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limits of another process: Linux only")
def test_memory_exhaustion_in_the_worker_is_advice_and_the_worker_lives_on(small_checkpoint: Path) -> None:
    """A real out-of-memory failure: the running worker's address space is capped just above what it uses idle."""
    import resource

    transport = SubprocessTransport(sys.executable, REPO, env=ENV)
    client = BackendClient(transport)
    try:
        assert client.run(protocol.make_job("info", checkpoint=str(small_checkpoint), device="cpu"), timeout=120).kind == "result"
        pid = transport.pid
        resource.prlimit(pid, resource.RLIMIT_AS, (_address_space(pid) + 200 * 2**20, resource.RLIM_INFINITY))
        event = client.run(reconstruct(small_checkpoint), timeout=120)
        assert event.kind == "error" and event.message == SYSTEM_MEMORY, event.message
        assert transport.pid == pid and not list(transport.results_dir.glob("*"))

        resource.prlimit(pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        events: list[JobEvent] = []
        event = client.run(reconstruct(small_checkpoint), on_event=events.append, timeout=120)
        assert event.kind == "result" and transport.pid == pid
        assert any(e.stage == "loading reconstruction" for e in events)  # the failed job's models were dropped
    finally:
        client.close()


def test_a_frozen_worker_times_out_is_killed_and_the_next_job_works(small_checkpoint: Path) -> None:
    transport = SubprocessTransport(sys.executable, REPO, env=ENV, hang_timeout=3.0)
    client = BackendClient(transport)
    try:
        job_id = client.start(reconstruct(small_checkpoint))
        deadline = time.monotonic() + 120
        while not any(e.kind == "progress" for e in client.poll()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pid, results = transport.pid, transport.results_dir
        os.kill(pid, signal.SIGSTOP)  # frozen: answers nothing, not even pings
        stopped = time.monotonic()
        final, _ = _final(client, job_id, timeout=30)
        assert final.kind == "error" and final.message.startswith("the backend process stopped responding for 3 s and was "
                                                                  "stopped: see the console; raise the time-out")
        assert 3.0 <= time.monotonic() - stopped < 15.0 and not client.busy
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped
        assert not results.exists()  # what the frozen worker wrote went with it

        event = client.run(reconstruct(small_checkpoint), timeout=120)
        assert event.kind == "result" and transport.pid not in (None, pid)
    finally:
        client.close()


DEAF_WORKER = textwrap.dedent("""
    # A worker whose job is stuck in native code: it answers pings, never finishes the job and ignores cancel.
    import json, os, sys
    print(json.dumps({"type": "ready", "protocol": 1, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        message = json.loads(line)
        if message["type"] == "ping":
            print(json.dumps({"type": "pong", "id": message["id"]}), flush=True)
""")


def test_a_silent_job_is_kept_alive_by_pings_and_given_up_when_it_ignores_cancel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Silence alone is no hang: a job may compute for minutes between progress replies while its worker answers pings."""
    monkeypatch.setattr(transports, "PING_INTERVAL", 0.2)
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "__init__.py").write_text("")
    (tmp_path / "backend" / "__main__.py").write_text(DEAF_WORKER)
    transport = SubprocessTransport(sys.executable, tmp_path, hang_timeout=1.0, cancel_timeout=1.0)
    client = BackendClient(transport)
    try:
        job_id = client.start(protocol.make_job("list_checkpoints"))
        until = time.monotonic() + 3.0  # three time-outs of silence from the job
        while time.monotonic() < until:
            assert client.poll() == [] and client.busy
            time.sleep(0.05)
        pid = transport.pid
        client.cancel(job_id)
        final, _ = _final(client, job_id, timeout=30)
        assert final.kind == "cancelled" and not client.busy
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        client.start(protocol.make_job("list_checkpoints"))
        assert transport.pid not in (None, pid)  # a new worker for the next job
    finally:
        client.close()


def test_a_job_that_ignores_cancel_is_abandoned_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job stuck in one step (standing in for native code that never returns) in the in-process worker thread."""
    import addon.backend.worker as inprocess_worker  # the module the in-process transport runs

    release = threading.Event()

    def stuck(job: dict, ctx: object) -> tuple[None, dict]:
        release.wait(60)
        return None, {}

    monkeypatch.setitem(inprocess_worker.JOBS, "info", stuck)
    client = BackendClient(InProcessTransport(cancel_timeout=1.0))
    try:
        job_id = client.start(protocol.make_job("info", device="cpu"))
        time.sleep(0.5)
        client.cancel(job_id)
        final, _ = _final(client, job_id, timeout=30)
        assert final.kind == "cancelled" and not client.busy
        event = client.run(protocol.make_job("list_checkpoints"), timeout=60)  # a new worker thread takes it
        assert event.kind == "result"
    finally:
        release.set()
        client.close()


# ---- raw bytes on the real worker's stdin: it answers or ignores them, and keeps answering ----


@pytest.fixture(scope="module")
def raw_worker() -> Iterator[tuple[subprocess.Popen, queue.Queue]]:
    proc = subprocess.Popen([sys.executable, "-m", "backend", "serve"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={**os.environ, **ENV})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    yield proc, lines
    proc.kill()
    proc.wait()


RAW = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=40).map(lambda b: b"\xff\xfe" + b + b"\xc3"),  # invalid UTF-8
    st.just(b"x" * (protocol.MAX_LINE + 10)),
    st.just(b"{" * 100_000),
    st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b'{"type":"cancel","id":"ghost"}', b'{"type":"start","id":"s","job":{"kind":"info"}}', b"\r\n\r\n",
                     b'{"type":"ping","id":"' + b"x" * 100 + b'"}', b"\x00" * 50]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(chunks=st.lists(RAW, min_size=1, max_size=4))
def test_the_worker_process_survives_any_bytes(raw_worker: tuple[subprocess.Popen, queue.Queue], chunks: list[bytes]) -> None:
    proc, lines = raw_worker
    assume(not any(b"shutdown" in chunk for chunk in chunks))
    probe = f"probe-{time.monotonic_ns()}"
    proc.stdin.write(b"\n".join(chunks) + b"\n" + json.dumps({"type": "ping", "id": probe}).encode() + b"\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "the worker exited"
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        reply = protocol.validate_response(protocol.decode(line.decode("ascii").rstrip("\n")))
        assert reply["type"] in ("ready", "error", "pong"), reply
        if reply == {"type": "pong", "id": probe}:
            return
