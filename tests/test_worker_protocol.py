"""The backend worker and the add-on's client: protocol, jobs, cancel, crashes, hangs, malformed input, temp files."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.client import BackendBusy, BackendClient, InProcessTransport, JobEvent, SubprocessTransport
from backend import protocol
from backend.worker import serve

REPO = Path(__file__).resolve().parents[1]
SPOT_VIEWS = REPO / "examples" / "spot_views"
RECONSTRUCT = protocol.make_job("reconstruct", views_dir=str(SPOT_VIEWS), resolution=32, device="cpu")
ENV = {"OMP_NUM_THREADS": "1"}  # small jobs on a shared CPU: threads only add spin-waiting


def _receive_until(transport, done: Callable[[dict], bool], timeout: float = 60.0) -> list[dict]:
    """Raw transport messages until one satisfies ``done`` (included)."""
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in transport.receive():
            messages.append(message)
            if done(message):
                return messages
        time.sleep(0.02)
    raise AssertionError(f"no matching message within {timeout} s: {messages}")


def _wait_for_progress(client: BackendClient, job_id: str) -> JobEvent:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for event in client.poll():
            assert event.kind == "progress", event
            return event
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} reported no progress")


def _final(client: BackendClient, job_id: str, timeout: float = 100.0) -> JobEvent:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.poll():
            if event.job_id == job_id and event.kind in ("result", "error", "cancelled"):
                return event
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[BackendClient, SubprocessTransport]]:
    transport = SubprocessTransport(sys.executable, REPO, env=ENV)
    client = BackendClient(transport)
    yield client, transport
    client.close()


@dataclass
class Runs:
    """One cancelled reconstruct job, then the same job run to the end, on the shared worker."""

    cancelled: JobEvent
    messages_during_job: list[dict]
    final: JobEvent
    events: list[JobEvent]


@pytest.fixture(scope="module")
def runs(worker) -> Runs:
    client, transport = worker
    job_id = client.start(RECONSTRUCT)
    with pytest.raises(BackendBusy):
        client.start(RECONSTRUCT)
    _wait_for_progress(client, job_id)
    transport.send({"type": "ping", "id": "during"})
    during = _receive_until(transport, lambda m: m == {"type": "pong", "id": "during"})
    client.cancel(job_id)
    cancelled = _final(client, job_id)
    events: list[JobEvent] = []
    final = client.run(RECONSTRUCT, on_event=events.append, timeout=100)
    return Runs(cancelled, during, final, events)


def test_ping_pong(worker) -> None:
    _, transport = worker
    transport.send({"type": "ping", "id": "p1"})
    messages = _receive_until(transport, lambda m: m == {"type": "pong", "id": "p1"})
    assert messages[-1] == {"type": "pong", "id": "p1"}
    assert any(m["type"] == "ready" and m["protocol"] == protocol.PROTOCOL_VERSION for m in messages)


def test_info_job_reports_versions_device_and_checkpoint(worker) -> None:
    client, _ = worker
    event = client.run(protocol.make_job("info", device="cpu"), timeout=60)
    assert event.kind == "result" and event.mesh is None, event
    info = event.info
    assert info["python"].startswith("3.") and info["torch"] and info["backend"] and info["device"] == "cpu"
    assert info["checkpoint"]["default"] and info["checkpoint"]["architecture"] == "one2345-lod0"


def test_list_checkpoints_puts_the_bundled_one_first(worker, tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    client, _ = worker
    event = client.run(protocol.make_job("list_checkpoints", folders=[str(tmp_path), str(tmp_path / "missing")]), timeout=60)
    assert event.kind == "result", event
    bundled, broken, missing = event.info["checkpoints"]
    assert bundled["default"] and bundled["error"] is None and bundled["name"] == "reconstructor"
    assert isinstance(bundled["step"], int) and bundled["step"] > 0 and "psnr" in bundled["metrics"]
    assert broken["name"] == "broken" and "unreadable" in broken["error"]
    assert "not a folder" in missing["error"]


def test_reconstruct_returns_a_coloured_mesh_with_ordered_progress(runs: Runs, worker) -> None:
    final, events = runs.final, runs.events
    assert final.kind == "result", final.message
    mesh = final.mesh
    assert mesh is not None and len(mesh.vertices) > 100 and len(mesh.faces) > 100
    assert mesh.vertices.dtype == np.float32 and mesh.colors.dtype == np.uint8 and mesh.colors.shape == mesh.vertices.shape
    assert final.info["vertices"] == len(mesh.vertices) and final.info["polar_source"] == "views"
    assert abs(final.info["polar"] - 60.0) < 1e-3 and final.info["timings"]["total"] > 0
    progress = [e for e in events if e.kind == "progress"]
    stages = list(dict.fromkeys(e.stage for e in progress))
    expected = ["volume", "hull coarse", "hull surface", "sdf coarse", "sdf surface", "marching cubes", "vertex colours", "saving"]
    assert [s for s in stages if s != "loading reconstruction"] == expected
    for stage in stages:
        steps = [e.step for e in progress if e.stage == stage]
        assert steps == sorted(steps) and all(e.total >= e.step for e in progress)
    assert not list(worker[1].results_dir.rglob("*.npz"))  # consumed: the mesh file is gone


def test_ping_and_cancel_are_answered_during_a_job_and_the_next_job_works(runs: Runs, worker) -> None:
    assert not any(m["type"] in ("result", "error", "cancelled") for m in runs.messages_during_job)  # pong while it ran
    assert runs.cancelled.kind == "cancelled"
    assert runs.final.kind == "result" and not worker[0].busy


@pytest.mark.parametrize("job, field", [
    ({**RECONSTRUCT, "resolution": 8}, "job.resolution"),
    ({**RECONSTRUCT, "resolution": "32"}, "job.resolution"),
    ({**RECONSTRUCT, "kind": "sculpt"}, "job.kind"),
    ({**RECONSTRUCT, "views_dir": 42}, "job.views_dir"),
    ({**RECONSTRUCT, "views_dir": "relative/views"}, "job.views_dir"),
    ({**RECONSTRUCT, "colour": "red"}, "job.colour"),
    ({k: v for k, v in RECONSTRUCT.items() if k != "seed"}, "job.seed"),
    (protocol.make_job("image2mesh", image="/x.png") | {"polar": 200.0}, "job.polar"),
    (protocol.make_job("image2mesh", image="/x.png") | {"steps": 1}, "job.steps"),
    (protocol.make_job("info") | {"device": "tpu"}, "job.device"),
    (protocol.make_job("list_checkpoints") | {"folders": "/a"}, "job.folders"),
])
def test_malformed_jobs_are_refused_naming_the_field(worker, job: dict, field: str) -> None:
    client, transport = worker
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        client.start(job)
    assert not client.busy
    transport.send({"type": "start", "id": "bad", "job": job})  # past the client's check, straight to the worker
    transport.send({"type": "ping", "id": "alive"})
    messages = _receive_until(transport, lambda m: m == {"type": "pong", "id": "alive"})
    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["id"] == "bad" and field in errors[0]["message"]


def test_worker_refuses_a_second_start_and_unknown_cancels(worker) -> None:
    _, transport = worker
    job = protocol.make_job("list_checkpoints")
    transport.send({"type": "cancel", "id": "nobody"})
    transport.send({"type": "start", "id": "one", "job": job})
    transport.send({"type": "start", "id": "two", "job": job})
    messages = _receive_until(transport, lambda m: m["type"] == "result" and m["id"] == "one")
    errors = {m["id"]: m["message"] for m in messages if m["type"] == "error"}
    assert errors["nobody"].startswith("cannot cancel") and errors["two"].startswith("busy")


def test_killed_worker_becomes_an_error_and_the_next_start_restarts_it() -> None:
    transport = SubprocessTransport(sys.executable, REPO, env=ENV)
    client = BackendClient(transport)
    try:
        job_id = client.start(RECONSTRUCT)
        _wait_for_progress(client, job_id)
        pid = transport.pid
        os.kill(pid, signal.SIGKILL)
        final = _final(client, job_id)
        assert final.kind == "error" and not client.busy
        assert final.message == ("the backend process exited unexpectedly (code -9): see the console; "
                                 "the next run starts a new one")
        event = client.run(protocol.make_job("list_checkpoints"), timeout=60)
        assert event.kind == "result" and transport.pid not in (None, pid)
    finally:
        client.close()


FAKE_WORKER = textwrap.dedent("""
    # A stand-in for `python -m backend serve` used by the tests: says ready, then misbehaves as FAKE_WORKER_MODE asks.
    import json, os, sys, time
    mode = os.environ["FAKE_WORKER_MODE"]
    version = 99 if mode == "version" else 1
    sys.stdout.write(json.dumps({"type": "ready", "protocol": version, "pid": os.getpid()}) + "\\n")
    sys.stdout.flush()
    sys.stdin.readline()
    if mode == "garbage":
        sys.stdout.write("Traceback (most recent call last): not a protocol line\\n")
        sys.stdout.flush()
    time.sleep(300)
