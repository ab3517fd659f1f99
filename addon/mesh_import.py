"""Backend mesh arrays -> a Blender object with a vertex-colour attribute and a material that shows it."""

import bpy
import numpy as np

COLOR_ATTRIBUTE = "Color"
MATERIAL_NAME = "Image to 3D vertex colour"


def _build_mesh(name: str, vertices: np.ndarray, faces: np.ndarray) -> bpy.types.Mesh:
    """Triangle mesh filled with ``foreach_set`` (no Python loop over the elements)."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
    faces = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1, 3)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.validate()
    mesh.update()
    mesh.shade_smooth()
    return mesh


def _add_colors(mesh: bpy.types.Mesh, colors: np.ndarray) -> None:
    """8-bit sRGB per-vertex colours -> a FLOAT_COLOR POINT attribute, made the active and render colour.

    Values are written through the ``color_srgb`` accessor, so Blender converts them from sRGB to the
    scene-linear floats that FLOAT_COLOR attributes store (sRGB 128 -> linear 0.216).
    """
    attribute = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    rgba = np.ones((len(mesh.vertices), 4), dtype=np.float32)
    rgba[:, :3] = np.asarray(colors, dtype=np.float32).reshape(-1, 3) / 255.0
    attribute.data.foreach_set("color_srgb", rgba.ravel())
    mesh.color_attributes.active_color = attribute
    mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index


def vertex_colour_material() -> bpy.types.Material:
    """The shared material: a Color Attribute node reading "Color" into the Principled BSDF's Base Color."""
    material = bpy.data.materials.get(MATERIAL_NAME)
    if material is not None:
        return material
    material = bpy.data.materials.new(MATERIAL_NAME)
    if material.node_tree is None:  # Blender 4.x; 5.0 materials come with a node tree
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        output = next(n for n in nodes if n.bl_idname == "ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    color = nodes.new("ShaderNodeVertexColor")
    color.layer_name = COLOR_ATTRIBUTE
    color.location = (bsdf.location.x - 300.0, bsdf.location.y)
    links.new(color.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def create_object(name: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, location: tuple[float, float, float]) -> bpy.types.Object:
    """A z-up vertex-coloured mesh object at ``location``, linked to the active collection."""
    mesh = _build_mesh(name, vertices, faces)
    _add_colors(mesh, colors)
    mesh.materials.append(vertex_colour_material())
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    bpy.context.view_layer.active_layer_collection.collection.objects.link(obj)
    return obj


def show_colour_attributes(screen: bpy.types.Screen | None) -> None:
    """Let the solid-shaded 3D Views of ``screen`` display the active colour attribute.

    Only views still on the default "Material" colouring are switched, to "Attribute" (``VERTEX``).
    """
    if screen is None:
        return
    for area in screen.areas:
        if area.type != "VIEW_3D":
            continue
        shading = area.spaces.active.shading
        if shading.type == "SOLID" and shading.color_type == "MATERIAL":
            shading.color_type = "VERTEX"
