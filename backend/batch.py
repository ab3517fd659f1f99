"""A folder of images -> one mesh each, resumable, and sharded over ranks when launched with ``torchrun``.

Rank r of N takes every N-th image of the sorted list, so each image is processed exactly once; an image
whose mesh already exists is skipped (a re-run resumes), and every mesh is written atomically, so an
interrupted run never leaves a truncated file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BackendError
from .mesh import ColoredMesh, export_mesh

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".exr")


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # meshes already there from an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # image name -> reason
    seconds: float = 0.0

    def merge(self, other: BatchSummary) -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed.update(other.failed)
        self.seconds = max(self.seconds, other.seconds)

    def report(self) -> str:
        """One line of counts and throughput, then one line per failure with its reason."""
        rate = f", {len(self.done) / self.seconds * 60:.1f} meshes per minute" if self.done and self.seconds else ""
        lines = [f"{len(self.done)} made, {len(self.skipped)} already there, {len(self.failed)} failed in {self.seconds:.1f} s{rate}"]
        lines += [f"failed: {name}: {reason}" for name, reason in sorted(self.failed.items())]
        return "\n".join(lines)


def batch_images(folder: Path) -> list[Path]:
    """The images of ``folder`` in a stable order; two images that would share an output name are an error."""
    if not folder.is_dir():
        raise BackendError(f"{folder} is not a folder of images")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BackendError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise BackendError(f"{stems[path.stem].name} and {path.name} would both become {path.stem}.glb: rename one")
        stems[path.stem] = path
    return images


def run_batch(
    images: list[Path],
    out_dir: Path,
    make_mesh: Callable[[Path], ColoredMesh],
    rank: int = 0,
    world_size: int = 1,
    suffix: str = ".glb",
    overwrite: bool = False,
    on_image: Callable[[str, str], None] = lambda name, status: None,
) -> BatchSummary:
    """Make this rank's share of the meshes; a failing image is recorded and the batch goes on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    start = time.perf_counter()
    for path in images[rank::world_size]:
        target = out_dir / f"{path.stem}{suffix}"
        if target.exists() and not overwrite:
            summary.skipped.append(path.name)
            on_image(path.name, "already there")
            continue
        try:
            export_mesh(make_mesh(path), target, overwrite)
        except (BackendError, ValueError, OSError) as exc:
            summary.failed[path.name] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            on_image(path.name, f"failed: {summary.failed[path.name]}")
            continue
        summary.done.append(path.name)
        on_image(path.name, f"-> {target}")
    summary.seconds = time.perf_counter() - start
    return summary
