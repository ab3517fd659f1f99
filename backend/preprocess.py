"""The input picture, from any file a user might pick to the 256x256 RGB image Zero123 sees.

Follows the reference (One-2-3-45 ``run.py: preprocess``): downscale to at most 512 px,
find the object, frame it so its longer side fills 75 % of a square, resize to 256 and
composite onto white. Only the object mask differs: see ``background.py``.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .background import foreground_alpha, no_foreground, resolve_strategy
from .errors import InputError
from .exr import exr_size, is_exr, read_exr

MAX_PIXELS = 100_000_000  # refuse larger images before decoding: a crafted header can ask for terabytes
MAX_SIDE = 2048  # loaded images are downscaled to this; nothing downstream needs more
MIN_SIDE = 16  # smaller images cannot show an object
WORK_SIDE = 512  # the reference thumbnails to this before segmentation
OUTPUT_SIDE = 256
OBJECT_FRACTION = 0.75  # the object's longer side as a fraction of the output frame
MAX_EXR_PIXELS = 25_000_000  # OpenEXR decodes to 16 bytes a pixel before it can be reduced
REDUCIBLE_MODES = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "I", "F")
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


@dataclass
class PreparedInput:
    """The network input plus what produced it, for display and logs."""

    image: Image.Image  # RGB, 256x256, white background
    cutout: Image.Image  # RGBA at the working size (<= 512), alpha = the object mask used
    strategy: str  # "alpha", "rembg" or "border"


def load_image(path: str | os.PathLike) -> Image.Image:
    """Any image file Pillow reads, or OpenEXR, as 8-bit RGBA, upright, at most 2048 px on the long side."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path} is empty (0 bytes): re-export or re-download the image")
        if is_exr(path):
            _check_size(exr_size(path), str(path), MAX_EXR_PIXELS)
            return _normalise(read_exr(path, MAX_SIDE), str(path))
        with warnings.catch_warnings():
            # the size is checked below against MAX_PIXELS; Pillow's own error still applies beyond that
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(img.size, str(path))
                img.draft(None, _fit_within(img.size, MAX_SIDE))  # JPEG decodes at 1/2..1/8 scale
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
                small = _reduced(img)
                if small is None:
                    return _normalise(img, str(path))
                img.close()  # frees the full-size decode before the RGBA copy is made
            return _normalise(small, str(path))
    except FileNotFoundError:
        raise InputError(f"{path} not found: check the image path") from None
    except Image.DecompressionBombError:
        raise InputError(f"{path} is too large: use an image under {MAX_PIXELS // 1_000_000} megapixels") from None
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image that can be read (corrupt or unsupported format): save it as PNG or JPEG") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder: pass an image file") from None
    except PermissionError:
        raise InputError(f"{path} cannot be opened (permission denied): check the file's permissions") from None
    except DECODE_ERRORS as exc:
        raise InputError(f"cannot decode {path} ({exc}): the file is truncated or corrupt; re-export it") from None


def recentre(rgba: Image.Image) -> Image.Image:
    """The reference's framing: object's longer side = 75 % of a square, 256x256 RGB on white."""
    arr = np.asarray(rgba.convert("RGBA"))
    rows, cols = np.nonzero(arr[..., 3] > 0)
    if rows.size == 0:
        raise no_foreground("the image")
    y, x = rows.min(), cols.min()
    h, w = rows.max() - y + 1, cols.max() - x + 1
    side = int(max(w, h) / OBJECT_FRACTION)
    canvas = np.zeros((side, side, 4), dtype=np.uint8)
    top, left = side // 2 - h // 2, side // 2 - w // 2
    canvas[top : top + h, left : left + w] = arr[y : y + h, x : x + w]
    small = Image.fromarray(canvas).resize((OUTPUT_SIDE, OUTPUT_SIDE), Image.Resampling.LANCZOS)
    rgba_f = np.asarray(small, dtype=np.float64) / 255.0
    alpha = rgba_f[..., 3:]
    rgb = rgba_f[..., :3] * alpha + (1.0 - alpha)
    return Image.fromarray((rgb * 255.0).astype(np.uint8))  # truncation, as the reference


def prepare(source: str | os.PathLike | Image.Image, strategy: str = "auto") -> PreparedInput:
    """Load (or take) an image, find the object, and frame it as the reference does."""
    if isinstance(source, Image.Image):
        name = "the image"
        image = _normalise(ImageOps.exif_transpose(source), name)
    else:
        name = str(source)
        image = load_image(source)
    work = image.copy()
    work.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.LANCZOS)
    chosen = resolve_strategy(work, strategy, name=name)
    alpha = foreground_alpha(work, chosen, name=name)
    cutout = work.copy()
    cutout.putalpha(Image.fromarray(np.round(alpha * 255.0).astype(np.uint8)))
    return PreparedInput(recentre(cutout), cutout, chosen)


def prepare_input(source: str | os.PathLike | Image.Image, strategy: str = "auto") -> Image.Image:
    """The 256x256 RGB white-background image the view generator is conditioned on."""
    return prepare(source, strategy).image


def _check_size(size: tuple[int, int], name: str, limit: int = MAX_PIXELS) -> None:
    w, h = size
    if w * h > limit:
        raise InputError(f"{name} is too large ({w}x{h}): use an image under {limit // 1_000_000} megapixels")
    if min(w, h) < MIN_SIDE:
        raise InputError(f"{name} is only {w}x{h} pixels: use an image at least {MIN_SIDE}x{MIN_SIDE}")


def _fit_within(size: tuple[int, int], limit: int) -> tuple[int, int]:
    """``size`` scaled down (never up) so its longer side is at most ``limit``."""
    w, h = size
    scale = min(1.0, limit / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _reduced(img: Image.Image) -> Image.Image | None:
    """An integer box-filter reduction, in the decoded mode, of an image at least twice MAX_SIDE; else None.

    Cheaper in memory than converting the full-size decode to RGBA first. Palette and 16-bit modes
    cannot be averaged this way and are left to ``_normalise``.
    """
    factor = max(img.size) // MAX_SIDE
    return img.reduce(factor) if factor >= 2 and img.mode in REDUCIBLE_MODES else None


def _normalise(img: Image.Image, name: str) -> Image.Image:
    """8-bit RGBA at most MAX_SIDE px; high bit depths are rescaled, not clipped."""
    _check_size(img.size, name)
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        raw = np.asarray(img).astype(np.float32)
        grey = Image.fromarray(np.round(np.clip(raw, 0, 65535) / 257.0).astype(np.uint8))
        rgba = grey.convert("RGBA")
        key = img.info.get("transparency")
        if isinstance(key, int):  # 16-bit PNG tRNS: one grey value means transparent
            rgba.putalpha(Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8)))
    elif mode == "F":
        raw = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        rgba = Image.fromarray(np.round(np.clip(raw, 0.0, 1.0) * 255.0).astype(np.uint8)).convert("RGBA")
    else:
        try:
            rgba = img.convert("RGBA")
        except ValueError:
            raise InputError(f"{name} uses colour mode {mode}, which cannot be converted: save it as RGB") from None
    rgba.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return rgba
