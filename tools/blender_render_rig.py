"""Render one mesh at a list of cameras with Blender's Cycles; run by Blender's Python, outside the backend.

    python tools/blender_render_rig.py JOB.json                          (Python with the ``bpy`` module)
    blender -b --factory-startup --python tools/blender_render_rig.py -- JOB.json

It lives outside ``backend/`` because the backend never imports ``bpy``: ``backend.training.render_dataset``
writes JOB.json and runs this file in a separate process. JOB.json: ``mesh`` (a GLB in glTF's y-up axes), ``size`` (pixels), ``focal`` (pixels),
``samples`` (Cycles samples) and ``views``: a list of {``c2w``: 4x4 OpenGL camera-to-world in the z-up
world, ``path``: the RGBA PNG to write}. Lighting is a uniform white environment, so colours read as
they are (as in the rasterizer's renders) while Cycles adds soft occlusion.
"""

import json
import sys

import bpy
from mathutils import Matrix


def render(job: dict) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = int(job["samples"])
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = int(job["size"])
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"  # plain sRGB, no filmic tone curve

    world = bpy.data.worlds.new("white")
    world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    background.inputs["Strength"].default_value = 1.0
    scene.world = world

    bpy.ops.import_scene.gltf(filepath=job["mesh"])  # glTF's y-up becomes Blender's z-up, our world's axes
    for obj in scene.objects:  # untextured meshes carry their colours per vertex: shade with them
        textured = any(node.type == "TEX_IMAGE" for material in obj.data.materials if material and material.node_tree
                       for node in material.node_tree.nodes) if obj.type == "MESH" else True
        if not textured and obj.data.color_attributes:
            material = bpy.data.materials.new("vertex colours")
            material.use_nodes = True
            colour = material.node_tree.nodes.new("ShaderNodeVertexColor")
            colour.layer_name = obj.data.color_attributes[0].name
            material.node_tree.links.new(colour.outputs["Color"], material.node_tree.nodes["Principled BSDF"].inputs["Base Color"])
            obj.data.materials.clear()
            obj.data.materials.append(material)
    for material in bpy.data.materials:  # matte, so the environment does not tint the colours by reflection
        principled = material.node_tree.nodes.get("Principled BSDF") if material.node_tree else None
        if principled is not None:
            principled.inputs["Metallic"].default_value = 0.0
            principled.inputs["Roughness"].default_value = 1.0

    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.data.sensor_fit = "HORIZONTAL"
    camera.data.sensor_width = 32.0
    camera.data.lens = float(job["focal"]) / float(job["size"]) * 32.0
    camera.data.clip_start, camera.data.clip_end = 0.01, 100.0
    for view in job["views"]:
        camera.matrix_world = Matrix(view["c2w"])
        scene.render.filepath = view["path"]
        bpy.ops.render.render(write_still=True)


if __name__ == "__main__":
    arguments = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    with open(arguments[0]) as handle:
        render(json.load(handle))
