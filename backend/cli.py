"""Command line: ``python -m backend COMMAND ...``. Errors end as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .devices import DEVICE_CHOICES, PRECISIONS
from .errors import BackendError, out_of_memory_advice
from .progress import no_progress, stderr_progress


def _reconstruct(args: argparse.Namespace) -> None:
    from .mesh import check_output_path, export_mesh

    check_output_path(args.output, args.overwrite)  # before torch loads: a wrong -o fails at once

    import torch

    from .reconstruction import ReconstructionPipeline
    from .views import load_view_folder

    torch.manual_seed(args.seed)
    views = load_view_folder(args.views_dir)
    pipeline = ReconstructionPipeline.from_checkpoint(args.checkpoint, args.device, args.norm_statistics)
    mesh = pipeline(views, args.resolution, stderr_progress, carve=args.carve)
    export_mesh(mesh, args.output, args.overwrite)
    print(f"wrote {args.output} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces)", file=sys.stderr)


def _convert_checkpoint(args: argparse.Namespace) -> None:
    from .checkpoints import convert_official

    out = convert_official(args.checkpoint, args.out_dir)
    print(f"wrote {out}", file=sys.stderr)


def _convert_zero123(args: argparse.Namespace) -> None:
    from .generation.convert import convert_zero123_checkpoint

    result = convert_zero123_checkpoint(args.checkpoint, args.out_dir, args.clip_folder)
    weights = "EMA" if result.ema else "non-EMA (the checkpoint has no EMA copy)"
    print(f"wrote {result.out_dir} ({weights} UNet weights)", file=sys.stderr)


def _view_generator(folder: Path | None, device: object, precision: str = "auto") -> object:
    """The Zero123 folder given, or the bundled generator, loaded for ``device``."""
    from .devices import generation_dtype
    from .generation.bundled import generator_folder
    from .generation.zero123 import Zero123Generator

    return Zero123Generator.from_folder(generator_folder(folder), device, generation_dtype(device, precision))


def _image_pipeline(args: argparse.Namespace, device: object) -> tuple[object, int, int]:
    """The image -> mesh pipeline and the two stages' step counts that ``image2mesh`` and ``batch`` share."""
    from .image_to_mesh import STAGE1_STEPS, STAGE2_STEPS, ImageToMeshPipeline
    from .reconstruction import ReconstructionPipeline

    generator = _view_generator(args.zero123, device, args.precision)
    if args.compile or args.compile_all:
        generator.compile(everything=args.compile_all)
    reconstruction = ReconstructionPipeline.from_checkpoint(args.checkpoint, str(device))
    pipeline = ImageToMeshPipeline(generator, reconstruction, carve=args.carve)
    stage1, stage2 = (args.steps, max(2, round(args.steps * 2 / 3))) if args.steps else (STAGE1_STEPS, STAGE2_STEPS)
    return pipeline, stage1, stage2


def _image2mesh(args: argparse.Namespace) -> None:
    from .mesh import check_output_path, export_mesh
    from .preprocess import prepare

    check_output_path(args.output, args.overwrite)
    prepared = prepare(args.image)  # a bad image fails in a moment, before torch and the models load

    from .devices import resolve_device

    pipeline, stage1, stage2 = _image_pipeline(args, resolve_device(args.device))
    result = pipeline(prepared, args.polar, stage1, stage2, args.seed, args.resolution, args.views_dir, stderr_progress)
    export_mesh(result.mesh, args.output, args.overwrite)
    print(f"polar {result.polar:.1f} deg ({result.polar_source}); wrote {args.output} "
          f"({len(result.mesh.vertices)} vertices, {len(result.mesh.faces)} faces)", file=sys.stderr)


