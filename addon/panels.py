"""The 3D View sidebar tab: source, settings, Generate / Cancel with progress, and batch conversion."""

import bpy

from .operators import IMAGETO3D_OT_batch, IMAGETO3D_OT_cancel, IMAGETO3D_OT_generate, editor_image
from .preferences import get_prefs


class IMAGETO3D_PT_main(bpy.types.Panel):
    """Turn the chosen image, or a One-2-3-45 view folder, into a vertex-coloured mesh at the 3D cursor."""

    bl_label = "Image to 3D"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Image to 3D"

    def draw(self, context: bpy.types.Context) -> None:
        settings, state, prefs = context.scene.image_to_3d, context.window_manager.image_to_3d, get_prefs(context)
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False

        layout.prop(settings, "source")
        if settings.source == "EDITOR":
            image = editor_image(context)
            layout.label(text=image.name if image else "Open an image in an Image Editor", icon="IMAGE" if image else "ERROR")
        elif settings.source == "DATABLOCK":
            layout.prop(settings, "image")
        elif settings.source == "FILE":
            layout.prop(settings, "filepath")
        else:
            layout.prop(settings, "views_dir")

        col = layout.column()
        col.prop(prefs, "checkpoint")
        col.prop(settings, "resolution")
        if settings.source != "VIEWS":
            col.prop(settings, "auto_polar")
            row = col.row()
            row.active = not settings.auto_polar
            row.prop(settings, "polar")
            col.prop(settings, "steps")
        col.prop(settings, "seed")
        col.prop(prefs, "device")

        if state.running:
            layout.progress(factor=state.progress, type="BAR", text=state.stage or "Starting")
            layout.operator(IMAGETO3D_OT_cancel.bl_idname, icon="CANCEL")
        else:
            layout.operator(IMAGETO3D_OT_generate.bl_idname, icon="MESH_MONKEY")
        if state.status:
            layout.label(text=state.status)


class IMAGETO3D_PT_batch(bpy.types.Panel):
    """Convert a folder of images: one object and one GLB each."""

    bl_label = "Batch"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Image to 3D"
    bl_parent_id = "IMAGETO3D_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.image_to_3d
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        layout.prop(settings, "batch_input_dir")
        layout.prop(settings, "batch_output_dir")
        layout.prop(settings, "batch_overwrite")
        op = layout.operator(IMAGETO3D_OT_batch.bl_idname, icon="FILE_FOLDER")
        op.input_dir, op.output_dir, op.overwrite = settings.batch_input_dir, settings.batch_output_dir, settings.batch_overwrite


classes = (IMAGETO3D_PT_main, IMAGETO3D_PT_batch)
