"""Generate, batch and cancel: scene settings -> backend jobs -> objects.

``execute`` works through the jobs synchronously (scripts, background mode, tests); ``invoke`` starts
them and a ``bpy.app.timers`` function polls the backend, so the UI stays responsive. Both share ``Run``.
"""

import datetime as dt
import math
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, StringProperty

from .backend.files import atomic_output, probe_writable
from .client import BackendClient, JobEvent
from .mesh_import import create_object, show_colour_attributes
from .preferences import (BackendFailure, backend_busy, close_client, get_client, get_prefs, one_line, run_job,
                          selected_checkpoint)

# Read by the backend itself, whose guards (size limits, corrupt files) then apply before Blender ever decodes them;
# other files the Image File source is given go through Blender and a PNG copy.
BACKEND_FORMATS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".exr")
POLL_INTERVAL = 0.2  # seconds between polls of the backend in the UI

_run: "Run | None" = None  # the run the timer is polling


class SettingsError(Exception):
    """A setting or input that stops a run before it reaches the backend; the message is one line."""


@dataclass
class Task:
    """One object to make: its backend job, and what became of it."""

    source: str  # the image file or view folder, as reports name it
    name: str  # the new object's name
    job: dict | None = None  # None when the task failed or was skipped before reaching the backend
    glb: Path | None = None  # batch: the file the object is exported to
    outcome: str = ""  # "" while pending, then "created", "skipped", "failed" or "cancelled"
    reason: str = ""  # what was made, or why not


def _absolute(path: str, what: str) -> str:
    """An absolute file-system path from a (possibly blend-relative) property value."""
    if not path.strip():
        raise SettingsError(f"{what} is not set")
    resolved = bpy.path.abspath(path)
    if not os.path.isabs(resolved):
        raise SettingsError(f"{what} {path} is relative: save the .blend file first, or use an absolute path")
    return os.path.normpath(resolved)


def editor_image(context: bpy.types.Context) -> bpy.types.Image | None:
    """The image of the current Image Editor, else of the first Image Editor on screen showing one."""
    space = context.space_data
    if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
        return space.image
    for area in context.screen.areas if context.screen else ():
        if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
            return area.spaces.active.image
    return None


