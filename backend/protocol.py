"""The worker protocol: newline-delimited JSON messages between the add-on and ``python -m backend serve``.

Shared by the worker and the add-on's client, so both sides apply the same rules; it imports only the
standard library (the add-on loads it inside Blender, where torch may be missing). Requests are validated
strictly (unknown, missing or mistyped fields are refused, naming the field) because they decide what
the worker reads and runs; responses are validated loosely (extra fields ignored) so a newer worker can
add fields without breaking an older add-on. See docs/protocol.md.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # characters per line, newline excluded
MAX_ID = 64
MAX_PATH = 4096
MAX_FOLDERS = 64
MAX_SEED = 2**32 - 1
RESOLUTION_RANGE = (16, 1024)
STEPS_RANGE = (2, 500)
POLAR_RANGE = (0.0, 180.0)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d{1,2})?")
FINAL_TYPES = ("result", "error", "cancelled")

# Field rules: "path" (absolute path string), "folders" (list of paths), "device", "polar", "seed", "resolution",
# "steps"; "|null" also allows null.
JOB_FIELDS: dict[str, dict[str, str]] = {
    "image2mesh": {"image": "path", "zero123": "path|null", "polar": "polar|null", "steps": "steps|null", "seed": "seed",
                   "resolution": "resolution", "checkpoint": "path|null", "device": "device", "views_dir": "path|null"},
    "reconstruct": {"views_dir": "path", "checkpoint": "path|null", "resolution": "resolution", "device": "device", "seed": "seed"},
    "info": {"checkpoint": "path|null", "device": "device"},
    "list_checkpoints": {"folders": "folders"},
}
JOB_DEFAULTS = {"zero123": None, "polar": None, "steps": None, "seed": 0, "resolution": 256, "checkpoint": None,
                "device": "auto", "views_dir": None, "folders": []}
REQUEST_FIELDS: dict[str, tuple[str, ...]] = {
    "start": ("type", "id", "job"), "cancel": ("type", "id"), "ping": ("type", "id"), "shutdown": ("type",)}
RESPONSE_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "ready": {"protocol": (int,), "pid": (int,)},
    "progress": {"id": (str,), "stage": (str,), "step": (int,), "total": (int,)},
    "result": {"id": (str,), "mesh": (str, type(None)), "info": (dict,)},
    "error": {"id": (str, type(None)), "message": (str,), "traceback": (str,)},
    "cancelled": {"id": (str,)},
    "pong": {"id": (str,)},
}


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``request_id`` is the offending request's id when it had a valid one."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def encode(message: dict) -> str:
    """One protocol line (ASCII JSON + newline); NaN and infinities become null, which JSON cannot carry."""
    return json.dumps(_finite(message), ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n"


def decode(line: str) -> Any:
    """Parse one line; JSON's non-standard NaN/Infinity literals are refused."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line too long: {len(line)} characters (at most {MAX_LINE})")
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not valid JSON ({_first_line(exc)})") from None


def error_reply(request_id: str | None, message: str, traceback: str = "") -> dict:
    """An ``error`` reply; ``request_id`` None when the offending line had no valid id."""
    return {"type": "error", "id": request_id, "message": message, "traceback": traceback}


def make_job(kind: str, **fields: Any) -> dict:
    """A job of ``kind`` with every field the protocol requires, defaults filled in, validated."""
    if kind not in JOB_FIELDS:
        raise ProtocolError(f"job.kind must be one of {', '.join(JOB_FIELDS)} (got {kind!r})")
    job = {"kind": kind, **{name: fields.pop(name, copy.deepcopy(JOB_DEFAULTS.get(name))) for name in JOB_FIELDS[kind]}}
    job.update(fields)  # leftovers are unknown fields: validation names them
    return validate_job(job)


