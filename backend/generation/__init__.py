"""Novel-view generation (the frozen Zero123 stage of One-2-3-45).

Only the light ``ViewGenerator`` protocol is exported here, so that importing the package does not pull in
diffusers and transformers; import ``.zero123`` (the generator) and ``.convert`` (ckpt conversion) explicitly.
"""

from .base import ViewGenerator

__all__ = ["ViewGenerator"]
