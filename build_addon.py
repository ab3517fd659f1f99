"""Build the installable extension zips, one per platform, with the wheels the in-process backend needs.

    python build_addon.py [--platform linux-x64|windows-x64|macos-arm64|all] [--out dist/]
                          [--find-links URL_OR_DIR ...] [--index-url URL] [--extra-index-url URL ...]

The extension is laid out in a scratch folder (``addon/`` as the package root, ``backend/`` copied in as a
sub-package with its bundled weights, the manifest with ``platforms`` and ``wheels`` filled in), the wheels
listed in ``requirements-extension.txt`` are fetched once per platform into ``build/wheels/`` with
``pip download --no-deps`` (a wheel already there is never fetched again), and Blender's own
``blender_ext.py`` (shipped in the ``bpy`` wheel) builds one zip per platform and validates it.
Any failure ends as one line starting with ``error:`` and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parent
LOCK = REPO / "requirements-extension.txt"
MANIFEST = REPO / "blender_manifest.toml"
CACHE = REPO / "build" / "wheels"
PYTHON = (3, 11)  # Blender 4.2-5.0 embed Python 3.11; 5.1 moves to 3.13, where cp311 wheels cannot load
BLENDER_VERSION_MAX = "5.1.0"  # the first Blender these wheels do not work in (exclusive bound)
EXT_SCRIPTS = "*/scripts/addons_core/bl_pkg/cli/blender_ext.py"  # inside the installed bpy package
TAGS_SCRIPT = "*/scripts/modules/_bpy_internal/extensions/tags.py"
CPU_TORCH_HINT = ("PyPI's Linux torch bundles CUDA (GBs); the CPU build is on https://download.pytorch.org/whl/cpu: "
                  "pass --find-links https://download.pytorch.org/whl/cpu/torch/ (or a folder holding its wheel)")


class BuildError(Exception):
    """Something that stops the build; the message is one line."""


@dataclass(frozen=True)
class Platform:
    """A Blender platform: the wheel tags it loads and the environment markers its Python reports."""

    name: str
    wheel_platforms: tuple[str, ...]
    markers: dict[str, str]
    local_versions: dict[str, str] = field(default_factory=dict)  # builds to bundle instead of PyPI's default

    @property
    def zip_suffix(self) -> str:
        return self.name.replace("-", "_")  # as ``blender_ext.py build --split-platforms`` names the zips

    def environment(self) -> dict[str, str]:
        """Marker values of Blender's Python on this platform (never this machine's)."""
        version = ".".join(map(str, PYTHON))
        return {"python_version": version, "python_full_version": f"{version}.9", "implementation_name": "cpython",
                "implementation_version": f"{version}.9", "platform_python_implementation": "CPython",
                "platform_release": "", "platform_version": "", "extra": "", **self.markers}

    def tags(self) -> list[Tag]:
        """Wheel tags this platform accepts, best first."""
        abi = f"cp{PYTHON[0]}{PYTHON[1]}"
        return [*cpython_tags(PYTHON, [abi], self.wheel_platforms), *compatible_tags(PYTHON, abi, self.wheel_platforms)]


PLATFORMS = {
    "linux-x64": Platform(
        "linux-x64",  # Blender needs glibc 2.28
        (*(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)), "manylinux2014_x86_64", "manylinux2010_x86_64",
         "manylinux1_x86_64"),
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"},
        {"torch": "cpu"}),
    "windows-x64": Platform(
        "windows-x64", ("win_amd64",),
        {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"}),
    "macos-arm64": Platform(
        "macos-arm64", tuple(mac_platforms((14, 0), "arm64")),  # torch's macOS wheels need 14 since 2.12 (Blender: 11.2)
        {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"}),
}


@dataclass(frozen=True)
class Pin:
    """One line of the lock: a distribution, its exact version and the marker that says where it applies."""

    name: str
    version: Version
    marker: Marker | None

    def applies_to(self, platform: Platform) -> bool:
        return self.marker is None or self.marker.evaluate(platform.environment())

    def version_for(self, platform: Platform) -> Version:
        local = platform.local_versions.get(self.name)
        return Version(f"{self.version}+{local}") if local else self.version


def _requirement_lines(path: Path) -> list[tuple[str, int, str]]:
    """(file name, line number, text) of each non-empty line with its comment removed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append((path.name, number, line))
    return lines


