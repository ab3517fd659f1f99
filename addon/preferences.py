"""Add-on preferences (checkpoints, Zero123 folder, device, how the backend runs) and the backend client they configure."""

import os
import sys
from collections.abc import Callable
from pathlib import Path

import bpy
from bpy.props import CollectionProperty, EnumProperty, IntProperty, StringProperty

from .client import BackendClient, InProcessTransport, JobEvent, SubprocessTransport

ADDON_DIR = Path(__file__).resolve().parent
BUNDLED = "BUNDLED"  # the checkpoint identifier that means "the one shipped with the add-on" (job checkpoint None)
DEVICES = (
    ("auto", "Auto", "CUDA if present, then Apple MPS, then the CPU"),
    ("cpu", "CPU", "Run on the processor (slow, always works)"),
    ("cuda", "CUDA", "An NVIDIA GPU (needs a CUDA build of PyTorch)"),
    ("mps", "Apple MPS", "The GPU of Apple silicon Macs"),
)
BACKEND_MODES = (
    ("IN_PROCESS", "In Blender", "Run the backend in a thread of Blender's own Python (needs torch installed for Blender)"),
    ("SUBPROCESS", "Separate Process", "Run the backend with another Python interpreter that has torch"),
)

_listed: list[tuple[str, str, str, str, int]] = []  # checkpoint enum items from the last refresh
_items_in_use: list[tuple[str, str, str, str, int]] = []  # keeps the strings Blender shows alive
_client: BackendClient | None = None
_client_key: tuple[str, str, int] | None = None


class BackendFailure(Exception):
    """A job that could not start or ended in an error; the message is one line for a report."""


def one_line(text: str) -> str:
    """Collapse a message to one line, as reports and the status line show it."""
    return " ".join(str(text).split())


def get_prefs(context: bpy.types.Context) -> "IMAGETO3D_AddonPreferences":
    """This add-on's preferences."""
    return context.preferences.addons[__package__].preferences


def get_client(prefs: "IMAGETO3D_AddonPreferences") -> BackendClient:
    """The shared client; rebuilt (stopping the old worker) when the backend mode, interpreter or time-out changed."""
    global _client, _client_key
    key = (prefs.backend_mode, prefs.python_path if prefs.backend_mode == "SUBPROCESS" else "", prefs.hang_timeout)
    if _client is None or _client_key != key:
        close_client()
        if prefs.backend_mode == "SUBPROCESS":
            transport = SubprocessTransport(python=bpy.path.abspath(prefs.python_path), backend_parent=ADDON_DIR,
                                            hang_timeout=prefs.hang_timeout)
        else:
            transport = InProcessTransport(hang_timeout=prefs.hang_timeout)
        _client, _client_key = BackendClient(transport), key
    return _client


def close_client() -> None:
    """Stop the worker (on unregister, or before switching transports)."""
    global _client, _client_key
    if _client is not None:
        _client.close()
    _client = _client_key = None


def backend_busy() -> bool:
    """Whether the shared client has a job running."""
    return _client is not None and _client.busy


def run_job(context: bpy.types.Context, job: dict, on_event: Callable[[JobEvent], None] | None = None) -> JobEvent:
    """Run ``job`` to its end on the main thread; its result event, or ``BackendFailure`` with a one-line reason."""
    try:
        event = get_client(get_prefs(context)).run(job, on_event)
    except (RuntimeError, ValueError) as exc:  # busy, or a job the protocol refuses
        raise BackendFailure(one_line(exc)) from None
    if event.kind == "error":
        raise BackendFailure(one_line(event.message))
    if event.kind == "cancelled":
        raise BackendFailure("cancelled")
    return event


def selected_checkpoint(prefs: "IMAGETO3D_AddonPreferences") -> str | None:
    """The checkpoint path for jobs; None for the bundled one."""
    return prefs.checkpoint_path or None


