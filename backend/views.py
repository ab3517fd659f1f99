"""The One-2-3-45 view folder: ``stage1_8/{k}.png``, ``stage2_8/{k}_{j}.png`` and ``pose.json``.

Read and written exactly as the reference does, so a folder made by the original
One-2-3-45 reconstructs here unchanged and ours can be fed back to it. The first
``c2ws`` entry is the reference view (a stage-1 image); entries 8..39 are the 32 source
views (stage-2 images) that the reconstruction sees.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .cameras import INTRINSICS, NEAR_FAR, rig_c2ws
from .errors import InputError

POSE_FILE = "pose.json"
STAGE1_DIR = "stage1_8"
STAGE2_DIR = "stage2_8"
NUM_STAGE1 = 8
NUM_SOURCES = 32
GENERATED_KEY = "generated"


@dataclass
class ViewSet:
    """Posed views for one reconstruction: the reference pose and the 32 source images."""

    source_images: np.ndarray  # (32, H, W, 3) float32 in [0, 1], white background
    source_c2ws: np.ndarray  # (32, 4, 4) OpenGL world camera-to-world
    reference_c2w: np.ndarray  # (4, 4) OpenGL world camera-to-world of the reference view
    intrinsics: np.ndarray  # (3, 3)
    near_far: tuple[float, float]
    source_names: list[str]
    generated: bool = False  # made by a view generator (pose.json "generated": true), so silhouettes may disagree

    @property
    def image_size(self) -> tuple[int, int]:
        return self.source_images.shape[1], self.source_images.shape[2]


def rgb_array(image: Image.Image) -> np.ndarray:
    """An opaque picture as float RGB in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_rgb(path: Path) -> np.ndarray:
    """An image as float RGB in [0, 1], alpha composited onto white as the reference loader does."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
                return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
            return rgb_array(img)
    except FileNotFoundError:
        raise InputError(f"missing view image {path}: a One-2-3-45 folder needs every file listed in pose.json") from None
    except OSError as exc:
        raise InputError(f"cannot read view image {path} ({exc}): re-export or regenerate it") from None


def read_pose_file(folder: Path) -> dict:
    path = folder / POSE_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} not found: VIEWS_DIR must be a One-2-3-45 folder with pose.json, stage1_8/ and stage2_8/") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}): regenerate the views") from None
    missing = [k for k in ("intrinsics", "near_far", "c2ws") if k not in meta]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}: it must hold intrinsics, near_far and c2ws")
    if len(meta["c2ws"]) != NUM_STAGE1 + NUM_SOURCES:
        raise InputError(f"{path} lists {len(meta['c2ws'])} cameras; One-2-3-45 folders list 8 stage-1 + 32 stage-2 views")
    return meta


def load_view_folder(folder: str | os.PathLike) -> ViewSet:
    """Load a One-2-3-45 view folder; the first pose is the reference, poses 8..39 are the sources."""
    folder = Path(folder)
    meta = read_pose_file(folder)
    names = list(meta["c2ws"].keys())
    try:
        c2ws = np.array([np.asarray(meta["c2ws"][n], dtype=np.float64).reshape(4, 4) for n in names])
        intrinsics = np.asarray(meta["intrinsics"], dtype=np.float64).reshape(3, 3)
        near, far = (float(x) for x in meta["near_far"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{folder / POSE_FILE} has malformed camera entries ({exc})") from None
    generated = meta.get(GENERATED_KEY, False)
    if not isinstance(generated, bool):
        raise InputError(f'{folder / POSE_FILE} has "{GENERATED_KEY}": {generated!r}; it must be true or false')
    source_names = names[NUM_STAGE1:]
    images = np.stack([load_rgb(folder / STAGE2_DIR / n) for n in source_names])
    if len({im.shape for im in images}) != 1:
        raise InputError(f"source views in {folder / STAGE2_DIR} differ in size; all must be 256x256")
    return ViewSet(images.astype(np.float32), c2ws[NUM_STAGE1:], c2ws[0], intrinsics, (near, far), source_names, generated)


def rig_view_set(polar: float, images: dict[str, Image.Image], generated: bool = False) -> ViewSet:
    """The ViewSet that ``write_view_folder`` then ``load_view_folder`` would give, without the disk round trip.

    ``images`` must hold all 40 rig views as 8-bit RGB (as generated views are; alpha would not be composited onto
    white here): PNG is lossless, so the arrays are the very ones the folder would hold."""
    c2ws = rig_c2ws(polar)
    if set(images) != set(c2ws):
        raise ValueError(f"a rig view set needs exactly the {len(c2ws)} rig views for polar {polar}")
    names = list(c2ws)
    sources = np.stack([rgb_array(images[n]) for n in names[NUM_STAGE1:]])
    poses = np.array([c2ws[n] for n in names])
    return ViewSet(sources, poses[NUM_STAGE1:], poses[0], INTRINSICS.astype(np.float64), NEAR_FAR, names[NUM_STAGE1:], generated)


def write_view_folder(folder: str | os.PathLike, polar: float, images: dict[str, Image.Image], generated: bool = False) -> Path:
    """Write a One-2-3-45 folder: ``images`` maps pose.json names ("0.png", "0_0.png", ...) to pictures.

    ``generated`` marks views made by a view generator in pose.json (an extra key the reference ignores)."""
    folder = Path(folder)
    c2ws = rig_c2ws(polar)
    unknown = set(images) - set(c2ws)
    if unknown:
        raise ValueError(f"images not in the rig for polar {polar}: {sorted(unknown)}")
    (folder / STAGE1_DIR).mkdir(parents=True, exist_ok=True)
    (folder / STAGE2_DIR).mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        sub = STAGE1_DIR if "_" not in name else STAGE2_DIR
        img.save(folder / sub / name)
    pose = {
        "intrinsics": INTRINSICS.tolist(),
        "near_far": list(NEAR_FAR),
        "c2ws": {name: c2w.tolist() for name, c2w in c2ws.items()},
    }
    if generated:
        pose[GENERATED_KEY] = True
    (folder / POSE_FILE).write_text(json.dumps(pose, indent=4))
    return folder