def _requirement(where: str, line: str) -> Requirement:
    try:
        return Requirement(line)
    except InvalidRequirement as exc:
        raise BuildError(f"{where}: {exc}") from None


def _exact_version(requirement: Requirement) -> Version | None:
    specs = list(requirement.specifier)
    if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
        return Version(specs[0].version)
    return None


def read_lock(path: Path = LOCK) -> list[Pin]:
    """The lock's pins: versions pinned on the line itself or else in its ``-c`` constraint files, which must agree."""
    pins, constraints = [], {}
    for file_name, number, line in _requirement_lines(path):
        if line.startswith("-c "):
            for c_file, c_number, c_line in _requirement_lines(path.parent / line[3:].strip()):
                requirement = _requirement(f"{c_file}:{c_number}", c_line)
                constraints[canonicalize_name(requirement.name)] = requirement
            continue
        requirement = _requirement(f"{file_name}:{number}", line)
        name = canonicalize_name(requirement.name)
        version = _exact_version(requirement)
        if requirement.specifier and version is None:
            raise BuildError(f"{file_name}:{number}: pin {requirement.name} with == (or leave the version to the constraints)")
        constraint = constraints.get(name)
        if version is None:
            version = _exact_version(constraint) if constraint is not None else None
            if version is None:
                raise BuildError(f"{file_name}:{number}: {requirement.name} has no pinned version here or in the constraints")
        elif constraint is not None and not constraint.specifier.contains(version, prereleases=True):
            raise BuildError(f"{file_name}:{number}: {requirement.name}=={version} disagrees with the constraint {constraint}")
        pins.append(Pin(name, version, requirement.marker))
    return pins


def _wheel_identity(path: Path) -> tuple[str, Version, frozenset[Tag]] | None:
    try:
        name, version, _build, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename:
        return None
    return name, version, tags


def cached_wheel(cache: Path, pin: Pin, platform: Platform) -> Path | None:
    """The best wheel in ``cache`` for ``pin`` on ``platform``: same name and exact version, a tag it accepts."""
    ranking: dict[Tag, int] = {}
    for rank, tag in enumerate(platform.tags()):
        ranking.setdefault(tag, rank)
    wanted = pin.version_for(platform)
    best: tuple[int, Path] | None = None
    for path in cache.glob("*.whl"):
        identity = _wheel_identity(path)
        if identity is None or identity[0] != pin.name or identity[1] != wanted:
            continue
        ranks = [ranking[tag] for tag in identity[2] if tag in ranking]
        if ranks and (best is None or min(ranks) < best[0]):
            best = (min(ranks), path)
    return best[1] if best else None


def download(pins: list[Pin], platform: Platform, cache: Path, pip_options: list[str]) -> None:
    """Fetch exactly these wheels (no resolver: the lock is complete, which ``check_dependencies`` proves)."""
    specs = [f"{pin.name}=={pin.version_for(platform)}" for pin in pins]
    print(f"{platform.name}: downloading {len(specs)} wheels: {' '.join(specs)}", flush=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(cache),
               "--python-version", ".".join(map(str, PYTHON)), "--implementation", "cp",
               *(option for tag in platform.wheel_platforms for option in ("--platform", tag)), *pip_options, *specs]
    if subprocess.run(command).returncode != 0:
        hint = f"; {CPU_TORCH_HINT}" if any(pin.name in platform.local_versions for pin in pins) else ""
        raise BuildError(f"pip could not download the {platform.name} wheels (its message is above){hint}")


def check_dependencies(wheels: dict[str, Path], platform: Platform) -> None:
    """Every requirement of every wheel, as Blender's Python on ``platform`` sees it, must be met by the bundled wheels."""
    versions = {name: _wheel_identity(path)[1] for name, path in wheels.items()}
    problems = []
    for name, path in sorted(wheels.items()):
        for line in _wheel_metadata(path).get_all("Requires-Dist") or []:
            requirement = _requirement(f"{path.name} METADATA", line)
            if requirement.marker is not None and not requirement.marker.evaluate(platform.environment()):
                continue
            have = versions.get(canonicalize_name(requirement.name))
            if have is None:
                problems.append(f"{name} needs {requirement}, which {LOCK.name} does not list for {platform.name}")
            elif not requirement.specifier.contains(have, prereleases=True):
                problems.append(f"{name} needs {requirement}, but {LOCK.name} pins {requirement.name} {have}")
    if problems:
        raise BuildError("; ".join(problems))


