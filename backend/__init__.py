"""Image to 3D backend: One-2-3-45 reconstruction without Blender.

Runs standalone (``python -m backend``) and as a sub-package of the Blender extension,
so every import inside it is relative and nothing here touches ``sys.path`` or ``bpy``.
"""

__version__ = "0.1.0"
