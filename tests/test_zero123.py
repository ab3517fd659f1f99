"""Zero123 view generator and ckpt converter, on tiny seeded random components (CPU, no network)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers read it: nothing may reach for the hub

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from safetensors.torch import load_file
from torch._inductor.utils import run_and_get_code

from backend.cameras import relative_pose_vector
from backend.errors import BackendError, CancelledError, CheckpointError, InputError
from backend.generation import ViewGenerator
from backend.generation.channel_stats_group_norm import MIN_IMAGES, ChannelStatsGroupNorm, use_channel_stats_group_norm
from backend.generation.convert import LdmArchitecture, convert_zero123_checkpoint
from backend.generation.ddim import ddim_step, ddim_timesteps
from backend.generation.layout_keeping_upsample import LayoutKeepingUpsample, keep_layout_when_upsampling
from backend.generation.one_token_attention import OneTokenCrossAttention, use_one_token_cross_attention
from backend.generation.per_image_vectors import ColumnSlice, OneTokenValuesUNet, TimeProjections, batch_per_image_vectors
from backend.generation.residual_in_gemm_block import OP_NAMESPACE, ResidualInGemmBlock, use_residual_in_gemm_blocks
from backend.generation.zero123 import (START_NOISE, START_NOISED_CONDITION, SamplerConfig, Zero123Generator, clip_pixels,
                                        combine_guidance, guidance_inputs, sampling_unet)

from .tiny_zero123 import TINY, tiny_generator

POSES = [(0.0, 90.0), (30.0, 210.0)]
STEPS = 4  # the reference schedule turns this into 3 steps: t = 501, 251, 1


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator() -> Zero123Generator:
    return tiny_generator()


@pytest.fixture(scope="module")
def folder(generator, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zero123") / "tiny"
    generator.save_folder(path)
    return path


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A white 256x256 picture of a red disc and a blue bar."""
    y, x = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    img = torch.ones(3, 256, 256)
    disc = (x - 110) ** 2 + (y - 140) ** 2 < 60**2
    img[:, disc] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    img[:, 40:80, 150:220] = torch.tensor([0.1, 0.2, 0.8])[:, None, None]
    return img


def test_default_architecture_is_zero123():
    config = LdmArchitecture().unet_config()
    assert config["block_out_channels"] == [320, 640, 1280, 1280]
    assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert config["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert (config["in_channels"], config["sample_size"], config["cross_attention_dim"], config["attention_head_dim"]) == (8, 32, 768, 8)
    assert LdmArchitecture().vae_config()["block_out_channels"] == [128, 256, 512, 512]
    tiny = TINY.unet_config()
    assert tiny["down_block_types"] == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert tiny["up_block_types"] == ["UpBlock2D", "CrossAttnUpBlock2D"]


def test_reference_step_quirk():
    s75, s50 = ddim_timesteps(75, True), ddim_timesteps(50, True)
    assert (len(s75), s75[0], s75[-1]) == (76, 976, 1)
    assert (len(s50), s50[0], s50[-1]) == (49, 961, 1)
    assert all(a - b == 13 for a, b in zip(s75, s75[1:]))
    standard = ddim_timesteps(50, False)
    assert (len(standard), standard[0], standard[-1]) == (50, 981, 1)
    assert len(ddim_timesteps(75, False)) == 75
    with pytest.raises(InputError):
        ddim_timesteps(1, True)
    with pytest.raises(InputError):
        ddim_timesteps(0, False)


def test_ddim_step_math():
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    a, a_prev = torch.tensor(0.3), torch.tensor(0.7)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    deterministic = ddim_step(x_t, eps, a, a_prev, 0.0, gen)
    torch.testing.assert_close(deterministic, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps)
    sigma = torch.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(5))
    stochastic = ddim_step(x_t, eps, a, a_prev, 1.0, torch.Generator().manual_seed(5))
    expected = a_prev.sqrt() * x0 + torch.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise
    torch.testing.assert_close(stochastic, expected)