def _wheel_metadata(path: Path) -> Message:
    try:
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            return HeaderParser().parsestr(archive.read(member).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, StopIteration) as exc:
        raise BuildError(f"{path} is not a readable wheel ({type(exc).__name__}): delete it and build again") from None


def platform_wheels(pins: list[Pin], platform: Platform, cache: Path, pip_options: list[str]) -> dict[str, Path]:
    """This platform's wheels by distribution name, downloading only those not in ``cache`` yet."""
    pins = [pin for pin in pins if pin.applies_to(platform)]
    missing = [pin for pin in pins if cached_wheel(cache, pin, platform) is None]
    print(f"{platform.name}: {len(pins) - len(missing)} of {len(pins)} wheels already in {_shown(cache)}", flush=True)
    if missing:
        cache.mkdir(parents=True, exist_ok=True)
        download(missing, platform, cache, pip_options)
    wheels = {}
    for pin in pins:
        path = cached_wheel(cache, pin, platform)
        if path is None:
            raise BuildError(f"pip downloaded no {platform.name} wheel of {pin.name}=={pin.version_for(platform)} "
                             f"for Python {PYTHON[0]}.{PYTHON[1]}")
        wheels[pin.name] = path
    check_dependencies(wheels, platform)
    return wheels


def _copy_files(source: Path, target: Path, wanted: Callable[[Path], bool]) -> None:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and not path.is_symlink() and "__pycache__" not in relative.parts and wanted(relative):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the cache and the scratch folder share build/: no copy of hundreds of MB
    except OSError:
        shutil.copy2(source, target)


def lay_out(stage: Path, wheel_files: list[Path], platforms: list[Platform]) -> dict:
    """The extension's source folder in ``stage``; returns the manifest written there."""
    _copy_files(REPO / "addon", stage, lambda relative: relative.parts[0] != "backend")  # addon/backend: a link, see below
    _copy_files(REPO / "backend", stage / "backend", lambda relative: relative.suffix == ".py" or relative.parts[0] == "weights")
    (stage / "wheels").mkdir()
    for path in wheel_files:
        _link_or_copy(path, stage / "wheels" / path.name)
    try:
        manifest = tomllib.loads(MANIFEST.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"cannot read {MANIFEST}: {exc}") from None
    manifest.setdefault("blender_version_max", BLENDER_VERSION_MAX)
    manifest["platforms"] = [platform.name for platform in platforms]
    manifest["wheels"] = [f"./wheels/{path.name}" for path in sorted(wheel_files)]
    (stage / MANIFEST.name).write_text(_toml(manifest))
    return manifest


def _toml(manifest: dict) -> str:
    """The manifest as TOML (strings, lists of strings and one level of tables: all a manifest holds)."""
    def value(item: object) -> str:
        if isinstance(item, list):
            return "[\n" + "".join(f"  {json.dumps(entry)},\n" for entry in item) + "]"
        return json.dumps(item)

    plain = [f"{key} = {value(item)}" for key, item in manifest.items() if not isinstance(item, dict)]
    tables = [f"\n[{key}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in item.items())
              for key, item in manifest.items() if isinstance(item, dict)]
    return "\n".join(plain) + "\n" + "\n".join(tables) + "\n"


def blender_ext() -> tuple[Path, Path]:
    """Blender's extension tool and its tag list, from the installed ``bpy`` wheel (found without importing bpy)."""
    spec = importlib.util.find_spec("bpy")
    folders = [Path(folder) for folder in spec.submodule_search_locations or []] if spec else []
    tools = [path for folder in folders for path in sorted(folder.glob(EXT_SCRIPTS))]
    tags = [path for folder in folders for path in sorted(folder.glob(TAGS_SCRIPT))]
    if not tools or not tags:
        raise BuildError(f"Blender's blender_ext.py was not found: run this with the Python that has bpy installed "
                         f"(e.g. .venv/bin/python build_addon.py; {sys.executable} has no bpy wheel)")
    return tools[0], tags[0]


