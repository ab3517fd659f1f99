"""``evaluate``: render each mesh at the rig, reconstruct it, and score it against ground truth.

For every mesh: the 40 rig views are rendered (the One-2-3-45 folder is kept), the checkpoint
reconstructs from the 32 source views, and the result is compared with the ground-truth mesh
(Chamfer, F-score at 0.05 and 0.1, volume IoU; lengths in units of the GT's longest side) next to
a visual hull carved from the same 32 masks. Novel views (not in the rig) of ground truth and
reconstruction give PSNR/SSIM, and a contact sheet shows input, ground truth, reconstruction
and hull side by side.

With a view generator the reconstruction instead starts from the single input view (rig view 0,
as rendered, so generated and true views share one scale): the generator makes the 39 other rig
views, scored against the true renders (``views_psnr``/``views_ssim``), and the mesh comes from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from ..cameras import INTRINSICS, OPENGL_TO_OPENCV, look_at_c2w, rig_c2ws
from ..files import atomic_write
from ..generation.base import ViewGenerator
from ..image_to_mesh import ImageToMeshPipeline
from ..mesh import ColoredMesh
from ..preprocess import PreparedInput
from ..reconstruction import ReconstructionPipeline
from ..render.mesh_views import load_normalised_mesh, render_view
from ..views import load_view_folder, write_view_folder
from .metrics import chamfer_and_fscore, normalise_pair, psnr, sample_surface, ssim, visual_hull, volume_iou

NOVEL_VIEWS = [(70.0, 0.0), (70.0, 90.0), (70.0, 180.0), (70.0, 270.0), (110.0, 45.0), (110.0, 225.0)]
NOVEL_RADIUS = 1.6
SURFACE_SAMPLES = 20_000
HULL_RESOLUTION = 96
# A reconstruction without a surface: Chamfer of one GT longest side, nothing matched.
NO_SURFACE = {"chamfer": 1.0, "fscore@0.05": 0.0, "fscore@0.1": 0.0, "volume_iou": 0.0, "psnr": 0.0, "ssim": 0.0}


@dataclass
class MeshScores:
    name: str
    reconstruction: dict[str, float]
    visual_hull: dict[str, float]


def geometry_scores(pred: trimesh.Trimesh, gt: trimesh.Trimesh) -> dict[str, float]:
    p, g, _ = normalise_pair(np.asarray(pred.vertices), np.asarray(gt.vertices))
    scores = chamfer_and_fscore(sample_surface(p, pred.faces, SURFACE_SAMPLES), sample_surface(g, gt.faces, SURFACE_SAMPLES))
    scores["volume_iou"] = volume_iou((p, pred.faces), (g, gt.faces), 64)
    return {k: scores[k] for k in ("chamfer", "fscore@0.05", "fscore@0.1", "volume_iou")}


def image_scores(pred: trimesh.Trimesh, gt: trimesh.Trimesh) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean PSNR/SSIM over novel views, and the GT and predicted renders (RGB uint8) for the sheet."""
    values, renders = {"psnr": [], "ssim": []}, []
    for polar, azimuth in NOVEL_VIEWS:
        c2w = look_at_c2w(polar, azimuth, NOVEL_RADIUS)
        a, b = (render_view(m, c2w)[0][..., :3] for m in (gt, pred))
        values["psnr"].append(psnr(a / 255.0, b / 255.0))
        values["ssim"].append(ssim(a / 255.0, b / 255.0))
        renders.append(np.concatenate([a, b]))
    return {k: float(np.mean(v)) for k, v in values.items()}, renders


def render_rig(mesh: trimesh.Trimesh, folder: Path, polar: float) -> tuple[np.ndarray, np.ndarray]:
    """Write the One-2-3-45 folder; return the 32 source masks and their world -> pixel projections."""
    poses = rig_c2ws(polar)
    images, masks, projections = {}, [], []
    for i, (name, c2w) in enumerate(poses.items()):
        rgba, depth = render_view(mesh, c2w)
        images[name] = Image.fromarray(rgba[..., :3])
        if i >= 8:
            masks.append(depth > 0)
            projections.append(INTRINSICS @ np.linalg.inv(c2w @ OPENGL_TO_OPENCV)[:3])
    write_view_folder(folder, polar, images)
    return np.stack(masks), np.stack(projections)


def generated_reconstruction(
    pipeline: ReconstructionPipeline, generator: ViewGenerator, rig_folder: Path, work: Path, polar: float, resolution: int,
    steps: tuple[int, int], carve: bool | None = None,
) -> tuple[ColoredMesh, dict[str, float]]:
    """Mesh from the generator's views of rig view 0, and the generated views' PSNR/SSIM against the true renders."""
    input_view = Image.open(rig_folder / "stage1_8" / "0.png").convert("RGB")
    prepared = PreparedInput(input_view, input_view.convert("RGBA"), "rendered")
    result = ImageToMeshPipeline(generator, pipeline, carve)(prepared, polar, steps[0], steps[1], 0, resolution, work / "generated")
    values: dict[str, list[float]] = {"views_psnr": [], "views_ssim": []}
    for name, image in list(result.views.items())[1:]:
        true_view = np.asarray(Image.open(rig_folder / ("stage2_8" if "_" in name else "stage1_8") / name).convert("RGB")) / 255.0
        values["views_psnr"].append(psnr(true_view, np.asarray(image) / 255.0))
        values["views_ssim"].append(ssim(true_view, np.asarray(image) / 255.0))
    return result.mesh, {k: float(np.mean(v)) for k, v in values.items()}


