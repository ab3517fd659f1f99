"""Image to 3D: one picture -> a vertex-coloured mesh (One-2-3-45), from the 3D View sidebar.

The add-on never imports torch: the backend runs in its own thread or process (see ``client.py``).
"""

import bpy

from . import operators, panels, preferences, properties

classes = (*properties.classes, *preferences.classes, *operators.classes, *panels.classes)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register_classes()
    properties.attach()


def unregister() -> None:
    operators.stop()
    preferences.close_client()
    properties.detach()
    _unregister_classes()
