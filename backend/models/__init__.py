"""The trainable One-2-3-45 reconstruction network (the "lod0" level of SparseNeuS)."""

from .config import ReconstructorConfig
from .reconstructor import ConditionalVolume, One2345Reconstructor, VolumeField

__all__ = ["ConditionalVolume", "One2345Reconstructor", "ReconstructorConfig", "VolumeField"]
