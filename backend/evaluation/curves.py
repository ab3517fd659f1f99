"""Training curves as a PNG drawn with Pillow (no plotting library needed), from a run's ``log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PANELS = (("total", "total loss"), ("color", "colour L1"), ("sdf", "SDF L1"), ("psnr", "target PSNR (dB)"))
PANEL_W, PANEL_H, MARGIN = 420, 260, 44


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(np.pad(values, (window // 2, window - 1 - window // 2), mode="edge"), kernel, mode="valid")


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], steps: np.ndarray, values: np.ndarray, title: str) -> None:
    x0, y0 = origin
    left, top, right, bottom = x0 + MARGIN, y0 + 24, x0 + PANEL_W - 12, y0 + PANEL_H - 28
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    draw.text((left, y0 + 6), title, fill=(0, 0, 0))
    lo, hi = float(np.min(values)), float(np.max(values))
    hi = hi if hi > lo else lo + 1.0
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * (bottom - top)
        draw.text((x0 + 2, y - 6), f"{lo + frac * (hi - lo):.3g}", fill=(90, 90, 90))
    draw.text((left, bottom + 6), f"{int(steps[0])}", fill=(90, 90, 90))
    draw.text((right - 40, bottom + 6), f"{int(steps[-1])}", fill=(90, 90, 90))
    span = max(float(steps[-1] - steps[0]), 1.0)
    xs = left + (steps - steps[0]) / span * (right - left)
    raw = bottom - (values - lo) / (hi - lo) * (bottom - top)
    smooth = bottom - (_smooth(values, max(len(values) // 30, 1)) - lo) / (hi - lo) * (bottom - top)
    draw.line(list(zip(xs, raw)), fill=(190, 210, 240), width=1)
    draw.line(list(zip(xs, smooth)), fill=(20, 80, 200), width=2)


def plot_training_curves(log_path: str | Path, out_path: str | Path) -> Path:
    """2×2 panels (total, colour, SDF loss, PSNR) over steps; light = raw, dark = moving average."""
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{log_path} holds no log records")
    steps = np.array([r["step"] for r in records], dtype=float)
    image = Image.new("RGB", (2 * PANEL_W, 2 * PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    for i, (key, title) in enumerate(PANELS):
        values = np.array([r.get(key, np.nan) for r in records], dtype=float)
        keep = np.isfinite(values)
        if keep.sum() >= 2:
            _panel(draw, ((i % 2) * PANEL_W, (i // 2) * PANEL_H), steps[keep], values[keep], title)
    out_path = Path(out_path)
    image.save(out_path)
    return out_path
