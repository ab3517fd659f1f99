"""The on-disk training set, in One-2-3-45's layout (one2345.md §4.1), and reading it back as training samples.

    ROOT/split.json                {"train": [{"folder_id": "000-000", "uid": NAME}, ...], "val": [...]}
    ROOT/000-000/NAME/view_{i}.png            8 stage-1 (target) views, RGB on white, i = 0..7
    ROOT/000-000/NAME/view_{i}_depth_mm.png   their planar depth, uint16 millimetres, 0 = background
    ROOT/000-000/NAME/view_{k}_{j}_10.png     32 source views: the 4 nearby views (j) of stage-1 view k
    ROOT/000-000/NAME/pose.json               {"intrinsics", "near_far", "polar", "c2ws": {file name: 4x4 OpenGL c2w}}

The reference keeps one global pose file because all its objects share one rig; ours draws each
object's input polar angle, so each object folder has its own ``pose.json`` (a root ``pose.json`` is
used for folders without one, as the released data needs).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cameras import IMAGE_SIZE, INTRINSICS, NEAR_FAR
from ..errors import InputError
from ..frame import ReconstructionFrame
from .samples import NUM_STAGE1, TrainingSample

SPLIT_FILE = "split.json"
POSE_FILE = "pose.json"
FOLDER_ID = "000-000"
SOURCES_PER_VIEW = 4


def target_name(i: int) -> str:
    return f"view_{i}.png"


def depth_name(i: int) -> str:
    return f"view_{i}_depth_mm.png"


def source_name(k: int, j: int) -> str:
    return f"view_{k}_{j}_10.png"


def write_object(folder: Path, polar: float, c2ws: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> Path:
    """One object: ``c2ws`` (40, 4, 4) in rig order (8 stage-1, then 32 sources k-major), ``rgb`` (40, H, W, 3)
    uint8 on white, ``depth`` (8, H, W) planar depth of the stage-1 views in world units. Written beside the
    destination and renamed into place, so an interrupted run never leaves half an object."""
    names = [target_name(i) for i in range(NUM_STAGE1)]
    names += [source_name(k, j) for k in range(NUM_STAGE1) for j in range(SOURCES_PER_VIEW)]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, image in zip(names, rgb):
            Image.fromarray(image).save(tmp / name)
        for i in range(NUM_STAGE1):
            millimetres = np.clip(np.round(depth[i] * 1000.0), 0, 65535).astype(np.uint16)
            Image.fromarray(millimetres).save(tmp / depth_name(i))
        pose = {"intrinsics": INTRINSICS.tolist(), "near_far": list(NEAR_FAR), "polar": polar,
                "c2ws": {name: c2w.tolist() for name, c2w in zip(names, c2ws)}}
        (tmp / POSE_FILE).write_text(json.dumps(pose, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_split(root: Path, names: list[str], val_fraction: float, seed: int = 0) -> dict:
    """A seeded train/val split of the object folders under ``ROOT/000-000``."""
    order = np.random.default_rng(seed).permutation(len(names))
    val_count = int(round(len(names) * val_fraction)) if len(names) > 1 else 0
    entries = [{"folder_id": FOLDER_ID, "uid": names[i]} for i in order]
    split = {"train": sorted(entries[val_count:], key=lambda e: e["uid"]), "val": sorted(entries[:val_count], key=lambda e: e["uid"])}
    (root / SPLIT_FILE).write_text(json.dumps(split, indent=1))
    return split


class RenderedFolderSource:
    """Training samples read from a dataset in this layout (``python -m backend render-dataset`` writes one)."""

    def __init__(self, root: str | Path, subset: str = "train") -> None:
        self.root = Path(root)
        split_path = self.root / SPLIT_FILE
        if not split_path.is_file():
            raise InputError(f"{split_path} is missing: {self.root} is not a training set (make one with "
                             "`python -m backend render-dataset MESH_DIR OUT_DIR`)")
        self.folders = [self.root / e["folder_id"] / e["uid"] for e in json.loads(split_path.read_text())[subset]]
        if not self.folders:
            raise InputError(f"{split_path} lists no {subset} objects")
        self.subset = subset

    def _pose(self, folder: Path) -> dict:
        path = folder / POSE_FILE if (folder / POSE_FILE).is_file() else self.root / POSE_FILE
        return json.loads(path.read_text())

    def sample(self, rng: np.random.Generator, polar_range: tuple[float, float], sdf_points: int, with_stage1: bool) -> TrainingSample:
        """As the reference's loader: the frame is a random stage-1 view, the target another drawn independently."""
        folder = self.folders[rng.integers(len(self.folders))]
        pose = self._pose(folder)

        def read(name: str) -> np.ndarray:
            return np.asarray(Image.open(folder / name).convert("RGB"), np.float32) / 255.0

        stage1 = np.array([pose["c2ws"][target_name(i)] for i in range(NUM_STAGE1)])
        source_names = [source_name(k, j) for k in range(NUM_STAGE1) for j in range(SOURCES_PER_VIEW)]
        sources = np.array([pose["c2ws"][n] for n in source_names])
        intrinsics = np.array(pose["intrinsics"])
        reference, target = rng.integers(NUM_STAGE1, size=2)
        frame = ReconstructionFrame.from_cameras(stage1[reference], sources, intrinsics, tuple(pose["near_far"]), (IMAGE_SIZE, IMAGE_SIZE))
        projections, centres = frame.source_cameras(sources)
        depth = np.asarray(Image.open(folder / depth_name(int(target))), np.float32) / 1000.0

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)

        return TrainingSample(
            seed=int(rng.integers(2**62)),
            images=tensor(np.stack([read(n) for n in source_names])).permute(0, 3, 1, 2).contiguous(),
            projections=tensor(projections), centres=tensor(centres),
            target_rgb=tensor(read(target_name(int(target)))), target_mask=torch.as_tensor(depth > 0),
            target_depth=tensor(depth / frame.radius),
            target_c2w=tensor(np.linalg.inv(frame.normalised_w2c(stage1[target]))), intrinsics=tensor(intrinsics),
            stage1_images=tensor(np.stack([read(target_name(i)) for i in range(NUM_STAGE1)])).permute(0, 3, 1, 2).contiguous()
            if with_stage1 else None,
        )

    def describe(self) -> dict:
        return {"kind": "rendered folder", "folder": str(self.root), "subset": self.subset, "count": len(self.folders)}