def evaluate_mesh(
    pipeline: ReconstructionPipeline, path: Path, out_dir: Path, up_axis: str, polar: float, resolution: int, object_size: float,
    generator: ViewGenerator | None = None, generator_steps: tuple[int, int] = (75, 50), carve: bool | None = None,
) -> MeshScores:
    """``carve`` None: as the product does, on for true views and off for generated ones (``ReconstructionPipeline``)."""
    gt = load_normalised_mesh(path, up_axis)
    gt.apply_scale(object_size)  # normalised to a longest side of 1, then to the protocol's size
    work = out_dir / path.stem
    masks, projections = render_rig(gt, work / "views", polar)
    view_scores: dict[str, float] = {}
    if generator is None:
        mesh = pipeline(load_view_folder(work / "views"), resolution, carve=carve)
    else:
        mesh, view_scores = generated_reconstruction(pipeline, generator, work / "views", work, polar, resolution, generator_steps,
                                                     carve)
    hull_vertices, hull_faces = visual_hull(masks, projections, HULL_RESOLUTION, np.array([[-0.6] * 3, [0.6] * 3]))
    hull = trimesh.Trimesh(hull_vertices, hull_faces, vertex_colors=np.full((len(hull_vertices), 4), 200, np.uint8), process=False)
    if len(mesh.faces):
        recon = mesh.to_trimesh()
        recon.export(work / "reconstruction.ply")
        rec_scores, renders = image_scores(recon, gt)
        rec_scores.update(geometry_scores(recon, gt))
    else:  # no surface at all: the worst scores, and blank pictures
        rec_scores = dict(NO_SURFACE)
        renders = [np.concatenate([render_view(gt, look_at_c2w(p, a, NOVEL_RADIUS))[0][..., :3], np.full((256, 256, 3), 255, np.uint8)])
                   for p, a in NOVEL_VIEWS]
    rec_scores.update(view_scores)
    hull_scores = geometry_scores(hull, gt)
    hull_renders = [render_view(hull, look_at_c2w(p, a, NOVEL_RADIUS))[0][..., :3] for p, a in NOVEL_VIEWS]
    input_view = np.asarray(Image.open(work / "views" / "stage1_8" / "0.png").convert("RGB"))
    first_column = np.concatenate([input_view, np.full_like(input_view, 255), np.full_like(input_view, 255)])
    columns = [first_column] + [np.concatenate([r, h]) for r, h in zip(renders, hull_renders)]
    sheet = Image.fromarray(np.concatenate(columns, axis=1))
    sheet.save(work / "contact_sheet.png")
    return MeshScores(path.stem, rec_scores, hull_scores)


def markdown_table(results: list[MeshScores]) -> str:
    lines = [
        "| mesh | method | Chamfer ↓ | F@0.05 ↑ | F@0.1 ↑ | vol. IoU ↑ | PSNR ↑ | SSIM ↑ | generated views PSNR / SSIM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for label, s in (("reconstruction", r.reconstruction), ("visual hull (32 masks)", r.visual_hull)):
            image = f"{s['psnr']:.2f} | {s['ssim']:.3f}" if "psnr" in s else "– | –"
            views = f"{s['views_psnr']:.2f} / {s['views_ssim']:.3f}" if "views_psnr" in s else "–"
            lines.append(f"| {r.name} | {label} | {s['chamfer']:.4f} | {s['fscore@0.05']:.3f} | {s['fscore@0.1']:.3f} | "
                         f"{s['volume_iou']:.3f} | {image} | {views} |")
    return "\n".join(lines)


def mean_rows(results: list[MeshScores]) -> str:
    """Mean Chamfer and F-scores of both methods over all meshes (the issue's acceptance measure)."""
    lines = []
    for label, key in (("reconstruction", "reconstruction"), ("visual hull (32 masks)", "visual_hull")):
        scores = [getattr(r, key) for r in results]
        mean = {k: float(np.mean([s[k] for s in scores])) for k in ("chamfer", "fscore@0.05", "fscore@0.1", "volume_iou")}
        lines.append(f"| **mean** | {label} | {mean['chamfer']:.4f} | {mean['fscore@0.05']:.3f} | {mean['fscore@0.1']:.3f} | "
                     f"{mean['volume_iou']:.3f} | | | |")
    return "\n".join(lines)


def evaluate(
    pipeline: ReconstructionPipeline, meshes: list[Path], out_dir: Path, up_axis: str, polar: float, resolution: int,
    object_size: float = 0.7, generator: ViewGenerator | None = None, generator_steps: tuple[int, int] = (75, 50),
    carve: bool | None = None,
) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [evaluate_mesh(pipeline, m, out_dir, up_axis, polar, resolution, object_size, generator, generator_steps, carve)
               for m in meshes]
    atomic_write(out_dir / "results.json", json.dumps([vars(r) for r in results], indent=2).encode())
    table = markdown_table(results) + "\n" + mean_rows(results)
    atomic_write(out_dir / "results.md", (table + "\n").encode())
    return table
