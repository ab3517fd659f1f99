"""Real broken and awkward image files, written to disk for the preprocessing, command-line and add-on tests."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# file name -> what the one-line error must say (besides the file's name)
BAD_IMAGES = {
    "zero bytes.png": "is empty (0 bytes)",
    "half a photo.png": "the file is truncated or corrupt",
    "noise ü.jpg": "is not an image that can be read",
    "bomb.png": "is too large",
    "one pixel.png": "is only 1x1 pixels",
    "all clear.png": "no foreground object found",
    "blank.png": "no foreground object found",
    "cut render.exr": "is an OpenEXR file OpenCV cannot decode",
}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring a huge image, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")


def write_exr(path: Path, rgba: np.ndarray, half: bool = False) -> None:
    """A real OpenEXR file (RGBA float, as renderers write it) through OpenCV's encoder."""
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    import cv2

    params = [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_HALF] if half else []
    encoded = cv2.imencode(".exr", np.ascontiguousarray(rgba[..., [2, 1, 0, 3]], np.float32), params)[1]
    path.write_bytes(encoded.tobytes())


def object_photo(size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """An RGB picture of a red disc on white: something every loader must accept."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    disc = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 3) ** 2
    rgb = np.full((h, w, 3), 255, np.uint8)
    rgb[disc] = (200, 40, 40)
    return rgb


def write_bad_images(folder: Path) -> dict[Path, str]:
    """Every file of ``BAD_IMAGES`` in ``folder``, as path -> the expected part of its error line."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.png"
    Image.fromarray(object_photo()).save(good)
    data = good.read_bytes()
    good.unlink()
    (folder / "zero bytes.png").write_bytes(b"")
    (folder / "half a photo.png").write_bytes(data[: len(data) // 2])
    (folder / "noise ü.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "bomb.png").write_bytes(bomb_png(30000, 30000))
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "one pixel.png")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(folder / "all clear.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(folder / "blank.png")
    exr = folder / "cut render.exr"
    write_exr(exr, np.random.default_rng(0).random((64, 64, 4), np.float32))
    exr.write_bytes(exr.read_bytes()[:2000])
    return {folder / name: expected for name, expected in BAD_IMAGES.items()}