def _batch(args: argparse.Namespace) -> None:
    from .batch import BatchSummary, batch_images, run_batch
    from .distributed import DistributedContext
    from .mesh import check_output_path

    images = batch_images(args.image_dir)
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"cannot create the output folder {args.out_dir} ({exc.strerror or exc}): choose another -o folder") from None
    check_output_path(args.out_dir / f"{images[0].stem}{args.format}", overwrite=True)  # a read-only folder fails now
    context = DistributedContext.from_environment(args.device)
    try:
        pipeline, stage1, stage2 = _image_pipeline(args, context.device)

        def make_mesh(path: Path) -> object:
            views = args.out_dir / f"{path.stem}_views" if args.keep_views else None
            return pipeline(path, args.polar, stage1, stage2, args.seed, args.resolution, views).mesh

        def report(name: str, status: str) -> None:
            print(f"[{context.rank}/{context.world_size}] {name} {status}", file=sys.stderr, flush=True)

        summary = run_batch(images, args.out_dir, make_mesh, context.rank, context.world_size, args.format, args.overwrite, report)
        total = BatchSummary()
        for part in context.gather(summary):
            total.merge(part)
        if context.is_main:
            print(total.report(), file=sys.stderr)
        if total.failed:
            raise SystemExit(1)
    finally:
        context.close()


