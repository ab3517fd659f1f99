"""Typed architecture config, saved beside our weights so a checkpoint describes itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ARCHITECTURE = "one2345-lod0"


@dataclass(frozen=True)
class ReconstructorConfig:
    """Sizes of the One-2-3-45 lod0 network; the defaults are the released model's."""

    volume_resolution: int = 96
    pyramid_channels: int = 56  # 32 + 16 + 8 fused FeatureNet channels
    compressed_channels: int = 16  # per-view channels entering the variance/mean volume
    volume_channels: int = 16  # latent channels out of the sparse 3D CNN
    sdf_hidden: int = 128
    encoding_frequencies: int = 6
    min_visible_views: int = 1  # a voxel is active when seen by MORE than this many views
    architecture: str = ARCHITECTURE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ReconstructorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        config = cls(**data)
        if config.architecture != ARCHITECTURE:
            raise ValueError(f"architecture {config.architecture!r} is not {ARCHITECTURE!r}")
        return config
