"""Per-scene settings (``Scene.image_to_3d``) and the state of the current run (``WindowManager.image_to_3d``).

The run state lives on the window manager: it is neither saved in .blend files nor restored by undo,
so a file saved mid-run or an undo step never brings back a run that no longer exists.
"""

import math

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

SOURCES = (
    ("EDITOR", "Image Editor", "The image shown in an Image Editor", "IMAGE", 0),
    ("DATABLOCK", "Image", "An image datablock of this file", "IMAGE_DATA", 1),
    ("FILE", "File", "An image file on disk", "FILE_IMAGE", 2),
    ("VIEWS", "Views Folder", "Reconstruct from a One-2-3-45 view folder (pose.json, stage1_8/, stage2_8/)", "FILE_FOLDER", 3),
)


class IMAGETO3D_PG_settings(bpy.types.PropertyGroup):
    """What to turn into a mesh and how."""

    source: EnumProperty(name="Source", items=SOURCES, default="EDITOR")
    image: PointerProperty(name="Image", type=bpy.types.Image)
    filepath: StringProperty(name="Image File", subtype="FILE_PATH")
    views_dir: StringProperty(name="Views Folder", subtype="DIR_PATH",
                              description="A One-2-3-45 view folder: pose.json, stage1_8/ and stage2_8/")
    resolution: IntProperty(name="Resolution", default=256, min=16, max=1024, soft_min=64, soft_max=512,
                            description="Marching-cubes grid size per axis: finer meshes take longer")
    auto_polar: BoolProperty(name="Auto Polar", default=True,
                             description="Estimate the camera's polar angle from the generated views")
    polar: FloatProperty(name="Polar", subtype="ANGLE", default=math.radians(90.0), min=math.radians(1.0), max=math.radians(179.0),
                         description="Angle between the up axis and the input camera's direction (90° = level)")
    seed: IntProperty(name="Seed", default=0, min=0)
    steps: IntProperty(name="Steps", default=0, min=0, max=500, soft_max=200,
                       description="Diffusion steps of the view generator (0: One-2-3-45's 75 and 50)")
    batch_input_dir: StringProperty(name="Input Folder", subtype="DIR_PATH", description="Folder of images to convert")
    batch_output_dir: StringProperty(name="Output Folder", subtype="DIR_PATH", description="Folder for one GLB per image")
    batch_overwrite: BoolProperty(name="Overwrite", default=False, description="Replace GLB files that already exist")


class IMAGETO3D_PG_run_state(bpy.types.PropertyGroup):
    """What the sidebar shows about the run in progress or the last one."""

    status: StringProperty(name="Status")
    stage: StringProperty(name="Stage")
    progress: FloatProperty(name="Progress", subtype="FACTOR", min=0.0, max=1.0)
    running: BoolProperty(name="Running")


classes = (IMAGETO3D_PG_settings, IMAGETO3D_PG_run_state)


def attach() -> None:
    """Add ``Scene.image_to_3d`` and ``WindowManager.image_to_3d`` (after the classes are registered)."""
    bpy.types.Scene.image_to_3d = PointerProperty(type=IMAGETO3D_PG_settings)
    bpy.types.WindowManager.image_to_3d = PointerProperty(type=IMAGETO3D_PG_run_state)


def detach() -> None:
    """Remove both pointers (before the classes are unregistered)."""
    del bpy.types.WindowManager.image_to_3d
    del bpy.types.Scene.image_to_3d
