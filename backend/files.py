"""Safe file writing: nothing half-written is ever visible under the final name, and nothing is replaced unasked.

Standard library only: the Blender add-on uses it too, for the GLB files of a batch.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """A temporary sibling of ``path`` (same suffix) to write; it becomes ``path`` in one step when the block succeeds.

    A failure removes the temporary file and leaves any earlier ``path`` untouched. With ``overwrite`` False an
    existing ``path`` (even one that appeared while writing) raises ``FileExistsError`` instead of being replaced.
    """
    tmp = path.parent / f".{path.stem}.{secrets.token_hex(8)}.tmp{path.suffix}"
    tmp.open("xb").close()  # created as open() creates files, so the result gets the user's usual permissions
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes, overwrite: bool = True) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half a file."""
    with atomic_output(path, overwrite) as tmp:
        tmp.write_bytes(data)


def probe_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``; raises ``OSError`` if that fails.

    Permission bits cannot say this: ACLs, read-only mounts and administrators all disagree with them.
    """
    tempfile.TemporaryFile(dir=folder).close()


def _publish_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nothing has it: a hard link fails atomically when the name exists."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists") from None
    except OSError:  # no hard links here (FAT, some network shares): check, then rename
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)
