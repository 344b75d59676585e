"""Atomic file output: write to a temporary name in the target folder, then rename.

An interrupted run leaves either the previous file or the complete new one, never a
truncated file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from japc.errors import JapcError

__all__ = ["atomic_path", "apply_default_mode", "atomic_write_text", "write_nifti_atomic", "ensure_writable_folder"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps the file's suffixes (``.nii.gz``, ``.csv``), so writers that choose
    a format from the extension still work. On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name.removesuffix(suffix)}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        apply_default_mode(temporary_path)
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


def apply_default_mode(path: Path) -> None:
    """Give ``path`` the mode a plainly created file gets (0666 minus the umask).

    ``tempfile.mkstemp`` creates files readable by their owner only; without this, every output
    written through a temporary name would stay private.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_nifti_atomic(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write ``array`` as NIfTI (``.nii`` or ``.nii.gz``) with ``affine``, atomically.

    Units are set to mm, and qform and sform both carry ``affine`` (code 1, scanner space).
    """
    path = Path(path)
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(array), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as temporary:
        nib.save(image, temporary)
    return path


def ensure_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written there.

    Raises:
        JapcError: the folder cannot be created or written, with the path and the reason.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".japc-write-check-"):
            pass
    except OSError as error:
        raise JapcError(
            f"Output folder {folder} cannot be written ({error.strerror or error}). "
            "Choose another folder with --output or fix its permissions."
        ) from error
    return folder