""")


@pytest.fixture()
def fake_backend(tmp_path: Path) -> Path:
    package = tmp_path / "backend"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_WORKER)
    return tmp_path


@pytest.mark.parametrize("mode, expected", [
    ("hang", "the backend process stopped responding for 1 s and was stopped"),
    ("garbage", "the backend sent a message that is not protocol"),
    ("version", "the backend speaks protocol 99 but the add-on needs 1"),
])
def test_misbehaving_worker_is_stopped_with_an_error(fake_backend: Path, mode: str, expected: str) -> None:
    transport = SubprocessTransport(sys.executable, fake_backend, env={"FAKE_WORKER_MODE": mode}, hang_timeout=1.0)
    client = BackendClient(transport)
    try:
        job_id = client.start(protocol.make_job("list_checkpoints"))
        pid = transport.pid
        final = _final(client, job_id, timeout=30)
        assert final.kind == "error" and final.message.startswith(expected), final.message
        assert not client.busy and transport.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped
    finally:
        client.close()


def test_a_worker_that_cannot_start_is_an_error_event(tmp_path: Path) -> None:
    client = BackendClient(SubprocessTransport(str(tmp_path / "no-python"), REPO))
    try:
        final = client.run(protocol.make_job("list_checkpoints"), timeout=30)
        assert final.kind == "error" and final.message.startswith("cannot start the backend") and not client.busy
    finally:
        client.close()


def test_in_process_transport_gives_the_same_mesh(runs: Runs, one_thread: None) -> None:
    transport = InProcessTransport()
    client = BackendClient(transport)
    try:
        final = client.run(RECONSTRUCT, timeout=100)
        assert final.kind == "result", final.message
        assert len(final.mesh.vertices) == len(runs.final.mesh.vertices)
        np.testing.assert_allclose(final.mesh.vertices, runs.final.mesh.vertices, atol=1e-4)
        results = transport.results_dir
        assert results.is_dir() and not list(results.rglob("*.npz"))
    finally:
        client.close()
    assert not results.exists()


def test_temp_files_are_gone_after_close(tmp_path: Path) -> None:
    transport = SubprocessTransport(sys.executable, REPO, env=ENV)
    client = BackendClient(transport)
    client.run(protocol.make_job("list_checkpoints"), timeout=60)
    results = transport.results_dir
    (results / "imageto3d-job-left-over").mkdir()  # e.g. a job folder whose worker was killed
    assert results.is_dir()
    client.close()
    assert not results.exists() and transport.pid is None


# ---- property tests: random, malformed, oversized and out-of-order lines straight into serve() ----

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
NAMES = st.sampled_from(["type", "id", "job", "kind", "image", "views_dir", "resolution", "steps", "polar", "seed",
                         "device", "checkpoint", "zero123", "folders", "extra"])
WORDS = st.sampled_from(["start", "cancel", "ping", "shutdown", "info", "reconstruct", "image2mesh", "list_checkpoints",
                         "cpu", "auto", "/", "/nonexistent/views", "j1", "j2", "x" * 65])
JOBS = st.fixed_dictionaries({"kind": st.sampled_from(list(protocol.JOB_FIELDS)) | JSON_VALUES}, optional={
    name: JSON_VALUES | WORDS | st.just(value) for name, value in
    [("views_dir", "/nonexistent/views"), ("image", "/nonexistent.png"), ("checkpoint", None), ("device", "cpu"),
     ("resolution", 32), ("seed", 0), ("folders", []), ("zero123", None), ("polar", None), ("steps", None), ("extra", 1)]})
VALID_JOBS = [protocol.make_job("list_checkpoints", folders=["/nonexistent"]), protocol.make_job("info", device="cpu"),
              protocol.make_job("reconstruct", views_dir="/nonexistent/views", device="cpu"),
              protocol.make_job("image2mesh", image="/nonexistent.png", zero123="/nonexistent", device="cpu")]
VALID_REQUESTS = st.one_of(
    st.builds(lambda i, job: {"type": "start", "id": i, "job": job}, st.sampled_from(["j1", "j2"]), st.sampled_from(VALID_JOBS)),
    st.builds(lambda t, i: {"type": t, "id": i}, st.sampled_from(["cancel", "ping"]), st.sampled_from(["j1", "j2"])),
)
MALFORMED_LINES = st.one_of(
    st.text(max_size=40).map(lambda s: s.replace("\n", " ")),
    JSON_VALUES.map(json.dumps),
    st.dictionaries(NAMES, JSON_VALUES | WORDS, max_size=5).map(json.dumps),
    st.fixed_dictionaries({"type": WORDS | JSON_VALUES}, optional={"id": WORDS | JSON_VALUES, "job": JOBS | JSON_VALUES,
                                                               "extra": JSON_VALUES}).map(json.dumps),
    st.builds(lambda i, job: json.dumps({"type": "start", "id": i, "job": job}), WORDS | JSON_VALUES, JOBS),
    st.builds(lambda t, i: json.dumps({"type": t, "id": i}), st.sampled_from(["cancel", "ping"]), WORDS | JSON_VALUES),
    st.sampled_from(["", "  ", "{", "[]", "null", "NaN", '{"type": "ping", "id": "a", "n": NaN}', '{"type": "shutdown"}',
                     "\ufeff{}", "[" * 5000 + "]" * 5000, "1" * 5000]),
    st.integers(1, 2).map(lambda k: "x" * (protocol.MAX_LINE + k)),
)
LINES = st.integers(0, 2).flatmap(lambda k: VALID_REQUESTS.map(json.dumps) if k == 0 else MALFORMED_LINES)  # 1/3 valid


def _is_invalid(line: str) -> bool:
    try:
        protocol.validate_request(protocol.decode(line))
    except protocol.ProtocolError:
        return True
    return False


def _is_shutdown(line: str) -> bool:
    return not _is_invalid(line) and json.loads(line)["type"] == "shutdown"


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(LINES, max_size=8))
def test_serve_survives_any_input(lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines) + json.dumps({"type": "ping", "id": "final"}) + "\n"
    stdout = io.StringIO()
    thread = threading.Thread(target=serve, args=(io.StringIO(text), stdout), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "serve() hung"
    replies = [protocol.validate_response(json.loads(line)) for line in stdout.getvalue().splitlines()]
    assert replies[0]["type"] == "ready"
    cut = next((n for n, line in enumerate(lines) if _is_shutdown(line)), len(lines))
    invalid = sum(1 for line in lines[:cut] if line.strip() and _is_invalid(line))
    assert sum(1 for r in replies if r["type"] == "error" and r["message"].startswith("invalid request")) == invalid
    assert ({"type": "pong", "id": "final"} in replies) == (cut == len(lines))
