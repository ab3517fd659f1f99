"""The Blender add-on with the real ``bpy`` (Blender 5.0 as a Python module), headless.

The add-on is enabled as Blender enables any add-on package found on ``sys.path``:
``addon_utils.enable("addon")`` with the repository root on pytest's pythonpath, so ``__package__`` is
"addon" and its preferences exist. Blender's user folders point at a temporary directory. There is no
event loop, so ``bpy.ops`` runs operators through ``execute``; ``invoke``'s timer path is driven by calling
its timer function by hand, and panels draw into a stand-in layout that checks each property drawn.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="imageto3d-blender-user-"))
os.environ["HF_HUB_OFFLINE"] = "1"

import bpy  # noqa: E402  (after the environment variable)
import addon_utils  # noqa: E402  (Blender's module, importable once bpy is)

from .bad_images import BAD_IMAGES, write_bad_images  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPOT_VIEWS = REPO / "examples" / "spot_views"
BLENDER_EXT = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.fixture(scope="module")
def prefs(one_thread: None) -> Iterator[bpy.types.AddonPreferences]:
    """The enabled add-on's preferences, set to the in-process backend on the CPU."""
    addon_utils.enable("addon", default_set=True, handle_error=_raise)
    preferences = bpy.context.preferences.addons["addon"].preferences
    preferences.backend_mode, preferences.device, preferences.zero123_dir = "IN_PROCESS", "cpu", ""
    yield preferences
    if "addon" in bpy.context.preferences.addons:
        addon_utils.disable("addon", default_set=True, handle_error=_raise)


@pytest.fixture()
def settings(prefs: bpy.types.AddonPreferences) -> bpy.types.PropertyGroup:
    scene_settings = bpy.context.scene.image_to_3d
    scene_settings.resolution, scene_settings.seed, scene_settings.steps = 48, 0, 0
    return scene_settings