def _run_ext(tool: Path, *arguments: str) -> None:
    result = subprocess.run([sys.executable, str(tool), *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"blender_ext.py {arguments[0]} failed: {' '.join((result.stdout + result.stderr).split())}")


def build(platforms: list[Platform], out: Path, pip_options: list[str]) -> list[Path]:
    """Download, lay out, build with ``--split-platforms`` and validate; the zips, one per platform."""
    tool, tags_script = blender_ext()
    pins = read_lock()
    wheel_files = sorted({path for platform in platforms for path in platform_wheels(pins, platform, CACHE, pip_options).values()})
    tags = runpy.run_path(str(tags_script))
    out.mkdir(parents=True, exist_ok=True)
    (REPO / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO / "build", prefix="extension-") as scratch:
        stage = Path(scratch) / "source"
        stage.mkdir()
        manifest = lay_out(stage, wheel_files, platforms)
        valid_tags = Path(scratch) / "tags.json"
        valid_tags.write_text(json.dumps({"add-on": sorted(tags["addons"]), "theme": sorted(tags["themes"])}))
        zips = [out / f"{manifest['id']}-{manifest['version']}-{platform.zip_suffix}.zip" for platform in platforms]
        for path in zips:
            path.unlink(missing_ok=True)
        _run_ext(tool, "build", "--source-dir", str(stage), "--output-dir", str(out), "--split-platforms",
                 "--valid-tags", str(valid_tags))
        for path in zips:
            if not path.is_file():
                raise BuildError(f"blender_ext.py did not write {path}")
            _run_ext(tool, "validate", str(path), "--valid-tags", str(valid_tags))
    return zips


def summary(path: Path) -> str:
    """A zip's size and what takes it up: wheels (largest first), bundled weights, code."""
    with zipfile.ZipFile(path) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
    wheels = sorted((i for i in members if i.filename.startswith("wheels/")), key=lambda i: -i.compress_size)
    weights = [i for i in members if i.filename.startswith("backend/weights/")]
    code = [i for i in members if i.filename.endswith(".py")]
    largest = ", ".join(f"{parse_wheel_filename(Path(i.filename).name)[0]} {i.compress_size / 1e6:.1f}" for i in wheels[:4])
    weight_dirs = sorted({"/".join(Path(i.filename).parts[:3]) for i in weights})
    return (f"{_shown(path)}: {path.stat().st_size / 1e6:.1f} MB, {len(members)} files, validated\n"
            f"  wheels: {len(wheels)}, {_megabytes(wheels)} (largest, MB: {largest})\n"
            f"  weights: {len(weights)} files, {_megabytes(weights)} ({', '.join(weight_dirs)})\n"
            f"  code: {len(code)} Python files, {_megabytes(code)}")


def _megabytes(members: list[zipfile.ZipInfo]) -> str:
    return f"{sum(info.compress_size for info in members) / 1e6:.1f} MB"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", choices=[*PLATFORMS, "all"], default="linux-x64",
                        help="which zip to build (default: linux-x64); all: one zip per platform")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="folder for the zips (default: dist/)")
    parser.add_argument("--find-links", action="append", default=[], metavar="URL_OR_DIR",
                        help="also look for wheels here (pip's --find-links), e.g. the CPU torch build's folder")
    parser.add_argument("--index-url", help="package index instead of pip's configured one (pip's --index-url)")
    parser.add_argument("--extra-index-url", action="append", default=[], metavar="URL", help="an additional index")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    platforms = list(PLATFORMS.values()) if args.platform == "all" else [PLATFORMS[args.platform]]
    pip_options = [*(f"--find-links={link}" for link in args.find_links),
                   *([f"--index-url={args.index_url}"] if args.index_url else []),
                   *(f"--extra-index-url={url}" for url in args.extra_index_url)]
    try:
        zips = build(platforms, args.out.resolve(), pip_options)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    for path in zips:
        print(summary(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
