"""What the extension-zip test runs inside Blender (``bpy`` as a module), one step per process.

    python tests/extension_in_blender.py install ZIP
    python tests/extension_in_blender.py generate IMAGE RESULT_JSON [ZERO123_DIR CHECKPOINT_DIR]

``BLENDER_USER_RESOURCES`` must name the temporary user folder. ``install`` installs and enables the zip as
Preferences > Get Extensions > Install from Disk does. ``generate`` is Blender started again, as after an
install: only then is the extensions' site-packages ahead of this interpreter's own (which also holds torch),
so the backend runs on the wheels the zip brought. It enables the extension, runs Generate in-process on the
image with the bundled models (or the given ones), and writes what it saw to RESULT_JSON for the test to check.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import bpy
import addon_utils  # Blender's module, importable once bpy is

EXTENSION = "bl_ext.user_default.image_to_3d"
WHEEL_MODULES = ("torch", "diffusers", "transformers", "huggingface_hub", "safetensors", "scipy", "cv2", "mcubes",
                 "trimesh", "PIL")  # not numpy: Blender imports its own at startup, as bpy here imports this Python's


def install(zip_path: str) -> None:
    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"} and EXTENSION in bpy.context.preferences.addons, result


def generate(image: str, result_path: str, zero123: str = "", checkpoint: str = "") -> None:
    addon_utils.enable(EXTENSION, default_set=True)  # a failure prints its traceback; the next line then stops
    prefs = bpy.context.preferences.addons[EXTENSION].preferences
    prefs.backend_mode, prefs.device = "IN_PROCESS", "cpu"
    prefs.zero123_dir, prefs.checkpoint_path = zero123, checkpoint  # "": the bundled one
    settings = bpy.context.scene.image_to_3d
    settings.source, settings.filepath = "FILE", image
    # a few sampler steps keep the CPU run short: 2 for tiny test models, 20 for the bundled generator
    settings.resolution, settings.seed, settings.steps, settings.auto_polar = 64, 0, 2 if zero123 else 20, False
    settings.polar = math.radians(70.0)
    before = set(bpy.data.objects)
    status = bpy.ops.imageto3d.generate()
    [obj] = set(bpy.data.objects) - before
    colour = obj.data.color_attributes.active_color
    rgba = [0.0] * (len(obj.data.vertices) * 4)
    colour.data.foreach_get("color", rgba)
    extension = Path(sys.modules[EXTENSION].__file__).parent
    Path(result_path).write_text(json.dumps({
        "status": sorted(status), "object": obj.name, "type": obj.type, "vertices": len(obj.data.vertices),
        "colour": [colour.name, colour.data_type, colour.domain], "rgba": rgba,
        "message": bpy.context.window_manager.image_to_3d.status,
        "extension": str(extension), "backend": sys.modules[f"{EXTENSION}.backend.worker"].__file__,
        "modules": {name: importlib.import_module(name).__file__ for name in WHEEL_MODULES},
        "policy_warnings": addon_utils._extensions_warnings_get().get(EXTENSION, []),
    }))


if __name__ == "__main__":
    {"install": install, "generate": generate}[sys.argv[1]](*sys.argv[2:])
