"""Fetch real meshes from a package registry for training and validating the reconstructor.

The 8 meshes in ``../shared/data/meshes`` are the training issue's acceptance set, so choices (checkpoints,
extraction settings) must be made on other meshes. CGAL's example data, packaged by Debian as
``libcgal-demo``, holds dozens of real scanned and modelled meshes. This script downloads that package
(pinned version, SHA-256 checked), and writes two disjoint sets of OFF files:

- ``OUT/val``: a validation set to select checkpoints and settings on;
- ``OUT/train``: meshes for ``python -m backend train --data OUT/train``.

Meshes that duplicate an acceptance mesh (cow, fandisk, homer) or another listed mesh at another
resolution are left out. Usage: ``python tools/fetch_real_meshes.py data/real_meshes``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import urllib.request
from pathlib import Path

PACKAGE_URL = "http://deb.debian.org/debian/pool/main/c/cgal/libcgal-demo_5.5.1-2_all.deb"
PACKAGE_SHA256 = "78b09b23d4d6d1bf15552a1060b419ab3fc09918486462faed197e5fc6ac3735"
DATA_ARCHIVE = "./usr/share/doc/libcgal-dev/data.tar.gz"
MESH_FOLDER = "data/meshes/"
VALIDATION = ("armadillo", "bear", "bull", "bunny00", "camel", "ChineseDragon-10kv", "dino", "elephant", "hand", "knot1",
              "man", "triceratops")
TRAINING = ("anchor_dense", "blobby", "boeing", "cheese", "couplingdown", "diplodocus", "elk", "ellipe0.003", "femur",
            "handle", "head", "lion", "mannequin-devil", "mech-holes-shark", "mushroom", "retinal", "rotor_small", "turbine")


def download(url: str, sha256: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        payload = response.read()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != sha256:
        raise SystemExit(f"error: {url} has SHA-256 {digest}, expected {sha256}; the mirror's file changed, do not use it")
    return payload


def ar_member(archive: bytes, prefix: str) -> bytes:
    """The first member of a Unix ``ar`` archive (a .deb) whose name starts with ``prefix``."""
    if not archive.startswith(b"!<arch>\n"):
        raise SystemExit("error: the downloaded package is not a Debian archive")
    offset = 8
    while offset + 60 <= len(archive):
        header = archive[offset : offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
        if name.startswith(prefix):
            return archive[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
    raise SystemExit(f"error: the package has no {prefix}* member")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write train/ and val/ into")
    args = parser.parse_args(argv)
    package = download(PACKAGE_URL, PACKAGE_SHA256)
    with tarfile.open(fileobj=io.BytesIO(ar_member(package, "data.tar")), mode="r:*") as data:
        cgal_data = data.extractfile(DATA_ARCHIVE).read()
    wanted = {name: split for split, names in (("val", VALIDATION), ("train", TRAINING)) for name in names}
    written: dict[str, list[str]] = {"val": [], "train": []}
    with tarfile.open(fileobj=io.BytesIO(cgal_data), mode="r:gz") as meshes:
        for member in meshes.getmembers():
            stem = member.name.removeprefix(MESH_FOLDER).removesuffix(".off")
            if not member.name.startswith(MESH_FOLDER) or not member.name.endswith(".off") or stem not in wanted:
                continue
            target = args.out / wanted[stem] / f"{stem}.off"
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".off.part")
            partial.write_bytes(meshes.extractfile(member).read())
            partial.replace(target)
            written[wanted[stem]].append(stem)
    missing = sorted(set(wanted) - set(written["val"]) - set(written["train"]))
    if missing:
        raise SystemExit(f"error: the package lacks {', '.join(missing)}")
    source = {"package": PACKAGE_URL, "sha256": PACKAGE_SHA256, "archive": DATA_ARCHIVE,
              "val": sorted(written["val"]), "train": sorted(written["train"])}
    (args.out / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    print(f"{len(written['val'])} validation and {len(written['train'])} training meshes in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