def validate_request(message: Any) -> dict:
    """Return the request if it follows the protocol exactly, else raise ``ProtocolError`` naming the field."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a request must be a JSON object (got {_json_type(message)})")
    request_id = message.get("id") if _valid_id(message.get("id")) else None
    kind = message.get("type")
    if "type" not in message:
        raise ProtocolError("request field 'type' is missing", request_id)
    if not isinstance(kind, str) or kind not in REQUEST_FIELDS:
        raise ProtocolError(f"request field 'type' must be one of {', '.join(REQUEST_FIELDS)} (got {_show(kind)})", request_id)
    _check_keys(message, REQUEST_FIELDS[kind], f"{kind} request", request_id)
    if "id" in REQUEST_FIELDS[kind] and request_id is None:
        raise ProtocolError(f"request field 'id' must be a non-empty string of at most {MAX_ID} characters "
                            f"(got {_show(message['id'])})")
    if kind == "start":
        try:
            validate_job(message["job"])
        except ProtocolError as exc:
            raise ProtocolError(str(exc), request_id) from None
    return message


def validate_job(job: Any) -> dict:
    """Return ``job`` if it is a well-formed job (see ``JOB_FIELDS``), else raise ``ProtocolError`` naming the field."""
    if not isinstance(job, dict):
        raise ProtocolError(f"job must be a JSON object (got {_json_type(job)})")
    kind = job.get("kind")
    if not isinstance(kind, str) or kind not in JOB_FIELDS:
        raise ProtocolError(f"job.kind must be one of {', '.join(JOB_FIELDS)} (got {_show(kind)})")
    fields = JOB_FIELDS[kind]
    _check_keys(job, ("kind", *fields), f"{kind} job", None, prefix="job.")
    for name, rule in fields.items():
        _check_value(f"job.{name}", job[name], rule)
    return job


def validate_response(message: Any) -> dict:
    """Return a worker message if its known fields are well-typed, else raise ``ProtocolError``."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a worker message must be a JSON object (got {_json_type(message)})")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in RESPONSE_FIELDS:
        raise ProtocolError(f"unknown worker message type {_show(kind)}")
    for name, types in RESPONSE_FIELDS[kind].items():
        value = message.get(name)
        if name not in message or isinstance(value, bool) or not isinstance(value, types):
            raise ProtocolError(f"worker message {kind!r}: field {name!r} is missing or mistyped")
    return message


def _check_keys(message: dict, allowed: tuple[str, ...], what: str, request_id: str | None, prefix: str = "") -> None:
    missing = [k for k in allowed if k not in message]
    if missing:
        raise ProtocolError(f"{what}: field {prefix}{missing[0]} is missing", request_id)
    extra = sorted(str(k) for k in message if k not in allowed)
    if extra:
        raise ProtocolError(f"{what}: unknown field {prefix}{_clip(extra[0])}", request_id)


def _check_value(name: str, value: Any, rule: str) -> None:
    if rule.endswith("|null"):
        if value is None:
            return
        rule = rule[: -len("|null")]
    if rule == "path":
        _check_path(name, value)
    elif rule == "folders":
        if not isinstance(value, list) or len(value) > MAX_FOLDERS:
            raise ProtocolError(f"{name} must be a list of at most {MAX_FOLDERS} folder paths (got {_show(value)})")
        for i, item in enumerate(value):
            _check_path(f"{name}[{i}]", item)
    elif rule == "device":
        if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
            raise ProtocolError(f"{name} must be one of auto, cpu, cuda, cuda:N, mps (got {_show(value)})")
    elif rule == "polar":
        if not _is_number(value) or not POLAR_RANGE[0] <= value <= POLAR_RANGE[1]:
            raise ProtocolError(f"{name} must be a number of degrees in {POLAR_RANGE[0]:g}..{POLAR_RANGE[1]:g} or null (got {_show(value)})")
    else:
        low, high = {"seed": (0, MAX_SEED), "resolution": RESOLUTION_RANGE, "steps": STEPS_RANGE}[rule]
        if not _is_int(value) or not low <= value <= high:
            raise ProtocolError(f"{name} must be an integer in {low}..{high} (got {_show(value)})")


def _check_path(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_PATH or "\0" in value:
        raise ProtocolError(f"{name} must be a path string of 1..{MAX_PATH} characters (got {_show(value)})")
    if not os.path.isabs(value):
        raise ProtocolError(f"{name} must be an absolute path (got {_show(value)}): the worker's folder is not yours")


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A short, one-line rendering of an untrusted value for error messages."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return _clip(text)


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    return _clip(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 160)
