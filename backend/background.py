"""Object masks for the input image, with no downloaded weights required.

The reference finds the object with rembg and SAM, neither of which can ship with us.
Strategies:

- ``"alpha"``: the image's own alpha channel (a cut-out the user already made);
- ``"rembg"``: the rembg package with a u2net model that is already on disk
  (``$U2NET_HOME/u2net.onnx``, else ``$XDG_DATA_HOME/.u2net/u2net.onnx`` or
  ``~/.u2net/u2net.onnx``, where rembg itself looks). It is loaded through rembg's
  ``u2net_custom`` session, which reads the given file and never downloads;
- ``"border"``: classical segmentation for an object on a plain or smoothly varying
  background: the background colour is fitted to the image border, pixels far from
  it in RGB are the object (hysteresis between a noise floor and Otsu's threshold),
  then morphological clean-up and a one-pixel feathered edge;
- ``"auto"``: alpha when it is meaningful, else rembg when available, else border.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .errors import InputError

STRATEGIES = ("auto", "alpha", "border", "rembg")

MIN_FOREGROUND = 0.001  # fraction of the image: smaller "objects" are noise or an empty image
MAX_FOREGROUND = 0.98  # fraction of the image: more means nothing was separated from a background
MIN_CONTRAST = 0.08  # RGB distance (0..sqrt 3) below which a pixel always counts as background
KEEP_FRACTION = 0.1  # keep components at least this fraction of the largest one
REMBG_FLOOR = 0.05  # rembg's min-max normalised mask is never exactly 0 on the background


def no_foreground(name: str) -> InputError:
    """One wording for every way of finding nothing, so users learn one fix."""
    return InputError(
        f"no foreground object found in {name}: use an image with the object on a plain background, "
        "or one with transparency"
    )


def resolve_strategy(rgba: Image.Image, strategy: str = "auto", *, name: str = "the image") -> str:
    """The concrete strategy ("alpha", "rembg" or "border") that ``strategy`` means for this image."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.max() == 0:
        raise no_foreground(name)
    if strategy != "auto":
        return strategy
    if _alpha_is_meaningful(alpha):
        return "alpha"
    return "rembg" if rembg_model() is not None else "border"


def foreground_alpha(rgba: Image.Image, strategy: str = "auto", *, name: str = "the image") -> np.ndarray:
    """Soft object mask (H, W) float32 in [0, 1] for an RGBA image; ``name`` is used in errors."""
    chosen = resolve_strategy(rgba, strategy, name=name)
    if chosen == "alpha":
        alpha = np.asarray(rgba.getchannel("A"))
        if not _alpha_is_meaningful(alpha):
            raise InputError(
                f"{name} has no transparency that separates an object: use strategy auto or border, "
                "or an image with a transparent background"
            )
        return alpha.astype(np.float32) / 255.0
    rgb = np.asarray(rgba.convert("RGB"), dtype=np.float32) / 255.0
    result = _rembg_alpha(rgba.convert("RGB"), name) if chosen == "rembg" else _border_alpha(rgb)
    coverage = float((result > 0.5).mean())
    if not MIN_FOREGROUND <= coverage <= MAX_FOREGROUND:
        raise no_foreground(name)
    return result


def _alpha_is_meaningful(alpha: np.ndarray) -> bool:
    """Not opaque, not empty, and with an opaque region large enough to be an object."""
    coverage = float((alpha >= 128).mean())
    return MIN_FOREGROUND <= coverage <= MAX_FOREGROUND


# ---------------------------------------------------------------- rembg (optional)


def rembg_model() -> Path | None:
    """The local u2net model when rembg is installed and the file exists; None otherwise."""
    try:
        installed = importlib.util.find_spec("rembg") is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        return None
    home = os.environ.get("U2NET_HOME") or os.path.join(os.environ.get("XDG_DATA_HOME", "~"), ".u2net")
    model = Path(home).expanduser() / "u2net.onnx"
    return model if model.is_file() else None


@functools.lru_cache(maxsize=1)
def _rembg_session(model: Path) -> object:
    """One session per model file: loading u2net takes seconds."""
    rembg = importlib.import_module("rembg")
    return rembg.new_session("u2net_custom", model_path=str(model))


def _rembg_alpha(rgb: Image.Image, name: str) -> np.ndarray:
    model = rembg_model()
    if model is None:
        raise InputError(
            "strategy rembg needs the rembg package and u2net.onnx in $U2NET_HOME or ~/.u2net: "
            "install both, or use strategy border"
        )
    try:
        mask = importlib.import_module("rembg").remove(rgb, session=_rembg_session(model), only_mask=True)
    except Exception as exc:  # a third-party model failing must not surface as a traceback
        raise InputError(f"rembg failed on {name} ({exc}): use strategy border, or reinstall rembg") from None
    soft = np.asarray(mask.convert("L").resize(rgb.size), dtype=np.float32) / 255.0
    soft[soft < REMBG_FLOOR] = 0.0
    core = _clean_mask(soft > 0.5)
    if not core.any():
        return np.zeros_like(soft)
    return soft * ndimage.binary_dilation(core, iterations=2)