def test_clip_preprocessing_matches_reference():
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    out = clip_pixels(x, 224)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert out.shape == (1, 3, 224, 224)
    # align_corners=True keeps the corner pixels exactly.
    normalised = ((x + 1) / 2 - mean) / std
    torch.testing.assert_close(out[..., 0, 0], normalised[..., 0, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[..., -1, -1], normalised[..., -1, -1], atol=1e-4, rtol=0)
    raw = torch.nn.functional.interpolate(x, (224, 224), mode="bicubic", align_corners=True)
    torch.testing.assert_close(out, ((raw + 1) / 2 - mean) / std)


def test_guidance_inputs_zero_latent_and_token():
    latents, cond, token = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 1, 32)
    sample, context = guidance_inputs(latents, cond, token)
    assert sample.shape == (4, 8, 8, 8) and context.shape == (4, 1, 32)
    assert torch.equal(sample[:2, :4], latents) and torch.equal(sample[2:, :4], latents)
    assert torch.count_nonzero(sample[:2, 4:]) == 0 and torch.equal(sample[2:, 4:], cond)
    assert torch.count_nonzero(context[:2]) == 0 and torch.equal(context[2:], token)
    eps = torch.cat([torch.full((2, 1), 1.0), torch.full((2, 1), 2.0)])
    assert torch.equal(combine_guidance(eps, 3.0), torch.full((2, 1), 4.0))


def test_generate_shape_range_and_protocol(generator: Zero123Generator, image):
    assert isinstance(generator, ViewGenerator)
    out = generator.generate(image, POSES, STEPS, seed=3)
    assert out.shape == (2, 3, 256, 256) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not any(p.requires_grad for p in generator.unet.parameters()) and not generator.unet.training
    assert torch.equal(out, generator.generate(image, POSES, STEPS, seed=3))
    assert not torch.equal(out, generator.generate(image, POSES, STEPS, seed=4))


def test_different_poses_give_different_views(generator: Zero123Generator, image):
    a = generator.generate(image, [(0.0, 90.0)], STEPS, seed=1)
    b = generator.generate(image, [(0.0, 180.0)], STEPS, seed=1)
    assert (a - b).abs().max() > 1e-4


def test_conditioning_matches_reference(generator: Zero123Generator, image):
    cond_latent, token = generator.conditioning(image, POSES)
    x = image[None] * 2 - 1
    mode = generator.vae.encode(x).latent_dist.mode()
    torch.testing.assert_close(cond_latent, mode.expand(2, -1, -1, -1))  # unscaled: no 0.18215 factor
    embedding = generator.image_encoder(pixel_values=clip_pixels(x, 224)).image_embeds
    for row, (dp, da) in enumerate(POSES):
        pose = torch.tensor([relative_pose_vector(dp, da)])
        assert pose[0, 0] == pytest.approx(math.radians(dp)) and pose[0, 3] == 0
        expected = generator.projection.projection(torch.cat([embedding, pose], dim=-1))
        torch.testing.assert_close(token[row], expected)


def test_unet_sees_zero_unconditional_branch_and_reference_timesteps(generator: Zero123Generator, image):
    calls = []

    def record(module, args, kwargs):
        calls.append((args[0].clone(), args[1].clone(), kwargs["encoder_hidden_states"].clone()))

    handle = generator.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generator.generate(image, POSES, STEPS, seed=0)
    finally:
        handle.remove()
    cond_latent, token = generator.conditioning(image, POSES)
    assert [int(t[0]) for _, t, _ in calls] == [501, 251, 1]
    for sample, t, context in calls:
        assert sample.shape == (4, 8, 32, 32) and t.shape == (4,)
        assert torch.count_nonzero(sample[:2, 4:]) == 0 and torch.count_nonzero(context[:2]) == 0
        torch.testing.assert_close(sample[2:, 4:], cond_latent)
        torch.testing.assert_close(context[2:], token)
        assert torch.equal(sample[:2, :4], sample[2:, :4])