def _image_file(image: bpy.types.Image, folder: str) -> Path:
    """A file the backend can read with ``image``'s pixels: its own file when that is saved as-is, else a PNG in ``folder``.

    The PNG is written from the pixels as Blender holds them, so packed, generated and unsaved painted images
    and formats only Blender reads (OpenEXR) all work, and the user's datablock is left untouched.
    """
    target = Path(tempfile.mkdtemp(dir=folder)) / f"{bpy.path.clean_name(Path(image.name).stem) or 'image'}.png"
    if image.type in {"RENDER_RESULT", "COMPOSITING"}:
        try:
            image.save_render(filepath=str(target))
        except RuntimeError as exc:
            raise SettingsError(f"cannot save {image.name} for the backend: {one_line(exc)}") from None
        return target
    width, height = image.size
    if width == 0:
        raise SettingsError(f"cannot read {image.name}: not an image Blender can open (missing, corrupt or unsupported file)")
    own = Path(bpy.path.abspath(image.filepath, library=image.library)) if image.filepath else None
    if (image.source == "FILE" and image.packed_file is None and not image.is_dirty and own is not None
            and own.is_file() and own.suffix.lower() in BACKEND_FORMATS):
        return own
    pixels = np.empty(len(image.pixels), np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(width * height, -1)
    rgba = np.ones((width * height, 4), np.float32)
    rgba[:, :3] = pixels[:, :3] if pixels.shape[1] >= 3 else pixels[:, :1]
    if pixels.shape[1] in (2, 4):
        rgba[:, 3] = pixels[:, -1]
    copy = bpy.data.images.new("Image to 3D input", width, height, alpha=True, float_buffer=image.is_float)
    try:
        if not image.is_float:  # byte pixels are stored values: keep their colour space
            copy.colorspace_settings.name = image.colorspace_settings.name
        copy.pixels.foreach_set(rgba.ravel())
        copy.filepath_raw, copy.file_format = str(target), "PNG"
        copy.save()
    finally:
        bpy.data.images.remove(copy)
    return target


def _readable_image(path: Path, folder: str) -> Path:
    """``path`` itself for the formats the backend reads; any other image file Blender reads as a PNG copy."""
    if not path.is_file():
        raise SettingsError(f"cannot read {path}: no such file")
    if path.suffix.lower() in BACKEND_FORMATS:
        return path
    try:
        image = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError as exc:
        raise SettingsError(f"cannot read {path.name}: {one_line(exc)}") from None
    try:
        return _image_file(image, folder)
    finally:
        bpy.data.images.remove(image)


def _image_job(image: Path, settings: bpy.types.PropertyGroup, prefs: bpy.types.AddonPreferences) -> dict:
    zero123 = _absolute(prefs.zero123_dir, "the Zero123 folder") if prefs.zero123_dir.strip() else None  # None: the bundled one
    return {
        "kind": "image2mesh", "image": str(image), "zero123": zero123,
        "polar": None if settings.auto_polar else round(math.degrees(settings.polar), 3),
        "steps": max(2, settings.steps) if settings.steps else None, "seed": settings.seed,
        "resolution": settings.resolution, "checkpoint": selected_checkpoint(prefs), "device": prefs.device, "views_dir": None,
    }


def _reconstruct_job(views_dir: str, settings: bpy.types.PropertyGroup, prefs: bpy.types.AddonPreferences) -> dict:
    return {"kind": "reconstruct", "views_dir": views_dir, "checkpoint": selected_checkpoint(prefs),
            "resolution": settings.resolution, "device": prefs.device, "seed": settings.seed}


def _select_only(obj: bpy.types.Object) -> None:
    view_layer = bpy.context.view_layer
    for other in view_layer.objects.selected:
        other.select_set(False)
    obj.select_set(True)
    view_layer.objects.active = obj


def _remove_object(obj: bpy.types.Object) -> None:
    mesh = obj.data
    bpy.data.objects.remove(obj)
    bpy.data.meshes.remove(mesh)


def _export_glb(obj: bpy.types.Object, path: Path, overwrite: bool) -> None:
    """Write just ``obj`` (with its colour attribute) as a binary glTF, atomically: a failure leaves any earlier file as
    it was and no partial one; an existing file is replaced only with ``overwrite`` (else ``FileExistsError``)."""
    _select_only(obj)
    with atomic_output(path, overwrite) as tmp:
        bpy.ops.export_scene.gltf(filepath=str(tmp), export_format="GLB", use_selection=True)


def _keep_views(name: str, path: str) -> None:
    """The generated views' contact sheet as an image datablock, packed: the backend's file is temporary."""
    image = bpy.data.images.load(path, check_existing=False)
    image.name = f"{name} views"
    image.pack()


def _redraw_sidebars() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                for region in area.regions:
                    if region.type == "UI":
                        region.tag_redraw()


class Run:
    """Tasks worked through one backend job at a time, on the main thread, by ``run_here`` or by timer polls."""

    def __init__(self, context: bpy.types.Context, tasks: list[Task], temp: tempfile.TemporaryDirectory, title: str,
                 batch_dirs: tuple[str, str] | None = None, overwrite: bool = False) -> None:
        self.scene_name = context.scene.name
        self.location = tuple(context.scene.cursor.location)
        self.tasks = tasks
        self.temp = temp  # temporary PNG copies of the inputs, removed when the run ends
        self.title = title  # the status line while running
        self.current: Task | None = None
        self.job_id: str | None = None
        self.client: BackendClient | None = None
        self.batch_dirs = batch_dirs  # (input, output) of a batch, whose end writes a summary text
        self.overwrite = overwrite  # a batch may replace GLB files that exist
        self.cancelling = False
        self.summary_text: str | None = None
        self.created: list[str] = []

    @property
    def state(self) -> bpy.types.PropertyGroup:
        return bpy.context.window_manager.image_to_3d

    def begin(self) -> None:
        self.state.running, self.state.progress, self.state.stage, self.state.status = True, 0.0, "", self.title

    def run_here(self, context: bpy.types.Context) -> None:
        """Synchronous path: every pending task to its end, then ``end``."""
        self.client = get_client(get_prefs(context))  # the client run_job uses
        self.begin()
        try:
            for task in self._pending():
                self._enter(task)
                try:
                    event = run_job(context, task.job, self._on_event)
                except BackendFailure as exc:
                    task.outcome, task.reason = "failed", str(exc)
                    continue
                self._place(task, event)
        finally:
            self.end()

    def start_next(self, client: BackendClient) -> bool:
        """Timer path: start the next pending task's job; False when none is left (the run has ended)."""
        self.client = client
        for task in self._pending():
            self._enter(task)
            try:
                self.job_id = client.start(task.job)
                return True
            except (RuntimeError, ValueError) as exc:  # busy, or a job the protocol refuses
                task.outcome, task.reason = "failed", one_line(exc)
        self.end()
        return False

    def poll(self) -> bool:
        """Timer path: handle what the backend reported; False once the run has ended."""
        for event in self.client.poll():
            if event.job_id != self.job_id:
                continue
            if event.kind == "progress":
                self._on_event(event)
                continue
            self.job_id = None
            if event.kind == "result" and not self.cancelling:
                self._place(self.current, event)
            elif event.kind == "result":  # finished just before the cancel reached it: the user still gets nothing
                self.current.outcome, self.current.reason = "cancelled", "cancelled"
                self.client.discard(event)
            else:
                self.current.outcome = "cancelled" if event.kind == "cancelled" else "failed"
                self.current.reason = "cancelled" if event.kind == "cancelled" else one_line(event.message)
            return self.start_next(self.client)
        return True

    def cancel(self) -> None:
        """Stop the running job at its next progress point and drop the tasks not started yet."""
        for task in self._pending():
            if task is not self.current:
                task.outcome, task.reason = "cancelled", "cancelled before it started"
        if self.job_id is not None:
            self.client.cancel(self.job_id)
        self.cancelling = True
        self.state.status = "Cancelling..."

    def end(self) -> None:
        self.temp.cleanup()
        self.current = None
        state = self.state
        state.running, state.progress, state.stage = False, 0.0, ""
        state.status = self.summary_line()
        if self.batch_dirs is not None:
            self.summary_text = _write_summary(self, *self.batch_dirs).name
        if self.created:
            show_colour_attributes(bpy.context.screen)

    def abandon(self, reason: str) -> None:
        """After an unexpected error on the timer path: drop the worker (and its job), keep what was made, free the UI."""
        close_client()
        self.temp.cleanup()
        state = self.state
        state.running, state.progress, state.stage, state.status = False, 0.0, "", f"Failed: {reason}"

    def summary_line(self) -> str:
        if self.batch_dirs is None:
            task = self.tasks[0]
            if task.outcome == "created":
                return f"Created {self.created[0]} ({task.reason})"
            return "Cancelled" if task.outcome == "cancelled" else f"Failed: {task.reason}"
        counts = {o: sum(t.outcome == o for t in self.tasks) for o in ("created", "skipped", "failed", "cancelled")}
        return "Batch: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n or o == "created")

    def _pending(self) -> list[Task]:
        return [t for t in self.tasks if not t.outcome]

    def _enter(self, task: Task) -> None:
        self.current = task
        position = f" {self.tasks.index(task) + 1}/{len(self.tasks)}" if len(self.tasks) > 1 else ""
        self.state.status = f"{self.title}{position}: {Path(task.source).name}"
        self.state.stage, self.state.progress = "starting", 0.0

    def _on_event(self, event: JobEvent) -> None:
        if event.kind == "progress":
            self.state.stage = f"{event.stage} {event.step}/{event.total}"
            self.state.progress = event.step / event.total if event.total > 0 else 0.0
            _redraw_sidebars()

    def _place(self, task: Task, event: JobEvent) -> None:
        """Make the task's object (and its GLB); if anything fails, nothing of it stays."""
        mesh = event.mesh
        obj = create_object(task.name, mesh.vertices, mesh.faces, mesh.colors, self.location)
        if task.glb is not None:
            try:
                _export_glb(obj, task.glb, self.overwrite)
            except (RuntimeError, OSError) as exc:
                _remove_object(obj)
                self.client.discard(event)
                task.outcome, task.reason = "failed", f"cannot write {task.glb.name}: {one_line(exc)}"
                return
        _select_only(obj)
        if event.info.get("views") and Path(event.info["views"]).is_file():
            _keep_views(obj.name, event.info["views"])
        self.client.discard(event)  # packed into the .blend: the temporary file is not needed any more
        task.outcome = "created"
        task.reason = f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces"
        self.created.append(obj.name)


def _generate_run(context: bpy.types.Context) -> Run:
    """One task from the sidebar's source: a view folder to reconstruct, or an image to generate views for."""
    settings, prefs = context.scene.image_to_3d, get_prefs(context)
    temp = tempfile.TemporaryDirectory(prefix="imageto3d-")
    try:
        if settings.source == "VIEWS":
            folder = _absolute(settings.views_dir, "the Views Folder")
            task = Task(folder, Path(folder).name or "Views", _reconstruct_job(folder, settings, prefs))
        else:
            if settings.source == "FILE":
                source = _absolute(settings.filepath, "the Image File")
                image = _readable_image(Path(source), temp.name)
            else:
                datablock = editor_image(context) if settings.source == "EDITOR" else settings.image
                if datablock is None:
                    raise SettingsError("no image in an Image Editor: open one there, or choose another source"
                                        if settings.source == "EDITOR" else "no image chosen: pick one in the Image field")
                source, image = datablock.name, _image_file(datablock, temp.name)
            task = Task(source, Path(source).stem or "Image", _image_job(image, settings, prefs))
    except BaseException:
        temp.cleanup()
        raise
    return Run(context, [task], temp, "Generating")


def _batch_run(context: bpy.types.Context, input_dir: str, output_dir: str, overwrite: bool) -> Run:
    """One task per image in ``input_dir``; images whose GLB exists are skipped unless ``overwrite`` (a re-run resumes)."""
    settings, prefs = context.scene.image_to_3d, get_prefs(context)
    source_dir, target_dir = Path(_absolute(input_dir, "the Input Folder")), Path(_absolute(output_dir, "the Output Folder"))
    if not source_dir.is_dir():
        raise SettingsError(f"the Input Folder {source_dir} does not exist")
    if not target_dir.is_dir():
        raise SettingsError(f"the Output Folder {target_dir} does not exist: create it first")
    try:
        probe_writable(target_dir)
    except OSError as exc:
        raise SettingsError(f"cannot write to the Output Folder {target_dir}: {exc.strerror or exc}") from None
    images = sorted(p for p in source_dir.iterdir() if p.is_file() and p.suffix.lower() in BACKEND_FORMATS)
    if not images:
        raise SettingsError(f"no images ({', '.join(BACKEND_FORMATS)}) in {source_dir}")
    temp = tempfile.TemporaryDirectory(prefix="imageto3d-batch-")
    tasks, names = [], set()
    for path in images:
        stem = path.stem if path.stem.lower() not in names else f"{path.stem}-{path.suffix[1:].lower()}"
        names.add(stem.lower())
        task = Task(str(path), stem, glb=target_dir / f"{stem}.glb")
        if task.glb.exists() and not overwrite:
            task.outcome, task.reason = "skipped", f"{task.glb.name} exists (turn on Overwrite to replace it)"
        else:
            try:
                task.job = _image_job(_readable_image(path, temp.name), settings, prefs)
            except SettingsError as exc:
                task.outcome, task.reason = "failed", str(exc)
        tasks.append(task)
    return Run(context, tasks, temp, "Batch", (str(source_dir), str(target_dir)), overwrite)


def _write_summary(run: Run, input_dir: str, output_dir: str) -> bpy.types.Text:
    """The batch's outcome per image, as a text datablock the user can read in the Text Editor."""
    text = bpy.data.texts.new(f"Image to 3D batch {dt.datetime.now():%Y-%m-%d %H:%M:%S}")
    lines = [text.name, f"input: {input_dir}", f"output: {output_dir}", run.summary_line(), ""]
    for task in run.tasks:
        target = f" -> {task.glb.name}" if task.outcome == "created" else ""
        lines.append(f"{task.outcome:<9} {Path(task.source).name}{target}: {task.reason}")
    text.write("\n".join(lines) + "\n")
    return text


def _idle() -> bool:
    return _run is None and not backend_busy()


def _tick() -> float | None:
    """The timer: poll the run, in a window showing its scene; None (stop) once it has ended."""
    global _run
    run = _run
    if run is None:
        return None
    wm = bpy.context.window_manager
    window = next((w for w in wm.windows if w.scene.name == run.scene_name), wm.windows[0] if wm.windows else None)
    going = False
    try:
        with bpy.context.temp_override(window=window):
            going = run.poll()
            if not going:
                _finish_in_ui(run)
    except Exception:  # Blender drops a timer that raises: never leave the run, and the sidebar, stuck
        traceback.print_exc()
        run.abandon("internal error, see the system console")
    finally:
        if not going:
            _run = None
    _redraw_sidebars()
    return POLL_INTERVAL if going else None


def _finish_in_ui(run: Run) -> None:
    """What ``execute`` does through its return value and reports: one undo step; a popup for failures and batches."""
    if run.created:
        bpy.ops.ed.undo_push(message="Image to 3D")
    failed = any(t.outcome == "failed" for t in run.tasks)
    if bpy.app.background:  # no UI to pop up in (and popup_menu crashes headless Blender); the status line says it
        return
    if failed or run.summary_text is not None:
        message = run.state.status + (f"; details in the text {run.summary_text}" if run.summary_text else "")
        bpy.context.window_manager.popup_menu(lambda menu, _c: menu.layout.label(text=message), title="Image to 3D",
                                              icon="ERROR" if failed else "INFO")


def _start_polling(context: bpy.types.Context, run: Run) -> None:
    global _run
    run.begin()
    if run.start_next(get_client(get_prefs(context))):
        _run = run
        bpy.app.timers.register(_tick, first_interval=POLL_INTERVAL)
    else:  # nothing reached the backend
        _finish_in_ui(run)


def stop() -> None:
    """On unregister: stop polling and cancel the run in progress."""
    global _run
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    if _run is not None:
        _run.cancel()
        _run.temp.cleanup()
        _run = None


class IMAGETO3D_OT_generate(bpy.types.Operator):
    """Make a vertex-coloured mesh at the 3D cursor from the chosen image or view folder"""

    bl_idname = "imageto3d.generate"
    bl_label = "Generate Mesh"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _idle()

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            run = _generate_run(context)
        except SettingsError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        run.run_here(context)
        if not run.created:
            self.report({"ERROR"}, run.tasks[0].reason)
            return {"CANCELLED"}
        self.report({"INFO"}, run.summary_line())
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        try:
            run = _generate_run(context)
        except SettingsError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        _start_polling(context, run)
        return {"FINISHED"}


class IMAGETO3D_OT_batch(bpy.types.Operator):
    """Turn every image in a folder into an object and a GLB file; a text lists what happened to each"""

    bl_idname = "imageto3d.batch"
    bl_label = "Batch Convert"
    bl_options = {"REGISTER", "UNDO"}

    input_dir: StringProperty(name="Input Folder", subtype="DIR_PATH")
    output_dir: StringProperty(name="Output Folder", subtype="DIR_PATH")
    overwrite: BoolProperty(name="Overwrite", description="Replace GLB files that already exist")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _idle()

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            run = _batch_run(context, self.input_dir, self.output_dir, self.overwrite)
        except SettingsError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        run.run_here(context)
        kind = "INFO" if all(t.outcome in ("created", "skipped") for t in run.tasks) else "WARNING"
        self.report({kind}, f"{run.summary_line()}; details in the text {run.summary_text}")
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        try:
            run = _batch_run(context, self.input_dir, self.output_dir, self.overwrite)
        except SettingsError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        _start_polling(context, run)
        return {"FINISHED"}


class IMAGETO3D_OT_cancel(bpy.types.Operator):
    """Stop the running generation at its next step; a batch skips the images not started yet"""

    bl_idname = "imageto3d.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _run is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        _run.cancel()
        return {"FINISHED"}


classes = (IMAGETO3D_OT_generate, IMAGETO3D_OT_batch, IMAGETO3D_OT_cancel)