def _train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .models import ReconstructorConfig
    from .distributed import DistributedContext
    from .training.dataset_format import SPLIT_FILE, RenderedFolderSource
    from .training.sources import MeshFolderSource, MixedSource, ProceduralSource, SampleSource
    from .training.trainer import Trainer, TrainConfig

    def data_source(data: str) -> SampleSource:
        if data == "procedural":
            return ProceduralSource()
        if (Path(data) / SPLIT_FILE).is_file():
            return RenderedFolderSource(data)
        return MeshFolderSource(data, args.up_axis)

    sources = [data_source(data) for data in args.data]
    source = sources[0] if len(sources) == 1 else MixedSource(sources)
    config = TrainConfig(steps=args.steps, seed=args.seed, batch=args.batch, rays=args.rays, checkpoint_every=args.checkpoint_every,
                         generated_fraction=args.generated_fraction, generator_steps=args.generator_steps,
                         model=ReconstructorConfig(volume_resolution=args.volume_resolution))
    if args.short_schedule:
        config = replace(config, anneal_steps=args.steps // 8, sparseness_ramp_steps=args.steps // 4, mask_start=args.steps // 4)
    if args.init_from is not None:  # a trained network has had its warm-ups: no annealing or ramps again
        config = replace(config, anneal_steps=1, sparseness_ramp_steps=1, mask_start=0)
    if args.lr is not None:
        config = replace(config, lr=args.lr)
    if args.depth_weight is not None:
        config = replace(config, weights=replace(config.weights, depth=args.depth_weight))
    context = DistributedContext.from_environment(args.device)
    try:
        if context.device.type == "cuda":
            torch_backends_for_training()
        view_generator = _view_generator(args.generator, context.device) if args.generated_fraction > 0 else None
        trainer = Trainer(config, source, args.out, context.device, resume=args.resume, context=context,
                          view_generator=view_generator, init_from=args.init_from)
        if context.is_main:
            print(f"training from step {trainer.step} to {config.steps} on {context.world_size} x {context.device.type}, "
                  f"{config.batch} object(s) per step", file=sys.stderr)
        trainer.train(stderr_progress if context.is_main else no_progress, stop_after=args.time_limit, workers=args.workers)
        if context.is_main:
            print(f"checkpoint at step {trainer.step}: {args.out}", file=sys.stderr)
    finally:
        context.close()


def _train_generator(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .devices import resolve_device
    from .generation.generator_trainer import EXPORT_DIR, GeneratorTrainConfig, GeneratorTrainer
    from .generation.small_model import TINY_GENERATOR
    from .training.sources import MeshFolderSource

    config = GeneratorTrainConfig(vae_steps=args.steps_vae, steps=args.steps, vae_batch=args.batch_vae, batch=args.batch,
                                  objects=args.objects, refresh_objects=args.refresh_objects, seed=args.seed)
    if args.tiny:
        config = replace(config, model=TINY_GENERATOR, mesh_resolution=32)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch_backends_for_training()
    meshes = MeshFolderSource(args.meshes, args.up_axis) if args.meshes else None
    trainer = GeneratorTrainer(config, args.out, device, meshes, args.resume, args.workers, args.init_from)
    print(f"training the view generator from VAE step {trainer.vae_step}/{config.vae_steps}, UNet step "
          f"{trainer.step}/{config.steps} on {device}", file=sys.stderr)
    trainer.train(stderr_progress, stop_after=args.time_limit)
    print(f"checkpoint at VAE step {trainer.vae_step}, UNet step {trainer.step}: {args.out}"
          + (f" (generator: {args.out / EXPORT_DIR})" if trainer.step else ""), file=sys.stderr)


def _render_dataset(args: argparse.Namespace) -> None:
    from .training.render_dataset import render_dataset

    split = render_dataset(args.mesh_dir, args.out_dir, args.renderer, args.up_axis, args.object_size, tuple(args.polar_range),
                           args.val_fraction, args.seed, args.blender, stderr_progress)
    print(f"wrote {len(split['train'])} training and {len(split['val'])} validation objects to {args.out_dir}", file=sys.stderr)


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation.evaluate import evaluate
    from .reconstruction import ReconstructionPipeline
    from .training.sources import MESH_SUFFIXES

    meshes = [p for p in (sorted(args.meshes.iterdir()) if args.meshes.is_dir() else [args.meshes]) if p.suffix.lower() in MESH_SUFFIXES]
    if not meshes:
        raise ValueError(f"no meshes ({', '.join(MESH_SUFFIXES)}) in {args.meshes}")
    pipeline = ReconstructionPipeline.from_checkpoint(args.checkpoint, args.device)
    generator = None
    if args.generator is not None:
        generator = _view_generator(None if str(args.generator) == "bundled" else args.generator, pipeline.device)
    steps = (args.steps, max(2, round(args.steps * 2 / 3))) if args.steps else (75, 50)
    print(evaluate(pipeline, meshes, args.out, args.up_axis, args.polar, args.resolution, args.object_size, generator, steps,
                   args.carve))


def _serve(args: argparse.Namespace) -> None:
    from .worker import protocol_streams, serve

    stdin, stdout = protocol_streams()
    serve(stdin, stdout, args.results_dir)


def torch_backends_for_training() -> None:
    """TF32 matmuls and convolutions: ample precision for training, much faster on recent GPUs."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


CARVE_HELP = ("cut the mesh to the visual hull of the 32 source views' silhouettes (default: on, except for views a "
              "generator made, marked \"generated\" in pose.json, whose silhouettes disagree)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Image to 3D backend (One-2-3-45).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rec = commands.add_parser("reconstruct", help="posed One-2-3-45 view folder -> coloured mesh",
                              description="Reconstruct a coloured mesh from a One-2-3-45 folder (pose.json, stage1_8/, stage2_8/).")
    rec.add_argument("views_dir", type=Path, metavar="VIEWS_DIR")
    rec.add_argument("-o", "--output", type=Path, required=True, help="mesh file: .glb, .ply (z-up world frame) or .obj")
    rec.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    rec.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder or official .pth (default: bundled)")
    rec.add_argument("--resolution", type=int, default=256, help="marching-cubes grid size per axis (default 256)")
    rec.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N (default auto)")
    rec.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    rec.add_argument("--norm-statistics", choices=("batch", "running"), default="batch",
                     help="BatchNorm statistics: 'batch' as the reference does at inference (default) or stored 'running'")
    rec.add_argument("--carve", action=argparse.BooleanOptionalAction, default=None, help=CARVE_HELP)
    rec.set_defaults(run=_reconstruct)

    conv = commands.add_parser("convert-checkpoint", help="official One-2-3-45 .pth -> our safetensors folder",
                               description="Convert an official One-2-3-45 reconstruction checkpoint (loaded with weights_only=True).")
    conv.add_argument("checkpoint", type=Path, metavar="IN.pth")
    conv.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    conv.set_defaults(run=_convert_checkpoint)

    z123 = commands.add_parser("convert-zero123", help="original zero123-xl.ckpt -> diffusers Zero123 folder",
                               description="Convert an original Zero123 / Zero123-XL Lightning checkpoint (read with "
                                           "weights_only=True; EMA UNet weights) into the diffusers folder the view generator loads.")
    z123.add_argument("checkpoint", type=Path, metavar="CKPT")
    z123.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    z123.add_argument("--clip-folder", type=Path, default=None, metavar="DIR",
                      help="local transformers CLIPVisionModelWithProjection folder of OpenAI CLIP ViT-L/14, "
                           "e.g. the image_encoder/ of lambdalabs/sd-image-variations-diffusers")
    z123.set_defaults(run=_convert_zero123)

    generation = argparse.ArgumentParser(add_help=False)
    generation.add_argument("--overwrite", action="store_true", help="replace existing output files")
    generation.add_argument("--zero123", type=Path, default=None, metavar="DIR",
                            help="Zero123 / Zero123-XL diffusers folder (default: the bundled small generator)")
    generation.add_argument("--checkpoint", type=Path, default=None, help="reconstruction checkpoint (default: bundled)")
    generation.add_argument("--polar", type=float, default=None, help="polar angle of the input view in degrees (default: estimated)")
    generation.add_argument("--steps", type=int, default=None,
                            help="DDIM steps of stage 1 (stage 2 uses 2/3 of it); default 75/50 as the reference")
    generation.add_argument("--seed", type=int, default=0)
    generation.add_argument("--resolution", type=int, default=256)
    generation.add_argument("--carve", action=argparse.BooleanOptionalAction, default=None, help=CARVE_HELP)
    generation.add_argument("--device", default="auto")
    generation.add_argument("--precision", choices=PRECISIONS, default="auto",
                            help="view-generator arithmetic: auto = bf16 on CUDA (fp16 where bf16 is missing), fp32 elsewhere")
    generation.add_argument("--compile", action="store_true",
                            help="CUDA only: compile the view generator's UNet (channels-last, fused attention, CUDA graphs); "
                                 "the first image waits about 45 s per batch shape on an H100, later ones run about twice as fast, so it pays in batch")
    generation.add_argument("--compile-all", action="store_true",
                            help="--compile, and the VAE and CLIP too: about 1.5 min more before the first image, about 0.1 s less per image")

    i2m = commands.add_parser("image2mesh", parents=[generation], help="one image -> coloured mesh (Zero123 views + reconstruction)",
                              description="One-2-3-45 end to end: cut out and recentre the object, generate 8 + 32 views with "
                                          "the frozen Zero123, reconstruct and export.")
    i2m.add_argument("image", type=Path, metavar="IMAGE")
    i2m.add_argument("-o", "--output", type=Path, required=True, help="mesh file: .glb, .ply or .obj")
    i2m.add_argument("--views-dir", type=Path, default=None, help="keep the One-2-3-45 view folder here")
    i2m.set_defaults(run=_image2mesh)

    bat = commands.add_parser("batch", parents=[generation], help="a folder of images -> one mesh each (resumable, torchrun-sharded)",
                              description="image2mesh over every image of a folder. Meshes already there are skipped, so a re-run "
                                          "resumes; each is written atomically. Under `torchrun --nproc_per_node N -m backend "
                                          "batch ...` rank r takes every N-th image on its own GPU. Exit code 1 if any image failed.")
    bat.add_argument("image_dir", type=Path, metavar="IMAGE_DIR")
    bat.add_argument("-o", "--out-dir", type=Path, required=True, help="folder for the meshes (IMAGE_STEM.glb)")
    bat.add_argument("--format", choices=(".glb", ".ply", ".obj"), default=".glb")
    bat.add_argument("--keep-views", action="store_true", help="also keep each image's One-2-3-45 view folder")
    bat.set_defaults(run=_batch)

    tr = commands.add_parser("train", help="train the reconstruction module (view generator frozen)",
                             description="Train the reconstruction network end to end; resumable, checkpoints in our safetensors format. "
                                         "Runs unchanged under `torchrun --nproc_per_node N -m backend train ...` "
                                         "(DistributedDataParallel; NCCL on GPUs, gloo on the CPU; rank 0 writes).")
    tr.add_argument("--data", nargs="+", default=["procedural"],
                    help="'procedural' (default), a training set made by render-dataset (it has split.json), or a folder of "
                         "meshes (OBJ/PLY/GLB/OFF/STL); several are mixed evenly, e.g. --data procedural data/real_meshes/train")
    tr.add_argument("--up-axis", choices=("z", "y"), default="z", help="up axis of the meshes in --data (default z)")
    tr.add_argument("--out", type=Path, required=True, help="run folder; it is also a selectable checkpoint")
    tr.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    tr.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                    help="start from this checkpoint's weights at step 0 (fine-tuning; e.g. backend/weights/reconstructor)")
    tr.add_argument("--steps", type=int, default=20_000)
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4, as the reference)")
    tr.add_argument("--depth-weight", type=float, default=None,
                    help="weight of the target view's depth loss (default 0: the released configuration trains without it)")
    tr.add_argument("--batch", type=int, default=1,
                    help="objects per step over all processes (default 1); under torchrun each process takes batch / N")
    tr.add_argument("--rays", type=int, default=512, help="rays per object and step (default 512)")
    tr.add_argument("--volume-resolution", type=int, default=96, help="feature volume size (96 = the released model)")
    tr.add_argument("--checkpoint-every", type=int, default=500)
    tr.add_argument("--generated-fraction", type=float, default=0.0,
                    help="share of samples whose 32 source views the frozen view generator makes from the ground-truth "
                         "stage-1 renders (One-2-3-45's mixed training; default 0 = ground-truth sources only)")
    tr.add_argument("--generator", type=Path, default=None, metavar="DIR",
                    help="view generator for --generated-fraction: a Zero123 diffusers folder (default: the bundled one)")
    tr.add_argument("--generator-steps", type=int, default=20, help="sampler steps of the generated sources (default 20)")
    tr.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after this many seconds")
    tr.add_argument("--short-schedule", action="store_true", help="scale the anneal/ramp/mask warm-ups to --steps")
    tr.add_argument("--workers", type=int, default=0, help="data-loader processes rendering samples (default 0 = in-process)")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(run=_train)

    tg = commands.add_parser("train-generator", help="train our small Zero123-architecture view generator from scratch",
                             description="Train the small view generator (VAE, then UNet + CLIP encoder + camera projection) on "
                                         "rendered One-2-3-45 rigs of procedural objects and optional meshes; resumable. The "
                                         "diffusers folder OUT/view_generator is rewritten at every checkpoint of the UNet phase.")
    tg.add_argument("--out", type=Path, required=True, help="run folder (state, log, cached renders, exported generator)")
    tg.add_argument("--meshes", type=Path, default=None, metavar="DIR", help="also train on renders of these meshes")
    tg.add_argument("--up-axis", choices=("z", "y"), default="z", help="up axis of the meshes in --meshes (default z)")
    tg.add_argument("--steps-vae", type=int, default=5_000, help="VAE steps (default 5000)")
    tg.add_argument("--steps", type=int, default=10_000, help="UNet steps (default 10000)")
    tg.add_argument("--batch-vae", type=int, default=32, help="images per VAE step (default 32)")
    tg.add_argument("--batch", type=int, default=256, help="view pairs per UNet step (default 256)")
    tg.add_argument("--objects", type=int, default=512, help="rendered objects held on the device (default 512)")
    tg.add_argument("--refresh-objects", type=int, default=8, help="new objects rendered every 100 steps (default 8)")
    tg.add_argument("--workers", type=int, default=0, help="loader processes building meshes (default 0 = in-process)")
    tg.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    tg.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                    help="skip the VAE phase and start the UNet phase from this generator folder (e.g. an exported "
                         "view_generator whose run state is lost)")
    tg.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after this many seconds")
    tg.add_argument("--tiny", action="store_true", help="a tiny model at 64 x 64 (smoke runs)")
    tg.add_argument("--device", default="auto")
    tg.add_argument("--seed", type=int, default=0)
    tg.set_defaults(run=_train_generator)

    rd = commands.add_parser("render-dataset", help="a folder of meshes -> a training set in One-2-3-45's layout",
                             description="Render every mesh (OBJ/PLY/GLB..., textured or not) at the One-2-3-45 rig into the "
                                         "training layout `train --data` reads: 8 target views with uint16 depth in mm, "
                                         "32 source views, pose.json per object, split.json. Colour from Blender's Cycles "
                                         "(a separate Blender process) or the built-in rasterizer; depth from the rasterizer.")
    rd.add_argument("mesh_dir", type=Path, metavar="MESH_DIR")
    rd.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    rd.add_argument("--renderer", choices=("blender", "builtin"), default="blender")
    rd.add_argument("--blender", default=None, metavar="PATH",
                    help="Blender executable (default: this Python's bpy module, as `pip install bpy` provides)")
    rd.add_argument("--up-axis", choices=("z", "y"), default="z", help="up axis of the meshes (default z)")
    rd.add_argument("--object-size", type=float, default=0.7, help="longest side of each object in world units (default 0.7)")
    rd.add_argument("--polar-range", type=float, nargs=2, default=(45.0, 120.0), metavar=("MIN", "MAX"),
                    help="input polar angles drawn per object, degrees (default 45 120)")
    rd.add_argument("--val-fraction", type=float, default=0.1, help="share of objects in the validation split (default 0.1)")
    rd.add_argument("--seed", type=int, default=0)
    rd.set_defaults(run=_render_dataset)

    ev = commands.add_parser("evaluate", help="score a checkpoint on meshes rendered at the rig",
                             description="Render each mesh at the One-2-3-45 rig, reconstruct, and report Chamfer, F-score, "
                                         "volume IoU (next to a visual hull from the same masks) and novel-view PSNR/SSIM.")
    ev.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder or official .pth (default: bundled)")
    ev.add_argument("--meshes", type=Path, required=True, help="a mesh file or a folder of meshes")
    ev.add_argument("--out", type=Path, required=True, help="folder for views, meshes, contact sheets and results")
    ev.add_argument("--up-axis", choices=("z", "y"), default="z")
    ev.add_argument("--polar", type=float, default=60.0, help="polar angle of the input view (default 60)")
    ev.add_argument("--object-size", type=float, default=0.7, help="longest side of each mesh in world units (default 0.7)")
    ev.add_argument("--resolution", type=int, default=256)
    ev.add_argument("--generator", type=Path, default=None, metavar="DIR",
                    help="single-image mode: a Zero123 folder (or 'bundled') makes the views from rig view 0 alone")
    ev.add_argument("--steps", type=int, default=None, help="with --generator: stage-1 DDIM steps (stage 2 uses 2/3; default 75/50)")
    ev.add_argument("--carve", action=argparse.BooleanOptionalAction, default=None, help=CARVE_HELP)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(run=_evaluate)

    srv = commands.add_parser("serve", help="worker for the add-on: JSON-lines protocol on stdin/stdout",
                              description="Serve jobs over newline-delimited JSON on stdin/stdout, one at a time, until "
                                          "shutdown or end of input (docs/protocol.md). Logs go to stderr.")
    srv.add_argument("--results-dir", type=Path, default=None, metavar="DIR",
                     help="folder for the per-job result folders (default: the system temporary folder)")
    srv.set_defaults(run=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # out of memory deep inside a run: advice instead of a traceback
        advice = out_of_memory_advice(exc)
        if advice is None:
            raise
        print(f"error: {advice}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