def test_progress_and_cancel(generator: Zero123Generator, image):
    seen = []
    generator.generate(image, POSES[:1], STEPS, seed=0, progress=lambda *a: seen.append(a))
    assert seen == [("zero123", 1, 3), ("zero123", 2, 3), ("zero123", 3, 3)]

    def cancel(stage, step, total):
        raise CancelledError("stop")

    with pytest.raises(CancelledError):
        generator.generate(image, POSES[:1], STEPS, seed=0, progress=cancel)


def test_standard_schedule_without_quirk(image):
    generator = tiny_generator(sampler=SamplerConfig(reference_step_quirk=False, eta=0.0))
    seen = []
    out = generator.generate(image, POSES[:1], 3, seed=0, progress=lambda *a: seen.append(a))
    assert seen[-1] == ("zero123", 3, 3) and out.shape == (1, 3, 256, 256)
    with pytest.raises(InputError):
        generator.generate(image[:1], POSES, 3)


def assert_same_views(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float rounding: transformers maps loaded CLIP weights from the file, and the different memory
    alignment changes CPU kernels' summation order by an ulp (weights themselves are bit-identical)."""
    torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_one_token_cross_attention_matches_full_attention(fused: bool):
    """The shortcut gives the UNet's output with diffusers' own attention, fused projections or not; a longer
    context falls back to that attention."""
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**TINY.unet_config()).eval()
    if fused:
        unet.fuse_qkv_projections()
    sample, t = torch.randn(2, 8, 8, 8), torch.tensor([10, 700])
    one, two = torch.randn(2, 1, TINY.context_dim), torch.randn(2, 2, TINY.context_dim)
    with torch.no_grad():
        reference = [unet(sample, t, encoder_hidden_states=c).sample for c in (one, two)]
        use_one_token_cross_attention(unet)
        shortcut = [unet(sample, t, encoder_hidden_states=c).sample for c in (one, two)]
    cross = [m for n, m in unet.attn_processors.items() if "attn2" in n]
    assert cross and all(isinstance(p, OneTokenCrossAttention) for p in cross)
    assert not any(isinstance(p, OneTokenCrossAttention) for n, p in unet.attn_processors.items() if "attn1" in n)
    torch.testing.assert_close(shortcut[0], reference[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shortcut[1], reference[1], atol=0, rtol=0)
    assert not torch.allclose(reference[0], reference[1], atol=1e-3)  # the context matters, so the check means something


@pytest.mark.parametrize("fused", [False, True])
def test_residual_in_gemm_blocks_match_diffusers_blocks(fused: bool):
    """With the sums in the output GEMMs the UNet gives diffusers' output for a one-token context, with fused
    projections and the one-token shortcut or without; a longer context takes the plain path; names stay."""
    torch.manual_seed(8)
    unet = UNet2DConditionModel(**TINY.unet_config()).eval()
    sample, t = torch.randn(3, 8, 8, 8), torch.tensor([10, 500, 990])
    one, two = torch.randn(3, 1, TINY.context_dim), torch.randn(3, 2, TINY.context_dim)
    names = set(unet.state_dict())
    with torch.no_grad():
        reference = [unet(sample, t, encoder_hidden_states=c).sample for c in (one, two)]
        if fused:
            unet.fuse_qkv_projections()
            use_one_token_cross_attention(unet)
        use_residual_in_gemm_blocks(unet)
        swapped = [unet(sample, t, encoder_hidden_states=c).sample for c in (one, two)]
    blocks = [m for m in unet.modules() if isinstance(m, ResidualInGemmBlock)]
    assert len(blocks) == sum(len(b.attentions) for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks)
                              if hasattr(b, "attentions")) > 0
    assert {n for n in unet.state_dict() if not re.search(r"\.to_(qkv|kv)\.", n)} == names  # fusing adds these
    torch.testing.assert_close(swapped[0], reference[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swapped[1], reference[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reference[0], reference[1], atol=1e-3)


def first_transformer_block(unet: UNet2DConditionModel) -> BasicTransformerBlock:
    return next(module for module in unet.modules() if isinstance(module, BasicTransformerBlock))


def test_compiled_residual_in_gemm_block_accumulates_in_place_correctly():
    """Compiled, the block gives diffusers' block output and leaves its input as it was; both output GEMMs
    accumulate into the buffer Inductor's sum kernel wrote, with no copy of it first."""
    torch.manual_seed(5)
    unet = UNet2DConditionModel(**TINY.unet_config()).eval()
    block = first_transformer_block(unet)
    hidden_states = torch.randn(2, 16, block.norm1.normalized_shape[0])
    context, before = torch.randn(2, 1, TINY.context_dim), hidden_states.clone()
    with torch.no_grad():
        reference = block(hidden_states, encoder_hidden_states=context)
        compiled = torch.compile(ResidualInGemmBlock(block), dynamic=False)
        output, (code,) = run_and_get_code(compiled, hidden_states, encoder_hidden_states=context)
    torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(hidden_states, before)
    assert code.count(f"{OP_NAMESPACE}.add_matmul_.default(") == 2
    assert "clone" not in code and ".copy_(" not in code


def test_residual_in_gemm_block_gives_diffusers_gradients_where_autograd_needs_them():
    """The in-place GEMMs have no gradient, so a call that autograd records takes the plain path: same gradients."""
    torch.manual_seed(6)
    unet = UNet2DConditionModel(**TINY.unet_config())
    block = first_transformer_block(unet)
    hidden_states = torch.randn(2, 16, block.norm1.normalized_shape[0], requires_grad=True)
    context = torch.randn(2, 1, TINY.context_dim)
    gradients = []
    for module in (block, ResidualInGemmBlock(block)):
        block.zero_grad()
        hidden_states.grad = None
        module(hidden_states, encoder_hidden_states=context).square().sum().backward()
        gradients.append([tensor.clone() for tensor in (hidden_states.grad, block.attn1.to_out[0].weight.grad,
                                                        block.ff.net[2].weight.grad)])
    for swapped, reference in zip(*reversed(gradients)):
        torch.testing.assert_close(swapped, reference)


def test_per_image_vectors_from_two_gemms_match_diffusers():
    """The time projections and one-token values from one GEMM each give diffusers' UNet output, for a one-token
    context and (own values, plain path) a two-token one; the values the UNet uses are the wrapper's."""
    torch.manual_seed(9)
    unet = UNet2DConditionModel(**TINY.unet_config()).eval()
    sample, t = torch.randn(3, 8, 8, 8), torch.tensor([10, 500, 990])
    one, two = torch.randn(3, 1, TINY.context_dim), torch.randn(3, 2, TINY.context_dim)
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    with torch.no_grad():
        reference = [unet(sample, t, encoder_hidden_states=c).sample for c in (one, two)]
        use_residual_in_gemm_blocks(unet)
        batched = batch_per_image_vectors(unet)
        outputs = [batched(sample, t, encoder_hidden_states=c).sample for c in (one, two)]
        for module in unet.modules():
            if isinstance(module, ResidualInGemmBlock):
                module.attn2.to_v.weight.zero_()
        without_own_values = batched(sample, t, encoder_hidden_states=one).sample
        own_values_only = unet(sample, t, encoder_hidden_states=one).sample
    assert isinstance(batched, OneTokenValuesUNet) and isinstance(unet.time_embedding, TimeProjections)
    assert all(isinstance(resnet.time_emb_proj, ColumnSlice) for resnet in resnets)
    assert unet.time_embedding.weight.shape[0] == sum(resnet.norm2.num_channels for resnet in resnets)
    for output, expected in zip((*outputs, without_own_values), (*reference, reference[0])):
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(own_values_only, reference[0], atol=1e-3)  # zeroed to_v: the wrapper's values count


def test_sampling_unet_compiled_on_the_cpu_matches_diffusers():
    """The whole rewrite ``compile()`` compiles, compiled as one graph (CPU Inductor, no CUDA graphs), gives the
    eager diffusers UNet's output for a channels-last 64-row stage-2 call with a one-token context."""
    torch.manual_seed(12)
    unet = UNet2DConditionModel(**TINY.unet_config()).eval()
    sample = torch.randn(64, 8, 8, 8).to(memory_format=torch.channels_last)
    t, context = torch.full((64,), 500), torch.randn(64, 1, TINY.context_dim)
    with torch.no_grad():
        reference = unet(sample, t, encoder_hidden_states=context).sample
        compiled = torch.compile(sampling_unet(unet), dynamic=False, fullgraph=True)
        output = compiled(sample, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(output, reference, atol=2e-5, rtol=1e-5)


def stage2_outputs_around(swap: Callable[[UNet2DConditionModel], None], seed: int, size: int = 8
                          ) -> tuple[UNet2DConditionModel, set[str], torch.Tensor, torch.Tensor]:
    """A seeded tiny channels-last UNet's output for one random 64-row stage-2 call before and after ``swap(unet)``,
    with the UNet and its parameter names from before."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY.unet_config()).eval().to(memory_format=torch.channels_last)
    sample = torch.randn(64, 8, size, size).to(memory_format=torch.channels_last)
    t, context = torch.randint(0, 1000, (64,)), torch.randn(64, 1, TINY.context_dim)
    names = set(unet.state_dict())
    with torch.no_grad():
        before = unet(sample, t, encoder_hidden_states=context).sample
        swap(unet)
        return unet, names, before, unet(sample, t, encoder_hidden_states=context).sample


@pytest.mark.parametrize("size", [8, 7])
def test_layout_keeping_upsampling_matches_diffusers(size: int):
    """The channels-last UNet's output at the stage-2 batch (64 rows, where diffusers' upsampler switches layout),
    also at an odd size (the upsampler is then given the skip's size); parameter names are unchanged."""
    unet, names, reference, kept = stage2_outputs_around(keep_layout_when_upsampling, 4, size)
    assert any(isinstance(m, LayoutKeepingUpsample) for m in unet.modules())
    assert not any(isinstance(m, Upsample2D) for m in unet.modules())
    assert set(unet.state_dict()) == names and kept.shape == (64, 4, size, size)
    torch.testing.assert_close(kept, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape, groups", [((MIN_IMAGES, 64, 4, 4), 32), ((MIN_IMAGES + 1, 12, 5, 7), 4),
                                           ((MIN_IMAGES, 8, 5), 2), ((MIN_IMAGES - 1, 12, 5, 7), 4)])
def test_channel_stats_group_norm_matches_group_norm(shape: tuple[int, ...], groups: int):
    """Channels-last input whose channel means differ widely, so a group's variance is much more than the mean of
    its channels' variances; a batch under MIN_IMAGES goes through F.group_norm itself."""
    torch.manual_seed(len(shape) + groups)
    norm = torch.nn.GroupNorm(groups, shape[1], eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(shape) * 3 + torch.randn(shape[:2] + (1,) * (len(shape) - 2)) * 5
    if x.ndim == 4:
        x = x.to(memory_format=torch.channels_last)
    reference = F.group_norm(x.double(), groups, norm.weight.double(), norm.bias.double(), norm.eps)
    with torch.no_grad():
        out = ChannelStatsGroupNorm.like(norm)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert ((out.double() - reference).norm() / reference.norm()).item() < 1e-6


def test_channel_stats_group_norm_in_the_unet_keeps_names_and_output():
    """The channels-last UNet at the stage-2 batch (64 rows), where the channel-statistics path is taken."""
    unet, names, reference, swapped = stage2_outputs_around(use_channel_stats_group_norm, 6)
    assert any(isinstance(m, ChannelStatsGroupNorm) for m in unet.modules())
    assert not any(type(m) is torch.nn.GroupNorm for m in unet.modules())
    assert set(unet.state_dict()) == names
    torch.testing.assert_close(swapped, reference, atol=1e-5, rtol=1e-5)


def test_compiling_needs_cuda_and_leaves_the_generator_as_it_was(generator: Zero123Generator, image):
    before = generator.generate(image, [(0.0, 30.0)], steps=3, seed=1)
    with pytest.raises(BackendError, match="needs a CUDA device, not cpu: drop --compile"):
        generator.compile()
    assert generator.denoiser is generator.unet
    torch.testing.assert_close(generator.generate(image, [(0.0, 30.0)], steps=3, seed=1), before, rtol=0, atol=0)


def test_save_and_load_round_trip(generator: Zero123Generator, folder: Path, image):
    assert {p.name for p in folder.iterdir()} >= {"model_index.json", "unet", "vae", "image_encoder", "cc_projection", "scheduler"}
    loaded = Zero123Generator.from_folder(folder, "cpu", torch.float32)
    assert_same_views(generator.generate(image, POSES, STEPS, seed=11), loaded.generate(image, POSES, STEPS, seed=11))


def test_sampler_start_is_saved_and_read_from_the_folder(generator: Zero123Generator, folder: Path, tmp_path: Path, image):
    """sampler.json: a folder without one samples as the reference; a start from the noised input latent changes
    the first latent only; a malformed file is one clear error naming it."""
    assert json.loads((folder / "sampler.json").read_text()) == {"start": START_NOISE}
    copy = _broken_copy(folder, tmp_path)
    (copy / "sampler.json").unlink()
    assert Zero123Generator.from_folder(copy).sampler == SamplerConfig()
    (copy / "sampler.json").write_text(json.dumps({"start": START_NOISED_CONDITION}))
    loaded = Zero123Generator.from_folder(copy)
    assert loaded.sampler.start == START_NOISED_CONDITION
    reference = generator.generate(image, POSES, STEPS, seed=3)
    assert not torch.allclose(loaded.generate(image, POSES, STEPS, seed=3), reference)
    for bad in ('{"start": "zeros"}', '{"start": "noise", "eta": 0}', "[1]", "{"):
        (copy / "sampler.json").write_text(bad)
        with pytest.raises(CheckpointError, match="sampler.json"):
            Zero123Generator.from_folder(copy)


def test_projection_key_layouts(generator: Zero123Generator, folder: Path, tmp_path: Path, image):
    from safetensors.torch import load_file, save_file

    expected = generator.generate(image, POSES[:1], STEPS, seed=2)
    weights = load_file(folder / "cc_projection" / "diffusion_pytorch_model.safetensors")
    for name, prefix in (("clip_camera_projection", "proj."), ("cc_projection", "")):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        shutil.rmtree(copy / "cc_projection")
        (copy / name).mkdir(exist_ok=True)
        save_file({f"{prefix}{k.split('.')[-1]}": v for k, v in weights.items()}, copy / name / "diffusion_pytorch_model.safetensors")
        loaded = Zero123Generator.from_folder(copy)
        assert_same_views(loaded.generate(image, POSES[:1], STEPS, seed=2), expected)


def _broken_copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(folder, copy)
    return copy


def test_missing_component_names_the_file(folder: Path, tmp_path: Path):
    copy = _broken_copy(folder, tmp_path)
    shutil.rmtree(copy / "unet")
    with pytest.raises(CheckpointError, match=r"unet.config\.json is missing.*convert-zero123"):
        Zero123Generator.from_folder(copy)
    with pytest.raises(CheckpointError, match="does not exist"):
        Zero123Generator.from_folder(tmp_path / "nowhere")


@pytest.mark.parametrize("relative", ["unet/diffusion_pytorch_model.safetensors", "image_encoder/model.safetensors",
                                      "cc_projection/diffusion_pytorch_model.safetensors"])
def test_truncated_weights_name_the_file(folder: Path, tmp_path: Path, relative: str):
    copy = _broken_copy(folder, tmp_path)
    path = copy / relative
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(relative.split("/")[-1])):
        Zero123Generator.from_folder(copy)


def test_missing_weights_file_names_it(folder: Path, tmp_path: Path):
    copy = _broken_copy(folder, tmp_path)
    (copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"vae.diffusion_pytorch_model\.safetensors is missing.*bennyguo"):
        Zero123Generator.from_folder(copy)


def test_pickled_weights_with_a_code_payload_are_refused_naming_the_file(folder: Path, tmp_path: Path):
    copy = _broken_copy(folder, tmp_path)
    safetensors = copy / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(safetensors)
    safetensors.unlink()
    marker = tmp_path / "ran.txt"
    torch.save({**state, "extra": _Payload(marker)}, copy / "unet" / "diffusion_pytorch_model.bin")  # the older .bin layout
    with pytest.raises(CheckpointError, match=r"unet.diffusion_pytorch_model\.bin was refused: .*GLOBAL (builtins\.)?exec\b"):
        Zero123Generator.from_folder(copy)
    assert not marker.exists()


def test_config_that_lies_about_sizes_names_the_weights_and_the_config(folder: Path, tmp_path: Path):
    copy = _broken_copy(folder, tmp_path)
    config_path = copy / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["block_out_channels"] = [2 * c for c in config["block_out_channels"]]
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unet.diffusion_pytorch_model\.safetensors cannot be loaded .*does not "
                                              r"match .*unet.config\.json"):
        Zero123Generator.from_folder(copy)


def test_unet_of_another_architecture_is_refused(folder: Path, tmp_path: Path):
    """A Stable Diffusion UNet (4 input channels: no concatenated image latent) where Zero123's belongs."""
    copy = _broken_copy(folder, tmp_path)
    shutil.rmtree(copy / "unet")
    torch.manual_seed(0)
    UNet2DConditionModel(**{**TINY.unet_config(), "in_channels": 4}).save_pretrained(copy / "unet")
    with pytest.raises(CheckpointError, match="do not fit together .*the UNet maps 4 -> 4 channels, Zero123 needs 8 -> 4"):
        Zero123Generator.from_folder(copy)


# ---- the original Lightning checkpoint -------------------------------------------------------------------------

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    head, tail = rest.split(".", 1)
    return f"{RESNET[head]}.{tail}"


def ldm_unet_name(key: str, unet: UNet2DConditionModel) -> str:
    """openaimodel.UNetModel name of a diffusers UNet key (the inverse of the LDM -> diffusers mapping)."""
    n = unet.config.layers_per_block + 1
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    module, param = key.rsplit(".", 1)
    if module in top:
        return f"{top[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.0.{_resnet(m[3])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * n + int(m[2])}.0.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * n + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        slot = 2 if "CrossAttn" in unet.config.up_block_types[int(m[1])] else 1
        return f"output_blocks.{int(m[1]) * n + n - 1}.{slot}.conv.{m[2]}"
    raise AssertionError(key)


def ldm_vae_state(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """ldm AutoencoderKL names and shapes (1x1-conv attention) of a diffusers VAE."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        name = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(.+)", name):
            name = f"encoder.down.{m[1]}." + (f"block.{m[3]}" if m[2] == "resnets" else m[3].replace("0.conv", "downsample.conv"))
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(.+)", name):
            level = levels - 1 - int(m[1])
            name = f"decoder.up.{level}." + (f"block.{m[3]}" if m[2] == "resnets" else m[3].replace("0.conv", "upsample.conv"))
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", name):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", name):
            name = f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
            value = value[:, :, None, None] if m[2] != "group_norm" and m[3] == "weight" else value
        out[f"first_stage_model.{name}"] = value.clone()
    return out


def fabricate_ckpt(generator: Zero123Generator, path: Path, ema: bool = True, extra: object = None) -> None:
    """A Lightning checkpoint in zero123-xl.ckpt's layout: raw UNet perturbed, EMA copy = the generator's UNet."""
    state = {}
    for key, value in generator.unet.state_dict().items():
        ldm = ldm_unet_name(key, generator.unet)
        state[f"model.diffusion_model.{ldm}"] = value + 1.0 if ema else value.clone()
        if ema:
            state["model_ema.diffusion_model" + ldm.replace(".", "")] = value.clone()
    if ema:
        state["model_ema.decay"], state["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(100, dtype=torch.int)
    state.update(ldm_vae_state(generator.vae))
    state["cc_projection.weight"] = generator.projection.projection.weight.clone()
    state["cc_projection.bias"] = generator.projection.projection.bias.clone()
    state["cond_stage_model.model.visual.proj"] = torch.randn(4, 4)  # incomplete CLIP tower: ignored
    payload = {"state_dict": state, "global_step": 105000, "epoch": 3}
    if extra is not None:
        payload["extra"] = extra
    torch.save(payload, path)


def test_full_size_mapping_is_key_for_key():
    """The real Zero123 layout (859.5 M UNet, 686 tensors = the ckpt's 688 EMA entries less decay/num_updates),
    on meta tensors: diffusers' helpers map every LDM name onto our configs with the right shapes."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    arch = LdmArchitecture()
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**arch.unet_config()), AutoencoderKL(**arch.vae_config())
    expected = unet.state_dict()
    assert len(expected) == 686 and sum(p.numel() for p in unet.parameters()) == 859_532_484
    ldm = {f"model.diffusion_model.{ldm_unet_name(k, unet)}": v for k, v in expected.items()}
    converted = convert_ldm_unet_checkpoint(ldm, arch.unet_config())
    assert converted.keys() == expected.keys() and all(converted[k].shape == v.shape for k, v in expected.items())
    expected = vae.state_dict()
    converted = convert_ldm_vae_checkpoint(ldm_vae_state(vae), arch.vae_config())
    assert converted.keys() == expected.keys() and all(converted[k].shape == v.shape for k, v in expected.items())


@pytest.mark.parametrize("ema", [True, False])
def test_convert_lightning_checkpoint(generator: Zero123Generator, tmp_path: Path, image, ema: bool):
    ckpt = tmp_path / "zero123-tiny.ckpt"
    fabricate_ckpt(generator, ckpt, ema=ema)
    clip_dir = tmp_path / "clip"
    generator.image_encoder.save_pretrained(clip_dir)
    result = convert_zero123_checkpoint(ckpt, tmp_path / "converted", clip_dir, TINY)
    assert result.ema is ema and result.out_dir == tmp_path / "converted"
    loaded = Zero123Generator.from_folder(result.out_dir)
    for name in ("unet", "vae", "projection"):
        expected, actual = getattr(generator, name).state_dict(), getattr(loaded, name).state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[k], actual[k]) for k in expected), name
    assert_same_views(generator.generate(image, POSES[:1], STEPS, seed=5), loaded.generate(image, POSES[:1], STEPS, seed=5))


def test_convert_needs_clip_and_matching_sizes(generator: Zero123Generator, tmp_path: Path):
    ckpt = tmp_path / "zero123-tiny.ckpt"
    fabricate_ckpt(generator, ckpt)
    with pytest.raises(CheckpointError, match="--clip-folder"):
        convert_zero123_checkpoint(ckpt, tmp_path / "out", None, TINY)
    generator.image_encoder.save_pretrained(tmp_path / "clip")
    with pytest.raises(CheckpointError, match="does not fit"):
        convert_zero123_checkpoint(ckpt, tmp_path / "out", tmp_path / "clip", LdmArchitecture())
    assert not (tmp_path / "out").exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_pickle_payload_is_refused_and_not_run(generator: Zero123Generator, tmp_path: Path):
    ckpt, marker = tmp_path / "evil.ckpt", tmp_path / "ran.txt"
    fabricate_ckpt(generator, ckpt, extra=_Payload(marker))
    generator.image_encoder.save_pretrained(tmp_path / "clip")
    with pytest.raises(CheckpointError, match="refused"):
        convert_zero123_checkpoint(ckpt, tmp_path / "out", tmp_path / "clip", TINY)
    assert not marker.exists() and not (tmp_path / "out").exists()