# ---------------------------------------------------------------- border strategy


def _border_alpha(rgb: np.ndarray) -> np.ndarray:
    """Object = pixels that differ from a smooth background fitted to the image border."""
    background, noise = _fit_background(rgb)
    distance = np.linalg.norm(rgb - background, axis=-1)
    low = max(MIN_CONTRAST, 1.5 * noise)
    high = max(_otsu_threshold(distance), low)
    # hysteresis: weak pixels count when connected to a strong one, so an object's
    # background-coloured parts survive when Otsu splits its colours instead
    labels, _ = ndimage.label(distance > low)
    strong = np.unique(labels[(distance > high) & (labels > 0)])
    mask = _clean_mask(np.isin(labels, strong) & (labels > 0))
    if not mask.any() or mask.all():
        return mask.astype(np.float32)
    return _feather(mask)


def _border_coordinates(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column of every pixel in a border band, and which side (0..3) it lies on."""
    band = max(2, round(0.02 * min(h, w)))
    side = np.full((h, w), -1, dtype=np.int8)
    side[:, :band] = 0
    side[:, -band:] = 1
    side[:band, :] = 2
    side[-band:, :] = 3
    rows, cols = np.nonzero(side >= 0)
    return rows, cols, side[rows, cols]


def _design(rows: np.ndarray, cols: np.ndarray, h: int, w: int) -> np.ndarray:
    """Quadratic surface terms in normalised coordinates: covers gradients and vignetting."""
    y = rows / max(h - 1, 1) * 2.0 - 1.0
    x = cols / max(w - 1, 1) * 2.0 - 1.0
    return np.stack([np.ones_like(x), x, y, x * y, x * x, y * y], axis=-1)


def _fit_background(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """Background colour per pixel (H, W, 3) and the 99th-percentile border residual.

    Robust to an object touching the border: the fit is iterated on the border pixels
    that agree with it. It falls back to a constant colour when the agreeing pixels do
    not surround the image, as a quadratic fitted to one side extrapolates wildly.
    """
    h, w, _ = rgb.shape
    rows, cols, side = _border_coordinates(h, w)
    colours = rgb[rows, cols].astype(np.float64)
    residual = np.linalg.norm(colours - np.median(colours, axis=0), axis=-1)
    design = _design(rows, cols, h, w)
    coef = None
    for _ in range(4):
        inliers = residual <= max(3.0 * float(np.median(residual)), 0.03)
        surrounded = all((inliers[side == s]).mean() >= 0.1 for s in range(4))
        if not surrounded or inliers.sum() < 4 * design.shape[1]:
            break
        coef, *_ = np.linalg.lstsq(design[inliers], colours[inliers], rcond=None)
        residual = np.linalg.norm(colours - design @ coef, axis=-1)
    inliers = residual <= max(3.0 * float(np.median(residual)), 0.03)
    noise = float(np.percentile(residual[inliers], 99))
    if coef is None:
        return np.median(colours[inliers], axis=0).astype(np.float32), noise
    all_rows, all_cols = np.mgrid[0:h, 0:w]
    surface = _design(all_rows.ravel(), all_cols.ravel(), h, w) @ coef
    return surface.reshape(h, w, 3).astype(np.float32), noise


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the split of the histogram with the largest between-class variance."""
    top = float(values.max())
    if top <= 0.0:
        return 0.0
    hist, edges = np.histogram(values, bins=bins, range=(0.0, top))
    hist = hist.astype(np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (s0 / w0 - (s0[-1] - s0) / w1) ** 2
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _clean_mask(mask: np.ndarray) -> np.ndarray:
    """Drop specks, bridge small gaps, fill holes, keep the main component(s)."""
    radius = max(1, round(min(mask.shape) / 256))
    pad = 2 * radius
    # edge padding keeps an object that touches the image border from being eroded there
    padded = np.pad(mask, pad, mode="edge")
    padded = ndimage.binary_opening(padded, structure=_disk(radius))
    padded = ndimage.binary_closing(padded, structure=_disk(2 * radius))
    mask = ndimage.binary_fill_holes(padded[pad:-pad, pad:-pad])
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    keep = np.nonzero(sizes >= KEEP_FRACTION * sizes.max())[0] + 1
    return np.isin(labels, keep)


def _feather(mask: np.ndarray) -> np.ndarray:
    """Linear ramp across the edge, one pixel each side, so the bounding box barely grows."""
    inside = ndimage.distance_transform_edt(mask) - 0.5
    outside = ndimage.distance_transform_edt(~mask) - 0.5
    signed = np.where(mask, inside, -outside)
    return np.clip(0.5 + signed * 0.5, 0.0, 1.0).astype(np.float32)
