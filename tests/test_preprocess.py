"""Input image loading, object masks and the reference's 256x256 framing, on real files written to disk."""

from __future__ import annotations

import importlib.machinery
import struct
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend import background
from backend.background import foreground_alpha, resolve_strategy
from backend.errors import InputError
from backend.preprocess import load_image, prepare, prepare_input, recentre

from .bad_images import bomb_png, write_bad_images, write_exr

REPO = Path(__file__).resolve().parents[1]
SIZE = (400, 300)  # (width, height) of the synthetic scenes


@pytest.fixture(autouse=True)
def no_local_rembg(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep "auto" deterministic on machines that happen to have rembg and a u2net model."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path_factory.mktemp("no_u2net")))


def scene_mask(size: tuple[int, int] = SIZE) -> np.ndarray:
    """A body with a handle, drawn at 4x and reduced so its edge is anti-aliased like a photo."""
    w, h = size
    big = Image.new("L", (4 * w, 4 * h), 0)
    draw = ImageDraw.Draw(big)
    draw.ellipse([4 * 120, 4 * 70, 4 * 260, 4 * 250], fill=255)
    draw.rectangle([4 * 250, 4 * 130, 4 * 320, 4 * 160], fill=255)
    return np.asarray(big.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255.0


def paint_object(background_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Composite a multi-coloured object (with a near-white stripe inside) onto a background."""
    h, w, _ = background_rgb.shape
    coverage = scene_mask((w, h))
    colour = np.zeros((h, w, 3), dtype=np.float32)
    colour[...] = (200, 40, 40)
    colour[:, 240:] = (30, 40, 120)  # the handle and the body's right edge
    colour[150:170, 150:230] = (236, 236, 228)  # a label almost the colour of a white background
    out = colour * coverage[..., None] + background_rgb * (1.0 - coverage[..., None])
    return np.clip(np.round(out), 0, 255).astype(np.uint8), coverage > 0.5


def plain(colour: tuple[int, int, int]) -> np.ndarray:
    h, w = SIZE[1], SIZE[0]
    return np.broadcast_to(np.asarray(colour, dtype=np.float32), (h, w, 3)).copy()


def gradient() -> np.ndarray:
    h, w = SIZE[1], SIZE[0]
    t = (np.linspace(0, 1, w)[None, :] * 0.6 + np.linspace(0, 1, h)[:, None] * 0.4)[..., None]
    start, end = np.array([160, 185, 220.0]), np.array([235, 240, 250.0])
    noise = np.random.default_rng(0).normal(0.0, 1.5, (h, w, 3))
    return (start + (end - start) * t + noise).astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def object_box(rgb: Image.Image, level: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inclusive of pixels darker than ``level``: the edge at half contrast."""
    rows, cols = np.nonzero(np.asarray(rgb).mean(axis=-1) < level)
    return cols.min(), rows.min(), cols.max(), rows.max()


def check_output(img: Image.Image) -> None:
    assert img.mode == "RGB" and img.size == (256, 256)
    arr = np.asarray(img)
    assert (arr[:8, :8] == 255).all() and (arr[-8:, -8:] == 255).all()  # white background
    assert (arr[120:136, 120:136] < 250).any()  # the object is in the middle


# ---------------------------------------------------------------- masks


def test_transparent_png_uses_its_alpha(tmp_path: Path) -> None:
    rgb, mask = paint_object(plain((0, 0, 0)))
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    path = tmp_path / "cutout.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    result = prepare(path)
    assert result.strategy == "alpha"
    np.testing.assert_array_equal(np.asarray(result.cutout.getchannel("A")), alpha)
    check_output(result.image)


@pytest.mark.parametrize(
    "name, backdrop, suffix",
    [
        ("white", plain((255, 255, 255)), ".png"),
        ("white-jpeg", plain((255, 255, 255)), ".jpg"),
        ("green", plain((40, 110, 70)), ".png"),
        ("gradient", gradient(), ".jpg"),
    ],
)
def test_border_strategy_finds_the_object(tmp_path: Path, name: str, backdrop: np.ndarray, suffix: str) -> None:
    rgb, mask = paint_object(backdrop)
    path = tmp_path / f"{name}{suffix}"
    Image.fromarray(rgb).save(path, quality=92)  # PNG ignores the quality
    rgba = load_image(path)
    assert resolve_strategy(rgba) == "border"
    alpha = foreground_alpha(rgba, "border")
    assert alpha.shape == mask.shape and alpha.dtype == np.float32
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    assert iou(alpha > 0.5, mask) > 0.9
    check_output(prepare_input(path))


def test_uniform_image_has_no_foreground(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    Image.new("RGB", (200, 150), (90, 90, 200)).save(path)
    with pytest.raises(InputError, match="no foreground object found in .*blank.png"):
        prepare_input(path)


def test_fully_transparent_image_has_no_foreground(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    Image.new("RGBA", (120, 80), (0, 0, 0, 0)).save(path)
    with pytest.raises(InputError, match="no foreground object found"):
        prepare_input(path)


def test_alpha_strategy_needs_transparency(tmp_path: Path) -> None:
    rgb, _ = paint_object(plain((255, 255, 255)))
    with pytest.raises(InputError, match="no transparency"):
        foreground_alpha(Image.fromarray(rgb).convert("RGBA"), "alpha")
    with pytest.raises(ValueError, match="unknown strategy"):
        foreground_alpha(Image.fromarray(rgb).convert("RGBA"), "magic")


def fake_rembg(calls: list[str]) -> types.ModuleType:
    """Stands in for rembg: a session that records its model path, a mask of the centre."""
    module = types.ModuleType("rembg")
    module.__spec__ = importlib.machinery.ModuleSpec("rembg", None)

    def new_session(model_name: str, model_path: str) -> str:
        calls.append(f"{model_name}:{Path(model_path).name}")
        return "session"

    def remove(image: Image.Image, session: str, only_mask: bool) -> Image.Image:
        assert session == "session" and only_mask
        mask = np.full((image.height, image.width), 3, dtype=np.uint8)  # rembg's faint background
        mask[image.height // 4 : 3 * image.height // 4, image.width // 4 : 3 * image.width // 4] = 255
        return Image.fromarray(mask)

    module.new_session, module.remove = new_session, remove
    return module


def test_rembg_is_used_only_with_a_local_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rgb, _ = paint_object(plain((255, 255, 255)))
    rgba = Image.fromarray(rgb).convert("RGBA")
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "rembg", fake_rembg(calls))
    background._rembg_session.cache_clear()
    assert resolve_strategy(rgba) == "border"  # installed, but no model on disk: never downloads
    with pytest.raises(InputError, match="u2net.onnx"):
        foreground_alpha(rgba, "rembg")
    assert calls == []
    home = tmp_path / "u2net home"
    home.mkdir()
    (home / "u2net.onnx").write_bytes(b"weights")
    monkeypatch.setenv("U2NET_HOME", str(home))
    assert resolve_strategy(rgba) == "rembg"
    alpha = foreground_alpha(rgba)
    assert calls == ["u2net_custom:u2net.onnx"]
    h, w = alpha.shape
    assert alpha[h // 2, w // 2] == 1.0 and alpha[2, 2] == 0.0  # faint background floor removed
    background._rembg_session.cache_clear()


# ---------------------------------------------------------------- file formats


def test_grayscale_palette_cmyk_formats(tmp_path: Path) -> None:
    rgb, mask = paint_object(plain((235, 235, 235)))
    grey = tmp_path / "grey.png"
    Image.fromarray(rgb).convert("L").save(grey)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk, quality=95)
    palette = tmp_path / "palette.png"
    indexed = Image.fromarray(rgb).quantize(colors=15)  # indices 0..14
    indices = np.asarray(indexed).copy()
    indices[~mask] = 15  # index 15 = transparent background
    indexed.putdata(indices.ravel().tolist())
    indexed.putpalette(indexed.getpalette()[: 15 * 3] + [255, 255, 255])
    indexed.save(palette, transparency=15)
    for path, strategy in [(grey, "border"), (cmyk, "border"), (palette, "alpha")]:
        rgba = load_image(path)
        assert rgba.mode == "RGBA" and rgba.size == SIZE
        result = prepare(path)
        assert result.strategy == strategy, path.name
        assert iou(np.asarray(result.cutout.getchannel("A")) > 127, mask) > 0.9, path.name
        check_output(result.image)


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    _, mask = paint_object(plain((0, 0, 0)))
    raw = np.where(mask, 10000, 60000).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(raw).save(path)
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")
    arr = np.asarray(load_image(path))
    assert arr[0, 0, 0] == round(60000 / 257) and arr[150, 180, 0] == round(10000 / 257)
    check_output(prepare_input(path))


def test_float_tiff_is_scaled_from_unit_range(tmp_path: Path) -> None:
    _, mask = paint_object(plain((0, 0, 0)))
    raw = np.where(mask, 0.2, 0.9).astype(np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(raw).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "F"
    arr = np.asarray(load_image(path))
    assert arr[0, 0, 0] == round(0.9 * 255) and arr[150, 180, 0] == round(0.2 * 255)
    check_output(prepare_input(path))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:20] = (255, 0, 0)  # top half red
    stored[20:] = (0, 0, 255)  # bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    arr = np.asarray(load_image(path))
    assert arr.shape[:2] == (60, 40)
    assert arr[30, 35, 0] > 200 and arr[30, 35, 2] < 60  # stored top is now on the right
    assert arr[30, 4, 2] > 200 and arr[30, 4, 0] < 60


def test_large_jpeg_is_downscaled(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    Image.new("RGB", (4200, 2800), (200, 120, 40)).save(path, quality=80)
    img = load_image(path)
    assert img.size == (2048, 1365) and img.mode == "RGBA"


def test_unicode_path_with_spaces(tmp_path: Path) -> None:
    folder = tmp_path / "my photos ü"
    folder.mkdir()
    path = folder / "objet évalué 対象.png"
    rgb, _ = paint_object(plain((255, 255, 255)))
    Image.fromarray(rgb).save(path)
    check_output(prepare_input(str(path)))


# ---------------------------------------------------------------- OpenEXR


def srgb8(linear: float) -> int:
    return round((12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055) * 255)


@pytest.mark.parametrize("half", [False, True], ids=["float", "half"])
def test_openexr_render_is_read_as_srgb_with_straight_alpha(tmp_path: Path, half: bool) -> None:
    coverage = scene_mask()
    colour = np.array([0.2, 0.05, 0.5], np.float32)
    premultiplied = np.dstack([colour * coverage[..., None], coverage])  # scene-linear, premultiplied
    path = tmp_path / "render.exr"
    write_exr(path, premultiplied, half)
    arr = np.asarray(load_image(path)).astype(int)
    assert arr.shape == (SIZE[1], SIZE[0], 4)
    edge = (coverage > 0.2) & (coverage < 0.8)  # anti-aliased pixels: un-premultiplied to the full colour
    for where in (coverage == 1.0, edge):
        assert np.abs(arr[where][:, :3] - [srgb8(c) for c in colour]).max() <= 2
    np.testing.assert_allclose(arr[..., 3], coverage * 255, atol=1.0)
    result = prepare(path)
    assert result.strategy == "alpha"
    check_output(result.image)


def test_openexr_without_alpha_and_with_overbright_values(tmp_path: Path) -> None:
    rgb, mask = paint_object(plain((255, 255, 255)))
    linear = (rgb.astype(np.float32) / 255.0) ** 2.2
    linear[~mask] = 4.0  # a blown-out backdrop, brighter than white: clips to white
    path = tmp_path / "noalpha.exr"
    write_exr(path, np.dstack([linear, np.ones(mask.shape, np.float32)]))
    arr = np.asarray(load_image(path))
    assert (arr[~mask] == 255).all()
    result = prepare(path)
    assert result.strategy == "border" and iou(np.asarray(result.cutout.getchannel("A")) > 127, mask) > 0.9


def test_openexr_declaring_a_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.exr"
    write_exr(path, np.zeros((32, 32, 4), np.float32))
    header = bytearray(path.read_bytes())
    for name in (b"dataWindow", b"displayWindow"):
        at = header.index(name + b"\0box2i\0") + len(name) + len(b"\0box2i\0") + 4
        header[at : at + 16] = struct.pack("<4i", 0, 0, 29999, 29999)
    path.write_bytes(bytes(header))
    start = time.perf_counter()
    with pytest.raises(InputError, match="bomb.exr is too large \\(30000x30000\\)"):
        load_image(path)
    assert time.perf_counter() - start < 1.0

    truncated = tmp_path / "cut.exr"
    write_exr(truncated, np.random.default_rng(0).random((64, 64, 4), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(InputError, match="cut.exr is an OpenEXR file OpenCV cannot decode"):
        load_image(truncated)


LARGE_PNG_PEAK = """
import resource, sys
from backend.preprocess import load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = load_image(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(image.size[0], image.size[1], (after - before) * 1024)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_large_png_is_downscaled_without_a_full_size_rgba_copy(tmp_path: Path) -> None:
    """Pillow holds 8000x6000 RGB in 192 MB (4 bytes a pixel); an RGBA copy before shrinking would double that."""
    width, height = 8000, 6000
    row = (np.arange(width) % 256).astype(np.uint8)
    path = tmp_path / "large.png"
    Image.fromarray(np.dstack([np.broadcast_to(row, (height, width))] * 3)).save(path, compress_level=1)
    result = subprocess.run([sys.executable, "-c", LARGE_PNG_PEAK, str(path)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    w, h, peak = (int(x) for x in result.stdout.split())
    assert (w, h) == (2048, 1536)
    assert peak < 1.25 * width * height * 4, f"loading took {peak / 1e6:.0f} MB more"


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize("pillow_limit", ["default", "disabled"])
def test_decompression_bomb_is_refused_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pillow_limit: str) -> None:
    if pillow_limit == "disabled":  # another library may have switched Pillow's guard off
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(30000, 30000))
    start = time.perf_counter()
    with pytest.raises(InputError, match="bomb.png is too large.*megapixels"):
        load_image(path)
    assert time.perf_counter() - start < 1.0


def test_every_bad_image_is_one_error_naming_the_file(tmp_path: Path) -> None:
    for path, expected in write_bad_images(tmp_path / "bad ü").items():
        with pytest.raises(InputError) as exc:
            prepare(path)
        message = str(exc.value)
        assert str(path) in message and expected in message and "\n" not in message, message

    exr = tmp_path / "render.exr"
    exr.write_bytes(b"\x76\x2f\x31\x01" + bytes(60))
    with pytest.raises(InputError, match="render.exr has a truncated or corrupt OpenEXR header"):
        load_image(exr)
    with pytest.raises(InputError, match="missing.png not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="only 1x1 pixels"):
        prepare_input(Image.new("RGB", (1, 1)))


# ---------------------------------------------------------------- framing


@pytest.mark.parametrize("box", [(30, 200, 150, 60), (300, 10, 40, 110), (0, 0, 398, 100)])
def test_recentre_frames_longer_side_at_75_percent(box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    rgba = np.zeros((300, 400, 4), dtype=np.uint8)
    rgba[..., :3] = (0, 255, 0)  # colour under the transparent area must not leak
    rgba[y : y + h, x : x + w] = (20, 60, 200, 255)
    out = recentre(Image.fromarray(rgba))
    assert out.mode == "RGB" and out.size == (256, 256)
    x0, y0, x1, y1 = object_box(out, level=(255 + np.mean((20, 60, 200))) / 2)
    longer = max(x1 - x0 + 1, y1 - y0 + 1)
    assert abs(longer - 0.75 * 256) <= 2
    assert abs((x0 + x1) / 2 - 127.5) <= 2 and abs((y0 + y1) / 2 - 127.5) <= 2
    arr = np.asarray(out).astype(int)
    outside = np.ones((256, 256), dtype=bool)
    outside[max(0, y0 - 5) : y1 + 6, max(0, x0 - 5) : x1 + 6] = False  # Lanczos reaches ~4 px
    assert (arr[outside] == 255).all()  # pure white background
    assert (arr[(y0 + y1) // 2, (x0 + x1) // 2] == (20, 60, 200)).all()