def _checkpoint_items(prefs: "IMAGETO3D_AddonPreferences", _context: bpy.types.Context | None) -> list[tuple[str, str, str, str, int]]:
    global _items_in_use
    items = list(_listed) or [(BUNDLED, "Bundled", "The checkpoint shipped with the add-on", "PACKAGE", 0)]
    if prefs.checkpoint_path and all(item[0] != prefs.checkpoint_path for item in items):
        name = Path(prefs.checkpoint_path).name
        items.append((prefs.checkpoint_path, name, f"{prefs.checkpoint_path} (refresh to check it)", "FILE_FOLDER", len(items)))
    _items_in_use = items
    return items


def _get_checkpoint(prefs: "IMAGETO3D_AddonPreferences") -> int:
    wanted = prefs.checkpoint_path or BUNDLED
    return next((item[4] for item in _checkpoint_items(prefs, None) if item[0] == wanted), 0)


def _set_checkpoint(prefs: "IMAGETO3D_AddonPreferences", value: int) -> None:
    identifier = next(item[0] for item in _checkpoint_items(prefs, None) if item[4] == value)
    prefs.checkpoint_path = "" if identifier == BUNDLED else identifier


def _checkpoint_label(entry: dict) -> str:
    step = f"step {entry['step']}" if entry.get("step") is not None else "step unknown"
    return f"{entry['name']} (bundled, {step})" if entry.get("default") else f"{entry['name']} ({step})"


class IMAGETO3D_PG_folder(bpy.types.PropertyGroup):
    """One folder searched for checkpoints."""

    path: StringProperty(name="Folder", subtype="DIR_PATH", description="A checkpoint folder, or a folder of checkpoints")


