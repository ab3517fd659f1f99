"""build_addon.py: the wheel lock, and the Linux zip built with real wheels, installed into Blender and run.

The zip test is the slow one (about 80 s on two cores once the wheels are cached): the wheels come from
build/wheels/ (the first run downloads them: torch's CPU build through pip's configured find-links, the
rest from the package index), Blender extracts about 1 GB of them into a temporary user folder, and the
backend then imports torch and everything else from there. Blender runs in child processes
(tests/extension_in_blender.py), each with that user folder.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

import build_addon

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "spot_photo.png"


def test_the_bundled_wheels_are_the_versions_the_tests_run_on() -> None:
    linux, windows = build_addon.PLATFORMS["linux-x64"], build_addon.PLATFORMS["windows-x64"]
    pins = {pin.name: pin for pin in build_addon.read_lock()}
    on_linux = {name: pin for name, pin in pins.items() if pin.applies_to(linux)}
    assert {name: Version(metadata.version(name)).public for name in on_linux} == \
        {name: str(pin.version) for name, pin in on_linux.items()}
    assert {"torch", "numpy", "diffusers", "transformers", "scipy", "opencv-python-headless", "pymcubes"} <= set(pins)
    assert pins["numpy"].version.major == 1  # a numpy 2 wheel would shadow Blender's own for every add-on
    assert pins["colorama"].applies_to(windows) and "colorama" not in on_linux
    assert str(pins["torch"].version_for(linux)).endswith("+cpu") and pins["torch"].version_for(windows) == pins["torch"].version


def test_every_package_the_extension_imports_is_bundled() -> None:
    """The lock follows the code: a new import in backend/ or addon/ needs its wheel in requirements-extension.txt."""
    imported = set()
    for path in [*(REPO / "backend").rglob("*.py"), *(REPO / "addon").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"bpy"}  # bpy: Blender itself
    distributions = metadata.packages_distributions()
    needed = {canonicalize_name(distributions.get(module, [module])[0]) for module in third_party}
    assert needed - {pin.name for pin in build_addon.read_lock()} == set()


def test_a_pin_that_contradicts_the_development_lock_stops_the_build(tmp_path: Path) -> None:
    (tmp_path / "dev.txt").write_text("torch==2.13.0\nscipy==1.17.1\n")
    lock = tmp_path / "lock.txt"
    lock.write_text("-c dev.txt\ntorch\nscipy==1.16.0  # stale\n")
    with pytest.raises(build_addon.BuildError, match=r"lock.txt:3: scipy==1.16.0 disagrees with the constraint scipy==1.17.1"):
        build_addon.read_lock(lock)
    lock.write_text("-c dev.txt\ntorch\nrich\n")
    with pytest.raises(build_addon.BuildError, match=r"lock.txt:3: rich has no pinned version"):
        build_addon.read_lock(lock)


def _fake_wheel(folder: Path, name: str, version: str, *requires: str) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        lines = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_a_dependency_the_lock_does_not_meet_on_a_platform_stops_the_build(tmp_path: Path) -> None:
    wheels = {"app": _fake_wheel(tmp_path, "app", "1.0", "lib>=2", 'winonly; platform_system == "Windows"'),
              "lib": _fake_wheel(tmp_path, "lib", "2.1")}
    build_addon.check_dependencies(wheels, build_addon.PLATFORMS["linux-x64"])
    with pytest.raises(build_addon.BuildError, match=r"^app needs winonly; .* does not list for windows-x64$"):
        build_addon.check_dependencies(wheels, build_addon.PLATFORMS["windows-x64"])
    wheels["lib"] = _fake_wheel(tmp_path, "lib", "1.9")
    with pytest.raises(build_addon.BuildError, match=r"^app needs lib>=2, but requirements-extension.txt pins lib 1.9$"):
        build_addon.check_dependencies(wheels, build_addon.PLATFORMS["linux-x64"])


def _run(command: list[str], env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(command, env=env, cwd=env["BLENDER_USER_RESOURCES"], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def test_linux_zip_installs_into_blender_and_generates_a_coloured_mesh(tmp_path: Path) -> None:
    """Generate runs on the bundled models alone: the shipped view generator and the shipped reconstructor."""
    out, user = tmp_path / "dist", tmp_path / "blender-user"
    user.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # nothing but the zip's backend
    env.update(BLENDER_USER_RESOURCES=str(user), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    build = [sys.executable, str(REPO / "build_addon.py"), "--platform", "linux-x64", "--out", str(out)]
    _run(build, env, timeout=1800)
    printed = _run(build, env, timeout=600)  # again, with every wheel in the cache
    [zip_path] = out.iterdir()
    assert zip_path.name == "image_to_3d-0.1.0-linux_x64.zip"
    assert "downloading" not in printed and f"{zip_path}: " in printed and "validated" in printed, printed

    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    wheels = [name for name in names if name.startswith("wheels/")]
    generated = manifest["build"]["generated"]  # what --split-platforms kept for this zip, and what Blender installs
    assert generated["platforms"] == ["linux-x64"] and sorted(generated["wheels"]) == sorted(f"./{w}" for w in wheels)
    assert any(w.startswith("wheels/torch-") and "+cpu" in w for w in wheels) and not any("nvidia" in w for w in wheels)
    assert {"__init__.py", "operators.py", "backend/__init__.py", "backend/worker.py",
            "backend/weights/reconstructor/model.safetensors",
            "backend/weights/view_generator/unet/diffusion_pytorch_model.safetensors"} <= set(names)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)

    helper = str(REPO / "tests" / "extension_in_blender.py")
    _run([sys.executable, helper, "install", str(zip_path)], env, timeout=600)
    result_file = tmp_path / "result.json"
    _run([sys.executable, helper, "generate", str(IMAGE), str(result_file)], env, timeout=900)
    result = json.loads(result_file.read_text())

    extension = user / "extensions" / "user_default" / "image_to_3d"
    site_packages = user / "extensions" / ".local" / "lib" / "python3.11" / "site-packages"
    assert Path(result["extension"]) == extension and Path(result["backend"]).is_relative_to(extension)
    assert "torch" in result["modules"]
    assert {name: path for name, path in result["modules"].items() if not Path(path).is_relative_to(site_packages)} == {}
    assert result["policy_warnings"] == []
    assert result["status"] == ["FINISHED"] and result["type"] == "MESH" and result["object"] == IMAGE.stem
    assert result["message"].startswith(f"Created {result['object']}") and result["vertices"] > 100
    assert result["colour"] == ["Color", "FLOAT_COLOR", "POINT"]
    rgb = [result["rgba"][i:i + 3] for i in range(0, len(result["rgba"]), 4)]
    assert max(max(c[k] for c in rgb) - min(c[k] for c in rgb) for k in range(3)) > 0.02  # coloured, not one flat colour
