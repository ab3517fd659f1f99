"""Rendered One-2-3-45 rigs held on the training device, from which the view generator's batches are drawn.

Object ``i`` of a run is fixed by (seed, i): a procedural object or one of the user's meshes (random turn
about the vertical axis, random size), and an input polar angle. Its 40 rig views (8 stage-1, then 32 stage-2,
the order of ``cameras.view_angles``; view 0 is the input view) are rendered with the PyTorch rasterizer on
the training device, kept as uint8 with every view's absolute (polar, azimuth), and cached on disk so a
resumed run reloads rather than re-renders. The bank holds the ``capacity`` newest objects, in slot
``i % capacity``; ``add`` renders the next ones over the oldest, so a run sees many more objects than fit.
Meshes are built in DataLoader workers on the CPU while the device renders.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ..cameras import STAGE2_DELTAS, rig_c2ws, view_angles
from ..files import atomic_write
from ..progress import ProgressCallback, no_progress
from ..training.procedural import LONGEST_SIDE
from ..training.samples import NUM_STAGE1, SceneObject, render_views
from ..training.sources import MeshFolderSource, ProceduralSource

RIG_VIEWS = NUM_STAGE1 * (1 + len(STAGE2_DELTAS))


def schedule_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """(source, target) view indices of the pairs One-2-3-45 generates: stage 1 (view 0 -> each stage-1 view, view 0
    itself included) and stage 2 (stage-1 view k -> its 4 nearby views)."""
    stage1 = [(0, k) for k in range(NUM_STAGE1)]
    stage2 = [(k, NUM_STAGE1 + k * len(STAGE2_DELTAS) + j) for k in range(NUM_STAGE1) for j in range(len(STAGE2_DELTAS))]
    return torch.tensor(stage1), torch.tensor(stage2)


def pose_vectors(source_angles: torch.Tensor, target_angles: torch.Tensor) -> torch.Tensor:
    """``cameras.relative_pose_vector`` of target minus source (polar, azimuth) degrees, batched: (N, 4) float32.

    Computed in float64 as the generator's poses are, so a schedule pair gets the very vector generation uses.
    """
    delta = torch.deg2rad((target_angles - source_angles).double())
    polar, azimuth = delta.unbind(-1)
    return torch.stack([polar, azimuth.sin(), azimuth.cos(), torch.zeros_like(polar)], -1).float()


@dataclass
class RenderedRig:
    """The 40 views of one object: uint8 (40, 3, H, W) on white, and (40, 2) absolute (polar, azimuth) in degrees."""

    images: torch.Tensor
    angles: torch.Tensor


class RigObjects(torch.utils.data.Dataset):
    """Item ``i``: object i of the run and its input polar angle, built on the CPU (in loader workers)."""

    def __init__(self, seed: int, procedural: ProceduralSource, meshes: MeshFolderSource | None = None,
                 mesh_fraction: float = 0.25, polar_range: tuple[float, float] = (45.0, 120.0)) -> None:
        self.seed = seed
        self.procedural = procedural
        self.meshes = meshes
        self.mesh_fraction = mesh_fraction if meshes is not None else 0.0
        self.polar_range = polar_range

    def __getitem__(self, index: int) -> tuple[SceneObject, float]:
        rng = np.random.default_rng([self.seed, index])
        object_seed = int(rng.integers(2**31))
        cpu = torch.device("cpu")
        if rng.random() < self.mesh_fraction:
            # Meshes come normalised to a longest side of 1 (and turned): give them the procedural objects' sizes.
            obj = self.meshes.object(object_seed, cpu)
            obj = SceneObject(obj.vertices * float(rng.uniform(*LONGEST_SIDE)), obj.faces, obj.colors)
        else:
            obj = self.procedural.object(object_seed, cpu)
            obj = SceneObject(obj.vertices, obj.faces, obj.colors)  # without the SDF, which need not cross processes
        return obj, float(rng.uniform(*self.polar_range))

    def describe(self) -> dict:
        return {"seed": self.seed, "procedural": self.procedural.describe(),
                "meshes": self.meshes.describe() if self.meshes is not None else None,
                "mesh_fraction": self.mesh_fraction, "polar_range": list(self.polar_range)}


def render_rig(obj: SceneObject, polar: float, size: int, device: torch.device) -> RenderedRig:
    """All 40 views of ``obj`` for an input at ``polar``, rendered on ``device``."""
    on_device = SceneObject(obj.vertices.to(device), obj.faces.to(device), obj.colors.to(device))
    rgb, _ = render_views(on_device, np.stack(list(rig_c2ws(polar).values())), size)
    images = (rgb * 255).round().to(torch.uint8).permute(0, 3, 1, 2).contiguous()
    return RenderedRig(images, torch.tensor(list(view_angles(polar).values()), dtype=torch.float64, device=device))


@dataclass
class ViewPairs:
    """A training batch of (conditioning view, target view) pairs of the same objects."""

    source_images: torch.Tensor  # (N, 3, H, W) uint8
    source_latents: torch.Tensor  # (N, C, h, w) VAE posterior mode of the source (unscaled)
    target_mean: torch.Tensor  # (N, C, h, w) VAE posterior of the target
    target_std: torch.Tensor
    poses: torch.Tensor  # (N, 4) relative_pose_vector of target minus source


class ViewBank:
    """The ``capacity`` newest rendered objects of a run, on ``device``; see the module docstring."""

    def __init__(self, objects: RigObjects, capacity: int, image_size: int, device: torch.device,
                 cache_dir: Path | None = None, workers: int = 0) -> None:
        self.objects = objects
        self.capacity = capacity
        self.image_size = image_size
        self.device = device
        self.cache_dir = cache_dir
        self.workers = workers
        self.images = torch.full((capacity, RIG_VIEWS, 3, image_size, image_size), 255, dtype=torch.uint8, device=device)
        self.angles = torch.zeros(capacity, RIG_VIEWS, 2, dtype=torch.float64, device=device)
        self.latent_mean: torch.Tensor | None = None
        self.latent_std: torch.Tensor | None = None
        self.encoder: torch.nn.Module | None = None
        self.made = 0  # objects 0 .. made - 1 have been drawn; the bank holds the last ``capacity`` of them
        self._stream: Iterator[tuple[SceneObject, float]] | None = None
        stage1, stage2 = schedule_pairs()
        self._stage1, self._stage2 = stage1.to(device), stage2.to(device)

    def load(self, made: int, progress: ProgressCallback = no_progress) -> None:
        """Hold objects ``made - capacity .. made - 1``: from the cache where rendered before, else rendered now."""
        if made < self.capacity:
            raise ValueError(f"a bank of {self.capacity} objects needs at least that many objects, not {made}")
        self.made = made
        wanted = range(made - self.capacity, made)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.cache_dir.glob("*.safetensors"):
                if not stale.stem.isdigit() or int(stale.stem) not in wanted:
                    stale.unlink()
        missing = []
        for done, index in enumerate(wanted):
            cached = self._read_cache(index)
            if cached is None:
                missing.append(index)
            else:
                self._put(index, cached)
            progress("load-views", done + 1, self.capacity)
        for done, (index, (obj, polar)) in enumerate(zip(missing, self._loader(missing))):
            self._put(index, self._render(index, obj, polar))
            progress("render-views", done + 1, len(missing))
        self._stream = None

    def add(self, count: int) -> None:
        """Render the next ``count`` objects over the oldest ones."""
        if self._stream is None:
            self._stream = iter(self._loader(range(self.made, 2**62)))
        for _ in range(count):
            obj, polar = next(self._stream)
            evicted = self.made - self.capacity
            self._put(self.made, self._render(self.made, obj, polar))
            if self.cache_dir is not None:
                (self.cache_dir / f"{evicted}.safetensors").unlink(missing_ok=True)
            self.made += 1

    def close(self) -> None:
        """Stop the mesh-building workers."""
        self._stream = None

    @torch.no_grad()
    def attach_encoder(self, vae: torch.nn.Module) -> None:
        """Encode every held view with the (trained, frozen) VAE, and every later one as it arrives."""
        self.encoder = vae
        self.latent_mean = self.latent_std = None
        for slot in range(self.capacity):
            self._encode(slot)

    def views(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` random views (N, 3, H, W) uint8, for the VAE."""
        obj = torch.randint(self.capacity, (count,), device=self.device, generator=generator)
        view = torch.randint(RIG_VIEWS, (count,), device=self.device, generator=generator)
        return self.images[obj, view]

    def pairs(self, count: int, generator: torch.Generator, mix: tuple[float, float, float]) -> ViewPairs:
        """``count`` random pairs within objects: with probabilities ``mix``, a stage-1 pair, a stage-2 pair, or any two views."""
        if self.latent_mean is None:
            raise RuntimeError("the bank has no latents yet: attach the trained VAE first")
        device = self.device
        obj = torch.randint(self.capacity, (count,), device=device, generator=generator)
        kind = torch.rand(count, device=device, generator=generator)
        stage1 = self._stage1[torch.randint(len(self._stage1), (count,), device=device, generator=generator)]
        stage2 = self._stage2[torch.randint(len(self._stage2), (count,), device=device, generator=generator)]
        anything = torch.randint(RIG_VIEWS, (count, 2), device=device, generator=generator)
        chosen = torch.where((kind < mix[0])[:, None], stage1, torch.where((kind < mix[0] + mix[1])[:, None], stage2, anything))
        source, target = chosen.unbind(1)
        return ViewPairs(
            source_images=self.images[obj, source],
            source_latents=self.latent_mean[obj, source],
            target_mean=self.latent_mean[obj, target],
            target_std=self.latent_std[obj, target],
            poses=pose_vectors(self.angles[obj, source], self.angles[obj, target]),
        )

    def _loader(self, indices: range | list[int]) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.objects, batch_size=None, sampler=indices, num_workers=self.workers,
                                           prefetch_factor=4 if self.workers else None, worker_init_fn=_one_thread)

    def _render(self, index: int, obj: SceneObject, polar: float) -> RenderedRig:
        rig = render_rig(obj, polar, self.image_size, self.device)
        if self.cache_dir is not None:
            tensors = {"images": rig.images.cpu(), "angles": rig.angles.cpu()}
            atomic_write(self.cache_dir / f"{index}.safetensors", save(tensors, metadata={"recipe": self._recipe(index)}))
        return rig

    def _read_cache(self, index: int) -> RenderedRig | None:
        """The cached render of object ``index`` if it is there and was made by this recipe."""
        if self.cache_dir is None or not (path := self.cache_dir / f"{index}.safetensors").is_file():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                recipe = (f.metadata() or {}).get("recipe")
            tensors = load_file(str(path), device=str(self.device))
        except (SafetensorError, OSError):
            return None
        rig = RenderedRig(tensors.get("images"), tensors.get("angles"))
        shape = (RIG_VIEWS, 3, self.image_size, self.image_size)
        if recipe != self._recipe(index) or rig.images is None or rig.angles is None or tuple(rig.images.shape) != shape:
            return None
        return rig

    def _recipe(self, index: int) -> str:
        return json.dumps({"object": index, "size": self.image_size, **self.objects.describe()}, sort_keys=True)

    def _put(self, index: int, rig: RenderedRig) -> None:
        slot = index % self.capacity
        self.images[slot] = rig.images
        self.angles[slot] = rig.angles
        if self.encoder is not None:
            self._encode(slot)

    @torch.no_grad()
    def _encode(self, slot: int) -> None:
        """Posterior mean and std of one object's views, in float32, one object per call (so a resume recomputes them exactly)."""
        posterior = self.encoder.encode(image_batch(self.images[slot])).latent_dist
        if self.latent_mean is None:
            shape = (self.capacity, RIG_VIEWS, *posterior.mean.shape[1:])
            self.latent_mean = torch.zeros(shape, device=self.device)
            self.latent_std = torch.zeros(shape, device=self.device)
        self.latent_mean[slot] = posterior.mean.float()
        self.latent_std[slot] = posterior.std.float()


def _one_thread(worker: int) -> None:
    """Loader workers build one mesh each: threads inside them would only compete with each other."""
    torch.set_num_threads(1)


def image_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1], the range the VAE and ``clip_pixels`` take."""
    return images.float() / 127.5 - 1

