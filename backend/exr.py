"""OpenEXR input: float, scene-linear, premultiplied renders turned into the 8-bit sRGB RGBA the rest reads.

Pillow cannot read OpenEXR; OpenCV can, once ``OPENCV_IO_ENABLE_OPENEXR`` is set (OpenCV reads it at its
first EXR decode, so setting it here works even after ``cv2`` was imported). The header is parsed first,
so a file that declares a huge image is refused before anything is decoded.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError

MAGIC = b"\x76\x2f\x31\x01"
HEADER_LIMIT = 1 << 16  # bytes read to find the data window; real headers are a few hundred bytes
SILENT = 0  # OpenCV's LOG_LEVEL_SILENT
ALPHA_FLOOR = 1.0 / 1024.0  # below this coverage a pixel is transparent and its colour is meaningless


def is_exr(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def exr_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header's ``dataWindow`` attribute, without decoding any pixels."""
    with open(path, "rb") as f:
        header = f.read(HEADER_LIMIT)
    try:
        pos = 8  # magic number and version field
        while True:
            name_end = header.index(b"\0", pos)
            if name_end == pos:
                break  # an empty name ends the header
            type_end = header.index(b"\0", name_end + 1)
            (size,) = struct.unpack_from("<i", header, type_end + 1)
            value = type_end + 5
            if header[pos:name_end] == b"dataWindow":
                x0, y0, x1, y1 = struct.unpack_from("<4i", header, value)
                if x1 >= x0 and y1 >= y0:
                    return x1 - x0 + 1, y1 - y0 + 1
                break
            pos = value + size
    except (ValueError, struct.error):
        pass
    raise InputError(f"{path} has a truncated or corrupt OpenEXR header: re-render or re-export it")


def read_exr(path: Path, max_side: int) -> Image.Image:
    """8-bit sRGB RGBA with straight alpha, at most ``max_side`` px: area-averaged while still linear and premultiplied."""
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    try:
        import cv2
    except ImportError:
        raise InputError(f"{path} is OpenEXR, which needs OpenCV (pip install opencv-python-headless): "
                         "install it, or save the image as 16-bit PNG or TIFF") from None
    level = cv2.getLogLevel()
    cv2.setLogLevel(SILENT)  # a failed decode is reported below, as one line
    try:
        # imdecode of the bytes, not imread, so paths with any characters work on every platform
        data = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        data = None
    finally:
        cv2.setLogLevel(level)
    if data is None or data.dtype != np.float32:
        raise InputError(f"{path} is an OpenEXR file OpenCV cannot decode (truncated, corrupt, or a deep or multi-part file): "
                         "save it as a 16-bit PNG or TIFF")
    height, width = data.shape[:2]
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        data = cv2.resize(data, size, interpolation=cv2.INTER_AREA)
    data = np.nan_to_num(data.reshape(data.shape[0], data.shape[1], -1), nan=0.0, posinf=1.0, neginf=0.0)
    channels = data.shape[2]
    rgb = data[..., :1].repeat(3, axis=2) if channels < 3 else data[..., 2::-1]  # OpenCV gives BGR(A)
    alpha = np.clip(data[..., -1], 0.0, 1.0) if channels in (2, 4) else np.ones(data.shape[:2], np.float32)
    straight = np.where(alpha[..., None] > ALPHA_FLOOR, rgb / np.maximum(alpha, ALPHA_FLOOR)[..., None], 0.0)
    rgba = np.concatenate([_linear_to_srgb(straight), alpha[..., None]], axis=2)
    return Image.fromarray(np.round(rgba * 255.0).astype(np.uint8), "RGBA")


def _linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """The sRGB transfer function on [0, 1] (values above 1 clip: no tone mapping)."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)