class IMAGETO3D_OT_folder_add(bpy.types.Operator):
    """Add a folder to search for reconstruction checkpoints"""

    bl_idname = "imageto3d.folder_add"
    bl_label = "Add Checkpoint Folder"
    bl_options = {"INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        get_prefs(context).checkpoint_folders.add()
        return {"FINISHED"}


class IMAGETO3D_OT_folder_remove(bpy.types.Operator):
    """Stop searching this folder for checkpoints"""

    bl_idname = "imageto3d.folder_remove"
    bl_label = "Remove Checkpoint Folder"
    bl_options = {"INTERNAL"}

    index: IntProperty(options={"HIDDEN"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        folders = get_prefs(context).checkpoint_folders
        if not 0 <= self.index < len(folders):
            return {"CANCELLED"}
        folders.remove(self.index)
        return {"FINISHED"}


class IMAGETO3D_OT_refresh_checkpoints(bpy.types.Operator):
    """List the bundled checkpoint and those found in the checkpoint folders"""

    bl_idname = "imageto3d.refresh_checkpoints"
    bl_label = "Refresh Checkpoints"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not backend_busy()

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = get_prefs(context)
        folders = [os.path.abspath(bpy.path.abspath(f.path)) for f in prefs.checkpoint_folders if f.path.strip()]
        try:
            event = run_job(context, {"kind": "list_checkpoints", "folders": folders})
        except BackendFailure as exc:
            self.report({"ERROR"}, f"Cannot list checkpoints: {exc}")
            return {"CANCELLED"}
        entries = event.info.get("checkpoints", [])
        good = [e for e in entries if not e.get("error")]
        _listed[:] = [(BUNDLED if e.get("default") else e["path"], _checkpoint_label(e), e["path"],
                       "PACKAGE" if e.get("default") else "FILE_FOLDER", n) for n, e in enumerate(good)]
        if prefs.checkpoint_path and all(item[0] != prefs.checkpoint_path for item in _listed):
            prefs.checkpoint_path = ""  # gone: back to the bundled one
        bad = [e for e in entries if e.get("error")]
        if bad:
            self.report({"WARNING"}, f"{len(good)} checkpoint(s) found; {len(bad)} skipped, e.g. {bad[0]['error']}")
        else:
            self.report({"INFO"}, f"{len(good)} checkpoint(s) found")
        return {"FINISHED"}


class IMAGETO3D_OT_test_backend(bpy.types.Operator):
    """Start the backend, load the selected checkpoint and report versions and the device"""

    bl_idname = "imageto3d.test_backend"
    bl_label = "Test Backend"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not backend_busy()

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = get_prefs(context)
        try:
            event = run_job(context, {"kind": "info", "checkpoint": selected_checkpoint(prefs), "device": prefs.device})
        except BackendFailure as exc:
            prefs.backend_info = f"Failed: {exc}"
            self.report({"ERROR"}, f"Backend test failed: {exc}")
            return {"CANCELLED"}
        info = event.info
        checkpoint = info.get("checkpoint", {})
        prefs.backend_info = (f"Backend {info.get('backend')}, Python {info.get('python')}, torch {info.get('torch')}, "
                              f"numpy {info.get('numpy')}; device {info.get('device')} ({info.get('device_name')}); "
                              f"checkpoint {checkpoint.get('name')} step {checkpoint.get('step')}")
        self.report({"INFO"}, prefs.backend_info)
        return {"FINISHED"}


class IMAGETO3D_AddonPreferences(bpy.types.AddonPreferences):
    """Global settings: where checkpoints and the view generator live, and how the backend runs."""

    bl_idname = __package__

    checkpoint_folders: CollectionProperty(type=IMAGETO3D_PG_folder)
    checkpoint_path: StringProperty(name="Checkpoint Path", description="The selected checkpoint; empty for the bundled one")
    checkpoint: EnumProperty(name="Checkpoint", description="Reconstruction checkpoint (Refresh lists what the folders hold)",
                             items=_checkpoint_items, get=_get_checkpoint, set=_set_checkpoint)
    zero123_dir: StringProperty(name="Zero123 Folder", subtype="DIR_PATH",
                                description="A Zero123 / Zero123-XL diffusers folder for the views; empty = the bundled small generator")
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    backend_mode: EnumProperty(name="Backend", items=BACKEND_MODES, default="IN_PROCESS")
    python_path: StringProperty(name="Python", subtype="FILE_PATH", default=sys.executable,
                                description="Interpreter with torch and the backend's requirements installed")
    hang_timeout: IntProperty(name="Time-out (s)", default=120, min=10, max=3600,
                              description="A backend that answers nothing, not even a ping, for this long while it runs "
                                          "a job is stopped with an error")
    backend_info: StringProperty(name="Last Test", description="What the last backend test reported")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        box = layout.box()
        row = box.row(align=True)
        row.prop(self, "checkpoint")
        row.operator(IMAGETO3D_OT_refresh_checkpoints.bl_idname, text="", icon="FILE_REFRESH")
        col = box.column(align=True)
        for index, folder in enumerate(self.checkpoint_folders):
            row = col.row(align=True)
            row.prop(folder, "path", text="")
            row.operator(IMAGETO3D_OT_folder_remove.bl_idname, text="", icon="X").index = index
        box.operator(IMAGETO3D_OT_folder_add.bl_idname, icon="ADD")
        layout.prop(self, "zero123_dir")
        layout.prop(self, "device")
        layout.row().prop(self, "backend_mode", expand=True)
        if self.backend_mode == "SUBPROCESS":
            layout.prop(self, "python_path")
        layout.prop(self, "hang_timeout")
        row = layout.row()
        row.operator(IMAGETO3D_OT_test_backend.bl_idname, icon="CONSOLE")
        row.label(text=self.backend_info or "Not tested yet")


classes = (
    IMAGETO3D_PG_folder,
    IMAGETO3D_OT_folder_add,
    IMAGETO3D_OT_folder_remove,
    IMAGETO3D_OT_refresh_checkpoints,
    IMAGETO3D_OT_test_backend,
    IMAGETO3D_AddonPreferences,
)
