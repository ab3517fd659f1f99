"""Official One-2-3-45 checkpoints load strictly and safely; our safetensors format round-trips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from backend.checkpoints import CONFIG_FILE, WEIGHTS_FILE, load_reconstructor, save_checkpoint
from backend.errors import CheckpointError
from backend.models import One2345Reconstructor

REPO = Path(__file__).resolve().parents[1]


def official_dict(model: One2345Reconstructor, drop_counters: bool = True) -> dict:
    """A checkpoint in the released layout: per-module state dicts plus optimizer and step counters."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    loss = sum(p.sum() for p in model.parameters())
    loss.backward()
    optimizer.step()
    ckpt = {"optimizer": optimizer.state_dict(), "iter_step": 215000, "val_step": 134}
    for name, module in model.named_children():
        state = module.state_dict()
        if drop_counters:  # inplace_abn < 1.1 wrote none: the loader must tolerate their absence
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        ckpt[name] = state
    return ckpt


@pytest.fixture()
def official_file(tmp_path: Path, seeded: None) -> tuple[Path, One2345Reconstructor]:
    model = One2345Reconstructor()
    path = tmp_path / "ckpt_215000.pth"
    torch.save(official_dict(model), path)
    return path, model


def test_official_checkpoint_loads_strictly(official_file) -> None:
    path, source = official_file
    model, info = load_reconstructor(path)
    assert info.step == 215000
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("damage", ["wrong_shape", "missing", "missing_module"])
def test_mismatched_checkpoint_is_rejected_naming_the_key(tmp_path: Path, damage: str) -> None:
    ckpt = official_dict(One2345Reconstructor())
    if damage == "wrong_shape":
        ckpt["sdf_network_lod0"]["sparse_costreg_net.conv5.net.0.kernel"] = torch.zeros(27, 64, 32)
        expected = "sparse_costreg_net.conv5.net.0.kernel"
    elif damage == "missing":
        del ckpt["rendering_network_lod0"]["rgb_fc.4.weight"]
        expected = "rendering_network_lod0.rgb_fc.4.weight"
    else:
        del ckpt["variance_network_lod0"]
        expected = "variance_network_lod0"
    path = tmp_path / "bad.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=expected.replace(".", r"\.")):
        load_reconstructor(path)


class CodeRunningPayload:
    """Unpickling this would create a marker directory (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.makedirs, (str(self.marker),))


@pytest.mark.parametrize("writer", ["torch_save", "plain_pickle"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "payload_ran"
    ckpt = official_dict(One2345Reconstructor())
    ckpt["sdf_network_lod0"]["evil"] = CodeRunningPayload(marker)
    path = tmp_path / "evil.pth"
    if writer == "torch_save":
        torch.save(ckpt, path)
    else:
        import pickle

        path.write_bytes(pickle.dumps(ckpt))
    with pytest.raises(CheckpointError, match="refused"):
        load_reconstructor(path)
    assert not marker.exists()


def test_convert_checkpoint_cli_round_trips(official_file, tmp_path: Path) -> None:
    path, source = official_file
    out = tmp_path / "converted"
    result = subprocess.run([sys.executable, "-m", "backend", "convert-checkpoint", str(path), str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    meta = json.loads((out / CONFIG_FILE).read_text())
    assert meta["config"]["architecture"] == "one2345-lod0"
    assert meta["step"] == 215000
    assert meta["provenance"]["converted_from"] == "ckpt_215000.pth"
    model, info = load_reconstructor(out)
    assert info.step == 215000
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[key], value), key


def test_truncated_safetensors_is_reported(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ckpt", One2345Reconstructor(), step=10)
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_reconstructor(folder)


def test_config_that_lies_about_shapes_is_rejected(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ckpt", One2345Reconstructor(), step=10)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    meta["config"]["sdf_hidden"] = 64
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.safetensors \(network sizes from config\.json\) does not fit .*wrong shape"):
        load_reconstructor(folder)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 8, 3, 3)}}, path)
    with pytest.raises(CheckpointError, match="not a One-2-3-45 reconstruction checkpoint"):
        load_reconstructor(path)


def test_folder_of_another_architecture_is_rejected_naming_the_file(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ckpt", One2345Reconstructor(), step=10)
    config = folder / CONFIG_FILE
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "config": {**meta["config"], "architecture": "zero123-unet"}}))
    with pytest.raises(CheckpointError, match=r"config\.json is not a valid checkpoint config \(architecture 'zero123-unet'"):
        load_reconstructor(folder)

    config.write_text(json.dumps(meta))
    save_file({"conv_in.weight": torch.zeros(32, 8, 3, 3), "conv_in.bias": torch.zeros(32)}, folder / WEIGHTS_FILE)  # a UNet's
    with pytest.raises(CheckpointError, match=r"model\.safetensors .* does not fit .*missing: .*unexpected: conv_in\.bias"):
        load_reconstructor(folder)


def test_cli_error_is_one_line_and_nonzero(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "backend", "convert-checkpoint", str(tmp_path / "nope.pth"), str(tmp_path / "o")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not found" in lines[0]