@pytest.fixture(scope="module")
def tiny_zero123(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .tiny_zero123 import tiny_generator

    folder = tmp_path_factory.mktemp("zero123") / "tiny"
    tiny_generator(seed=0).save_folder(folder)
    return folder


@pytest.fixture(scope="module")
def sphere_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised reconstructor: its geometric init gives a sphere for any views (tiny Zero123's are noise).

    A 32^3 volume instead of 96^3 halves each job's time; nothing here depends on the size.
    """
    import torch

    from backend.checkpoints import save_checkpoint
    from backend.models import One2345Reconstructor, ReconstructorConfig

    torch.manual_seed(0)
    model = One2345Reconstructor(ReconstructorConfig(volume_resolution=32))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "init", model, step=0)


def _error_line(exc: pytest.ExceptionInfo) -> str:
    """The message of an operator's ERROR report, as bpy.ops raises it."""
    text = str(exc.value).strip()
    assert text.startswith("Error: ") and "\n" not in text
    return text[len("Error: "):]


def _datablock_counts() -> dict[str, int]:
    return {name: len(getattr(bpy.data, name)) for name in ("objects", "meshes", "images", "materials")}


def test_manifest_validates_with_blenders_validator(tmp_path: Path) -> None:
    from _bpy_internal.extensions import tags

    package = tmp_path / "image_to_3d"
    package.mkdir()
    shutil.copy(REPO / "blender_manifest.toml", package)
    for path in (REPO / "addon").iterdir():
        if path.is_file() and not path.is_symlink():
            shutil.copy(path, package)
    valid_tags = tmp_path / "tags.json"
    valid_tags.write_text(json.dumps({"add-on": sorted(tags.addons), "theme": sorted(tags.themes)}))
    result = subprocess.run([sys.executable, str(BLENDER_EXT), "validate", str(package), "--valid-tags", str(valid_tags)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Success" in result.stdout, result.stdout + result.stderr
    manifest = tomllib.loads((REPO / "blender_manifest.toml").read_text())
    assert manifest["id"] == "image_to_3d" and "blender" not in manifest["name"].lower()
    assert set(manifest["permissions"]) == {"files"}


def test_registering_does_not_import_torch() -> None:
    code = ("import bpy, addon_utils, sys; addon_utils.enable('addon', default_set=True); "
            "assert 'torch' not in sys.modules and 'addon.backend.worker' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_conventional_names_are_registered(prefs: bpy.types.AddonPreferences) -> None:
    panel = bpy.types.IMAGETO3D_PT_main
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("VIEW_3D", "UI", "Image to 3D")
    assert bpy.types.IMAGETO3D_PT_batch.bl_parent_id == "IMAGETO3D_PT_main"
    for name in ("generate", "batch", "cancel", "refresh_checkpoints", "test_backend", "folder_add", "folder_remove"):
        assert getattr(bpy.ops.imageto3d, name).idname() == f"IMAGETO3D_OT_{name}"
    assert {"REGISTER", "UNDO"} <= bpy.types.IMAGETO3D_OT_generate.bl_options
    assert {"REGISTER", "UNDO"} <= bpy.types.IMAGETO3D_OT_batch.bl_options
    assert type(prefs).bl_idname == "addon"
    assert bpy.context.scene.image_to_3d.resolution > 0 and not bpy.context.window_manager.image_to_3d.running


class _Layout:
    """Stands in for ``UILayout`` (drawing needs a window region): checks every property and operator drawn."""

    def __init__(self) -> None:
        self.props: list[str] = []
        self.operators: list[str] = []
        self.progress_text: str | None = None

    def row(self, **_kwargs: object) -> "_Layout":
        return self

    column = box = row

    def prop(self, data: bpy.types.bpy_struct, name: str, **_kwargs: object) -> None:
        assert name in data.bl_rna.properties, name
        self.props.append(name)

    def operator(self, idname: str, **_kwargs: object) -> "_OperatorProperties":
        category, name = idname.split(".")
        self.operators.append(idname)
        return _OperatorProperties(getattr(getattr(bpy.ops, category), name).get_rna_type())

    def label(self, **_kwargs: object) -> None:
        pass

    def progress(self, *, factor: float, type: str, text: str) -> None:
        assert 0.0 <= factor <= 1.0 and type == "BAR"
        self.progress_text = text


class _OperatorProperties:
    def __init__(self, rna: bpy.types.Struct) -> None:
        object.__setattr__(self, "rna", rna)

    def __setattr__(self, name: str, value: object) -> None:
        assert name in self.rna.properties, name


class _Drawer:
    """``self`` for a draw method: the stand-in layout; other attributes come from ``data`` (the preferences)."""

    def __init__(self, data: object = None) -> None:
        self.layout = _Layout()
        self._data = data

    def __getattr__(self, name: str) -> object:
        return getattr(self._data, name)


def _draw(cls: type, data: object = None) -> _Layout:
    drawer = _Drawer(data)
    cls.draw(drawer, bpy.context)
    return drawer.layout


def test_sidebar_and_preferences_draw_their_settings(prefs: bpy.types.AddonPreferences) -> None:
    settings, state = bpy.context.scene.image_to_3d, bpy.context.window_manager.image_to_3d
    drawn = {}
    for source in ("EDITOR", "DATABLOCK", "FILE", "VIEWS"):
        settings.source = source
        drawn[source] = _draw(bpy.types.IMAGETO3D_PT_main)
    assert {"source", "checkpoint", "resolution", "seed", "device", "auto_polar", "polar", "steps"} <= set(drawn["FILE"].props)
    assert "filepath" in drawn["FILE"].props and "image" in drawn["DATABLOCK"].props and "views_dir" in drawn["VIEWS"].props
    assert "polar" not in drawn["VIEWS"].props and drawn["VIEWS"].operators == ["imageto3d.generate"]
    state.running, state.stage = True, "reconstruct 3/9"
    try:
        running = _draw(bpy.types.IMAGETO3D_PT_main)
    finally:
        state.running, state.stage = False, ""
    assert running.operators == ["imageto3d.cancel"] and running.progress_text == "reconstruct 3/9"
    batch = _draw(bpy.types.IMAGETO3D_PT_batch)
    assert batch.props == ["batch_input_dir", "batch_output_dir", "batch_overwrite"] and batch.operators == ["imageto3d.batch"]

    prefs.checkpoint_folders.add()
    prefs.backend_mode = "SUBPROCESS"
    try:
        layout = _draw(type(prefs), prefs)
    finally:
        prefs.checkpoint_folders.clear()
        prefs.backend_mode = "IN_PROCESS"
    assert {"checkpoint", "path", "zero123_dir", "device", "backend_mode", "python_path", "hang_timeout"} <= set(layout.props)
    assert {"imageto3d.refresh_checkpoints", "imageto3d.folder_add", "imageto3d.folder_remove",
            "imageto3d.test_backend"} <= set(layout.operators)


def test_create_object_converts_srgb_colours_to_linear(prefs: bpy.types.AddonPreferences) -> None:
    from addon.mesh_import import create_object

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    colors = np.array([[255, 128, 0], [0, 0, 0], [255, 255, 255], [10, 20, 30]], np.uint8)
    obj = create_object("tetra", vertices, faces, colors, (1.0, 2.0, 3.0))
    try:
        mesh = obj.data
        assert (len(mesh.vertices), len(mesh.polygons)) == (4, 4) and tuple(obj.location) == (1.0, 2.0, 3.0)
        got = np.empty(12, np.float32)
        mesh.vertices.foreach_get("co", got)
        np.testing.assert_array_equal(got.reshape(4, 3), vertices)
        rgba = np.empty(16, np.float32)
        mesh.color_attributes["Color"].data.foreach_get("color", rgba)
        np.testing.assert_allclose(rgba.reshape(4, 4)[0], [1.0, 0.2158605, 0.0, 1.0], atol=1e-4)
        assert obj.name in bpy.context.view_layer.active_layer_collection.collection.objects
    finally:
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)


def test_generate_from_views_folder_adds_one_coloured_object_at_the_cursor(settings: bpy.types.PropertyGroup) -> None:
    settings.source, settings.views_dir = "VIEWS", str(SPOT_VIEWS)
    bpy.context.scene.cursor.location = (0.5, -0.25, 1.0)
    before = set(bpy.data.objects)
    assert bpy.ops.imageto3d.generate() == {"FINISHED"}
    new = set(bpy.data.objects) - before
    assert len(new) == 1
    obj = new.pop()
    assert obj.type == "MESH" and obj.name.startswith("spot_views")
    assert tuple(obj.location) == pytest.approx((0.5, -0.25, 1.0))
    assert bpy.context.view_layer.objects.active == obj and obj.select_get()
    assert [o for o in bpy.context.selected_objects] == [obj]

    mesh = obj.data
    colour = mesh.color_attributes.active_color
    assert (colour.name, colour.data_type, colour.domain) == ("Color", "FLOAT_COLOR", "POINT")
    assert mesh.color_attributes.render_color_index == mesh.color_attributes.active_color_index
    rgba = np.empty(len(mesh.vertices) * 4, np.float32)
    colour.data.foreach_get("color", rgba)
    assert rgba.reshape(-1, 4)[:, :3].std(axis=0).max() > 0.02  # not one flat colour

    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    assert len(co) > 100 and np.abs(co).max() < 1.5 and (np.ptp(co, axis=0) > 0.2).all()

    material = mesh.materials[0]
    assert material.name == "Image to 3D vertex colour"
    node = next(n for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeVertexColor")
    assert node.layer_name == "Color"
    link = next(lk for lk in material.node_tree.links if lk.from_node == node)
    assert link.to_node.bl_idname == "ShaderNodeBsdfPrincipled" and link.to_socket.name == "Base Color"
    state = bpy.context.window_manager.image_to_3d
    assert not state.running and state.status.startswith(f"Created {obj.name}")
    solid_views = [a.spaces.active.shading for a in bpy.context.screen.areas if a.type == "VIEW_3D"]
    assert solid_views and all(shading.color_type == "VERTEX" for shading in solid_views)  # "Attribute" colouring


def test_sidebar_path_polls_the_backend_and_cancel_stops_it(settings: bpy.types.PropertyGroup) -> None:
    """``invoke``'s path, with its timer function called by hand (timers never fire headless)."""
    from addon import operators

    def drive() -> set[str]:
        stages = set()
        while operators._tick() is not None:
            stages.add(state.stage)
            time.sleep(0.05)
        return stages

    state = bpy.context.window_manager.image_to_3d
    settings.source, settings.views_dir = "VIEWS", str(SPOT_VIEWS)
    before = set(bpy.data.objects)
    operators._start_polling(bpy.context, operators._generate_run(bpy.context))
    assert state.running and bpy.ops.imageto3d.cancel.poll() and not bpy.ops.imageto3d.generate.poll()
    stages = drive()
    [obj] = set(bpy.data.objects) - before
    assert any("/" in stage for stage in stages) and bpy.context.view_layer.objects.active == obj
    assert not state.running and state.status.startswith(f"Created {obj.name}") and bpy.ops.imageto3d.generate.poll()

    counts = _datablock_counts()
    operators._start_polling(bpy.context, operators._generate_run(bpy.context))
    assert bpy.ops.imageto3d.cancel() == {"FINISHED"}
    drive()
    assert state.status == "Cancelled" and not state.running and _datablock_counts() == counts
    bpy.app.timers.unregister(operators._tick)


def test_missing_views_folder_is_one_error_line_and_adds_nothing(settings: bpy.types.PropertyGroup, tmp_path: Path) -> None:
    settings.source, settings.views_dir = "VIEWS", str(tmp_path / "missing")
    before = _datablock_counts()
    with pytest.raises(RuntimeError) as exc:
        bpy.ops.imageto3d.generate()
    assert "missing" in _error_line(exc) and "not found" in _error_line(exc)
    assert _datablock_counts() == before
    state = bpy.context.window_manager.image_to_3d
    assert not state.running and state.status.startswith("Failed:")
    assert bpy.ops.imageto3d.generate.poll()  # ready for the next run


def test_missing_zero123_folder_is_one_error_line_naming_it(settings: bpy.types.PropertyGroup, prefs: bpy.types.AddonPreferences,
                                                             tmp_path: Path) -> None:
    settings.source, settings.image = "DATABLOCK", bpy.data.images.load(str(SPOT_VIEWS / "stage1_8" / "0.png"))
    prefs.zero123_dir = str(tmp_path / "no zero123")
    before = _datablock_counts()
    try:
        with pytest.raises(RuntimeError) as exc:
            bpy.ops.imageto3d.generate()
        assert "no zero123" in _error_line(exc) and "does not exist" in _error_line(exc)
        assert _datablock_counts() == before
    finally:
        bpy.data.images.remove(settings.image)
        prefs.zero123_dir = ""


def test_batch_reports_every_failure_and_leaves_nothing_half_made(settings: bpy.types.PropertyGroup, tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    shutil.copy(SPOT_VIEWS / "stage1_8" / "0.png", source / "cow.png")
    shutil.copy(SPOT_VIEWS / "stage1_8" / "1.png", source / "done.png")
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    (source / "notes.txt").write_text("not an image")
    exr = bpy.data.images.new("hdr", 32, 32, float_buffer=True)  # only Blender reads OpenEXR: it goes via a PNG copy
    exr.filepath_raw, exr.file_format = str(source / "hdr.exr"), "OPEN_EXR"
    exr.save()
    bpy.data.images.remove(exr)
    (out / "done.glb").write_bytes(b"an earlier result")

    bpy.context.preferences.addons["addon"].preferences.zero123_dir = str(tmp_path / "no zero123")  # every image fails
    with pytest.raises(RuntimeError) as exc:
        bpy.ops.imageto3d.batch(input_dir=str(source), output_dir=str(tmp_path / "nowhere"))
    assert "does not exist" in _error_line(exc)

    before, texts = _datablock_counts(), set(bpy.data.texts)
    assert bpy.ops.imageto3d.batch(input_dir=str(source), output_dir=str(out), overwrite=False) == {"FINISHED"}
    assert _datablock_counts() == before
    assert sorted(p.name for p in out.iterdir()) == ["done.glb"] and (out / "done.glb").read_bytes() == b"an earlier result"
    [summary] = set(bpy.data.texts) - texts
    assert summary.name.startswith("Image to 3D batch ")
    lines = summary.as_string().splitlines()
    row = {name: next(line for line in lines if f" {name}" in line) for name in ("cow.png", "hdr.exr", "broken.png", "done.png")}
    bpy.context.preferences.addons["addon"].preferences.zero123_dir = ""
    assert row["cow.png"].startswith("failed") and "does not exist" in row["cow.png"]
    assert row["hdr.exr"].startswith("failed") and row["broken.png"].startswith("failed")
    assert "broken.png" in row["broken.png"] and "does not exist" not in row["broken.png"]  # the image's own problem first
    assert row["done.png"].startswith("skipped") and "exists" in row["done.png"]
    assert not any("notes.txt" in line for line in lines)
    state = bpy.context.window_manager.image_to_3d
    assert not state.running and state.status == "Batch: 0 created, 1 skipped, 3 failed"


def test_image_datablock_with_a_view_generator_makes_object_views_and_glb(
        prefs: bpy.types.AddonPreferences, settings: bpy.types.PropertyGroup, tiny_zero123: Path, sphere_checkpoint: Path,
        tmp_path: Path) -> None:
    """Tiny random Zero123 (2 steps): exercises the packed-image copy, the contact sheet and the batch's GLB export,
    which replaces an existing file only with consent, and atomically."""
    from addon import preferences

    prefs.zero123_dir, prefs.checkpoint_path = str(tiny_zero123), str(sphere_checkpoint)
    settings.steps, settings.resolution, settings.auto_polar = 2, 32, False
    image = bpy.data.images.load(str(SPOT_VIEWS / "stage1_8" / "0.png"))
    image.pack()
    image.name = "packed cow"
    settings.source, settings.image = "DATABLOCK", image
    try:
        before = set(bpy.data.objects)
        assert bpy.ops.imageto3d.generate() == {"FINISHED"}
        [obj] = set(bpy.data.objects) - before
        assert obj.name == "packed cow" and image.filepath == str(SPOT_VIEWS / "stage1_8" / "0.png")
        views = bpy.data.images["packed cow views"]
        assert views.packed_file is not None and views.size[0] > 0

        results = preferences._client._transport.results_dir
        assert not [p for p in results.rglob("*") if p.is_file()]  # the views were packed, their file removed

        source, out = tmp_path / "in", tmp_path / "out"
        source.mkdir()
        out.mkdir()
        shutil.copy(SPOT_VIEWS / "stage1_8" / "2.png", source / "side.png")
        (out / "side.glb").write_bytes(b"an earlier result")
        os.link(out / "side.glb", tmp_path / "earlier.glb")  # a second name for the old file's bytes
        assert bpy.ops.imageto3d.batch(input_dir=str(source), output_dir=str(out), overwrite=True) == {"FINISHED"}
        assert bpy.context.active_object.name == "side"
        assert (out / "side.glb").read_bytes()[:4] == b"glTF" and sorted(p.name for p in out.iterdir()) == ["side.glb"]
        assert (tmp_path / "earlier.glb").read_bytes() == b"an earlier result"  # replaced by a rename, not rewritten
        assert bpy.context.window_manager.image_to_3d.status == "Batch: 1 created"
    finally:
        prefs.zero123_dir = prefs.checkpoint_path = ""
        settings.auto_polar = True


def test_refresh_lists_the_bundled_checkpoint_first(prefs: bpy.types.AddonPreferences, tmp_path: Path) -> None:
    from addon.preferences import _checkpoint_items

    shutil.copytree(REPO / "backend" / "weights" / "reconstructor", tmp_path / "mine")
    assert bpy.ops.imageto3d.folder_add() == bpy.ops.imageto3d.folder_add() == {"FINISHED"}
    assert bpy.ops.imageto3d.folder_remove(index=1) == {"FINISHED"} and len(prefs.checkpoint_folders) == 1
    prefs.checkpoint_folders[0].path = str(tmp_path)
    try:
        assert bpy.ops.imageto3d.refresh_checkpoints() == {"FINISHED"}
        listed = [item[0] for item in _checkpoint_items(prefs, bpy.context)]  # what the enum's items callback offers
        assert listed == ["BUNDLED", str(tmp_path / "mine")]
        label = bpy.types.UILayout.enum_item_name(prefs, "checkpoint", "BUNDLED")
        assert label.startswith("reconstructor (bundled, step ")
        assert bpy.types.UILayout.enum_item_name(prefs, "checkpoint", str(tmp_path / "mine")).startswith("mine (step ")
        prefs.checkpoint = str(tmp_path / "mine")
        assert prefs.checkpoint == prefs.checkpoint_path == str(tmp_path / "mine")
        prefs.checkpoint = "BUNDLED"
        assert prefs.checkpoint == "BUNDLED" and prefs.checkpoint_path == ""
    finally:
        prefs.checkpoint_folders.clear()


def test_backend_test_reports_the_torch_version_in_process_and_in_a_subprocess(prefs: bpy.types.AddonPreferences, capfd: pytest.CaptureFixture) -> None:
    import torch

    assert bpy.ops.imageto3d.test_backend() == {"FINISHED"}
    assert f"torch {torch.__version__}" in prefs.backend_info and "device cpu" in prefs.backend_info
    assert f"Info: {prefs.backend_info}" in capfd.readouterr().out
    prefs.backend_mode = "SUBPROCESS"  # the interpreter defaults to this one
    try:
        prefs.backend_info = ""
        assert bpy.ops.imageto3d.test_backend() == {"FINISHED"}
        assert f"torch {torch.__version__}" in prefs.backend_info
        prefs.python_path = "/nonexistent/python"
        with pytest.raises(RuntimeError) as exc:
            bpy.ops.imageto3d.test_backend()
        assert "cannot start the backend" in _error_line(exc) and prefs.backend_info.startswith("Failed: ")
    finally:
        prefs.backend_mode, prefs.python_path = "IN_PROCESS", sys.executable


def _assert_coloured_object_at_cursor(obj: bpy.types.Object, cursor: tuple[float, float, float]) -> None:
    assert obj.type == "MESH" and tuple(obj.location) == pytest.approx(cursor)
    colour = obj.data.color_attributes.active_color
    assert (colour.name, colour.data_type, colour.domain) == ("Color", "FLOAT_COLOR", "POINT")
    material = obj.data.materials[0]
    assert material.name == "Image to 3D vertex colour"
    assert any(n.bl_idname == "ShaderNodeVertexColor" and n.layer_name == "Color" for n in material.node_tree.nodes)


@pytest.fixture()
def tiny_generator_prefs(prefs: bpy.types.AddonPreferences, settings: bpy.types.PropertyGroup, tiny_zero123: Path,
                         sphere_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[bpy.types.AddonPreferences]:
    """The tiny Zero123 (2 steps, fixed polar) and the random checkpoint; everything back to in-process afterwards."""
    from addon.preferences import close_client

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a subprocess worker, like this process (one_thread): no spin-waits
    prefs.zero123_dir, prefs.checkpoint_path = str(tiny_zero123), str(sphere_checkpoint)
    settings.steps, settings.resolution, settings.auto_polar = 2, 32, False
    try:
        yield prefs
    finally:
        close_client()  # stops a subprocess worker
        prefs.zero123_dir = prefs.checkpoint_path = ""
        prefs.backend_mode, prefs.python_path = "IN_PROCESS", sys.executable
        settings.auto_polar = True


@pytest.mark.parametrize("mode", ["IN_PROCESS", "SUBPROCESS"])
def test_generate_from_an_image_file_in_both_backend_modes(
        tiny_generator_prefs: bpy.types.AddonPreferences, settings: bpy.types.PropertyGroup, tmp_path: Path, mode: str) -> None:
    tiny_generator_prefs.backend_mode, tiny_generator_prefs.python_path = mode, sys.executable
    image = tmp_path / f"vache à l’étable {mode.lower()}.png"  # spaces and non-ASCII letters
    shutil.copy(SPOT_VIEWS / "stage1_8" / "0.png", image)
    settings.source, settings.filepath = "FILE", str(image)
    cursor = (-1.0, 2.0, 0.5)
    bpy.context.scene.cursor.location = cursor
    before = set(bpy.data.objects)
    assert bpy.ops.imageto3d.generate() == {"FINISHED"}
    [obj] = set(bpy.data.objects) - before
    assert obj.name == image.stem
    _assert_coloured_object_at_cursor(obj, cursor)
    assert bpy.context.window_manager.image_to_3d.status.startswith(f"Created {obj.name}")


def test_batch_of_three_images_and_bad_ones_then_a_rerun_skips_them(
        tiny_generator_prefs: bpy.types.AddonPreferences, tmp_path: Path) -> None:
    """PNG, JPEG and a float OpenEXR render in a folder whose name has spaces and non-ASCII letters, beside every kind
    of broken image: three objects and GLBs, and one summary line with its reason per failure."""
    source, out = tmp_path / "mes images à traiter", tmp_path / "out ü"
    bad = write_bad_images(source)
    out.mkdir()
    shutil.copy(SPOT_VIEWS / "stage1_8" / "0.png", source / "front.png")
    exr = bpy.data.images.load(str(SPOT_VIEWS / "stage1_8" / "1.png"), check_existing=False)
    assert exr.pixels[0] >= 0.0  # loads the pixels
    exr.filepath_raw, exr.file_format = str(source / "left.exr"), "OPEN_EXR"  # float, scene-linear, as Blender renders
    exr.save()
    bpy.data.images.remove(exr)
    jpg = bpy.data.images.load(str(SPOT_VIEWS / "stage1_8" / "2.png"), check_existing=False)
    assert jpg.pixels[0] >= 0.0  # loads the pixels
    jpg.filepath_raw, jpg.file_format = str(source / "back.jpg"), "JPEG"
    jpg.save()
    bpy.data.images.remove(jpg)
    (source / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    state = bpy.context.window_manager.image_to_3d

    before, texts = set(bpy.data.objects), set(bpy.data.texts)
    assert bpy.ops.imageto3d.batch(input_dir=str(source), output_dir=str(out), overwrite=False) == {"FINISHED"}
    assert sorted(o.name for o in set(bpy.data.objects) - before) == ["back", "front", "left"]
    assert sorted(p.name for p in out.iterdir()) == ["back.glb", "front.glb", "left.glb"]
    assert all(p.read_bytes()[:4] == b"glTF" for p in out.iterdir())
    failures = f"{len(bad) + 1} failed"
    assert state.status == f"Batch: 3 created, {failures}"
    [summary] = set(bpy.data.texts) - texts
    lines = summary.as_string().splitlines()
    assert f"Batch: 3 created, {failures}" in lines
    failed = {line.split(":")[0].split(maxsplit=1)[1]: line for line in lines if line.startswith("failed")}
    assert "corrupt.png is not an image that can be read" in failed["corrupt.png"]
    for path, expected in bad.items():
        assert expected in failed[path.name], failed[path.name]
    assert sum(line.startswith("created") for line in lines) == 3

    before, texts = set(bpy.data.objects), set(bpy.data.texts)
    assert bpy.ops.imageto3d.batch(input_dir=str(source), output_dir=str(out), overwrite=False) == {"FINISHED"}
    assert set(bpy.data.objects) == before
    assert state.status == f"Batch: 0 created, 3 skipped, {failures}"
    [summary] = set(bpy.data.texts) - texts
    skipped = [line for line in summary.as_string().splitlines() if line.startswith("skipped")]
    assert len(skipped) == 3 and all("exists" in line for line in skipped)


def test_choosing_a_refreshed_checkpoint_changes_what_the_backend_loads(
        prefs: bpy.types.AddonPreferences, settings: bpy.types.PropertyGroup, sphere_checkpoint: Path,
        tmp_path: Path) -> None:
    import torch

    from addon import operators
    from addon.preferences import _checkpoint_items
    from backend.checkpoints import save_checkpoint
    from backend.models import One2345Reconstructor

    torch.manual_seed(1)
    later = save_checkpoint(tmp_path / "later", One2345Reconstructor(), step=7)
    for folder in (sphere_checkpoint, later):
        prefs.checkpoint_folders.add().path = str(folder)
    settings.source, settings.views_dir = "VIEWS", str(SPOT_VIEWS)
    try:
        assert bpy.ops.imageto3d.refresh_checkpoints() == {"FINISHED"}
        listed = [item[0] for item in _checkpoint_items(prefs, bpy.context)]
        assert listed == ["BUNDLED", str(sphere_checkpoint), str(later)]
        label = bpy.types.UILayout.enum_item_name
        assert label(prefs, "checkpoint", str(sphere_checkpoint)) == f"{sphere_checkpoint.name} (step 0)"
        assert label(prefs, "checkpoint", str(later)) == "later (step 7)"

        for chosen, step in ((str(later), 7), (str(sphere_checkpoint), 0)):
            prefs.checkpoint = chosen
            run = operators._generate_run(bpy.context)
            run.temp.cleanup()
            assert run.tasks[0].job["checkpoint"] == chosen
            assert bpy.ops.imageto3d.test_backend() == {"FINISHED"}
            assert prefs.backend_info.endswith(f"checkpoint {Path(chosen).name} step {step}")
        prefs.checkpoint = "BUNDLED"
        run = operators._generate_run(bpy.context)
        run.temp.cleanup()
        assert run.tasks[0].job["checkpoint"] is None
    finally:
        prefs.checkpoint_folders.clear()
        prefs.checkpoint_path = ""


def test_killed_subprocess_worker_is_a_clear_error_and_the_next_generate_works(
        tiny_generator_prefs: bpy.types.AddonPreferences, settings: bpy.types.PropertyGroup, tmp_path: Path) -> None:
    import signal

    from addon import operators, preferences

    tiny_generator_prefs.backend_mode, tiny_generator_prefs.python_path = "SUBPROCESS", sys.executable
    image = tmp_path / "killed.png"
    shutil.copy(SPOT_VIEWS / "stage1_8" / "0.png", image)
    settings.source, settings.filepath = "FILE", str(image)
    state = bpy.context.window_manager.image_to_3d

    counts = _datablock_counts()
    operators._start_polling(bpy.context, operators._generate_run(bpy.context))
    pid = preferences._client._transport.pid
    assert state.running and pid is not None
    deadline = time.monotonic() + 120
    while "/" not in state.stage:  # the worker is into the job: it has reported progress
        assert operators._tick() is not None and time.monotonic() < deadline, state.status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    while operators._tick() is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state.status.startswith("Failed: the backend process exited unexpectedly"), state.status
    assert not state.running and _datablock_counts() == counts and bpy.ops.imageto3d.generate.poll()
    if bpy.app.timers.is_registered(operators._tick):
        bpy.app.timers.unregister(operators._tick)

    settings.source, settings.views_dir = "VIEWS", str(SPOT_VIEWS)  # a shorter job than the image's
    before = set(bpy.data.objects)
    assert bpy.ops.imageto3d.generate() == {"FINISHED"}
    [obj] = set(bpy.data.objects) - before
    assert obj.name.startswith("spot_views") and preferences._client._transport.pid not in (None, pid)


def test_every_bad_image_is_one_error_line_and_adds_nothing(
        tiny_generator_prefs: bpy.types.AddonPreferences, settings: bpy.types.PropertyGroup, tmp_path: Path) -> None:
    """The backend checks the image before it loads a model, so each of these fails within a moment."""
    settings.source = "FILE"
    counts = _datablock_counts()
    for path, expected in write_bad_images(tmp_path / "bad ü").items():
        settings.filepath = str(path)
        with pytest.raises(RuntimeError) as exc:
            bpy.ops.imageto3d.generate()
        line = _error_line(exc)
        assert str(path) in line and expected in line, line
        assert _datablock_counts() == counts and bpy.ops.imageto3d.generate.poll()
    assert set(BAD_IMAGES) == {p.name for p in (tmp_path / "bad ü").iterdir()}


def test_read_only_output_folder_is_reported_before_anything_runs(
        settings: bpy.types.PropertyGroup, tmp_path: Path, read_only) -> None:
    source, out = tmp_path / "in", tmp_path / "locked"
    source.mkdir()
    out.mkdir()
    shutil.copy(SPOT_VIEWS / "stage1_8" / "0.png", source / "cow.png")
    texts = set(bpy.data.texts)
    with read_only(out), pytest.raises(RuntimeError) as exc:
        bpy.ops.imageto3d.batch(input_dir=str(source), output_dir=str(out))
    assert _error_line(exc).startswith(f"cannot write to the Output Folder {out}")
    assert set(bpy.data.texts) == texts and not bpy.context.window_manager.image_to_3d.running


def _drive(operators: object, deadline: float) -> None:
    """Call the timer function, as Blender would, until the run ends."""
    while operators._tick() is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_result_that_arrives_after_cancel_is_not_added(
        prefs: bpy.types.AddonPreferences, settings: bpy.types.PropertyGroup, sphere_checkpoint: Path) -> None:
    """Cancel pressed while the backend was sending its result: the user asked for nothing, so nothing appears."""
    from addon import operators, preferences

    prefs.checkpoint_path = str(sphere_checkpoint)
    settings.source, settings.views_dir, settings.resolution = "VIEWS", str(SPOT_VIEWS), 32
    state, counts = bpy.context.window_manager.image_to_3d, _datablock_counts()
    try:
        operators._start_polling(bpy.context, operators._generate_run(bpy.context))
        transport = preferences._client._transport
        deadline = time.monotonic() + 300
        while not any(m["type"] == "result" for m in list(transport._outbox.queue)):  # sent, not yet polled
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert bpy.ops.imageto3d.cancel() == {"FINISHED"}
        _drive(operators, deadline)
        assert state.status == "Cancelled" and not state.running and _datablock_counts() == counts
        assert not [p for p in transport.results_dir.rglob("*") if p.is_file()]
    finally:
        prefs.checkpoint_path = ""
        if bpy.app.timers.is_registered(operators._tick):
            bpy.app.timers.unregister(operators._tick)


def test_a_frozen_subprocess_worker_times_out_and_blender_stays_usable(
        tiny_generator_prefs: bpy.types.AddonPreferences, settings: bpy.types.PropertyGroup) -> None:
    import signal

    from addon import operators, preferences

    tiny_generator_prefs.backend_mode, tiny_generator_prefs.hang_timeout = "SUBPROCESS", 10
    settings.source, settings.views_dir = "VIEWS", str(SPOT_VIEWS)
    state, counts = bpy.context.window_manager.image_to_3d, _datablock_counts()
    try:
        operators._start_polling(bpy.context, operators._generate_run(bpy.context))
        transport = preferences._client._transport
        deadline = time.monotonic() + 300
        while "/" not in state.stage:  # the worker is into the job
            assert operators._tick() is not None and time.monotonic() < deadline, state.status
            time.sleep(0.02)
        pid, results = transport.pid, transport.results_dir
        os.kill(pid, signal.SIGSTOP)
        _drive(operators, deadline)
        assert state.status.startswith("Failed: the backend process stopped responding for 10 s and was stopped"), state.status
        assert not state.running and _datablock_counts() == counts and bpy.ops.imageto3d.generate.poll()
        assert transport.pid is None and not results.exists()
    finally:
        tiny_generator_prefs.hang_timeout = 120
        if bpy.app.timers.is_registered(operators._tick):
            bpy.app.timers.unregister(operators._tick)


def test_unregister_removes_everything(prefs: bpy.types.AddonPreferences) -> None:
    addon_utils.disable("addon", default_set=True, handle_error=_raise)
    assert "addon" not in bpy.context.preferences.addons
    assert not hasattr(bpy.types.Scene, "image_to_3d") and not hasattr(bpy.types.WindowManager, "image_to_3d")
    assert not any(name.startswith("IMAGETO3D_") for name in dir(bpy.types))
