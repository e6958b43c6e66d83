"""NIfTI at the edge of ganlab: read a volume with one clear error per failure, check that MR, CT and mask
share a voxel grid, and write a result that sits exactly on its reference's grid.

Every failure raises GanlabError naming the file, so a broken patient among hundreds is found at once.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import nibabel as nib
import numpy as np

from ganlab.errors import GanlabError, first_line, os_error

GRID_TOLERANCE = 1e-4  # mm; affines written by different tools differ in the last float32 digits

# The header fields that place voxels in space (besides the affine itself); `write_like` copies them all.
GEOMETRY_FIELDS = ("dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                   "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units", "dim_info",
                   "slice_start", "slice_end", "slice_code", "slice_duration")


@dataclass(frozen=True)
class Grid:
    """Where a volume's voxels are: what `check_same_grid` compares (also rebuilt from cached metadata)."""

    name: str
    shape: tuple[int, ...]
    affine: np.ndarray

    @classmethod
    def of(cls, image: nib.Nifti1Image, name: str | None = None) -> "Grid":
        return cls(name or str(image.get_filename() or "<in-memory image>"), tuple(int(s) for s in image.shape),
                   np.asarray(image.affine, dtype=np.float64))


GridLike = Union[str, os.PathLike, nib.Nifti1Image, Grid]


def _load(path: Path) -> nib.Nifti1Image:
    """The header (data stays on disk until asked for); missing and unreadable files get one message."""
    if not path.is_file():
        raise GanlabError(f"{path}: no such file; expected a NIfTI volume (.nii or .nii.gz)")
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, ValueError ... per cause
        refused = os_error(err, path, "cannot read")  # permission denied is not a damaged file
        raise refused or GanlabError(f"{path}: not a readable NIfTI file ({type(err).__name__}: "
                                     f"{first_line(err)})") from err


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, nib.Nifti1Image]:
    """(voxels as float32 with the header's scaling applied, the image) of a 3-D NIfTI volume.

    Refuses missing, unreadable, truncated, non-3-D and NaN/inf-containing files: a NaN would silently
    poison every loss it touches, far from the file that caused it.
    """
    path = Path(path)
    image = _load(path)
    if len(image.shape) != 3:
        raise GanlabError(f"{path}: expected a 3-D volume, got shape {tuple(image.shape)}")
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32, caching="unchanged"), dtype=np.float32)
    except Exception as err:  # truncated .nii.gz -> EOFError / zlib.error; short .nii -> OSError / ValueError
        raise GanlabError(f"{path}: could not read the voxel data, the file looks truncated or corrupt "
                          f"({type(err).__name__}: {first_line(err)})") from err
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise GanlabError(f"{path}: {bad} voxels are NaN or infinite; expected finite intensities")
    return data, image


def _grid(item: GridLike) -> Grid:
    if isinstance(item, Grid):
        return item
    if isinstance(item, nib.spatialimages.SpatialImage):
        return Grid.of(item)
    return Grid.of(_load(Path(item)), str(item))


def check_same_grid(items: Iterable[GridLike], tolerance: float = GRID_TOLERANCE) -> None:
    """Raise unless all volumes (paths, nibabel images or Grids) have one shape and one affine (within
    `tolerance`); MR/CT pairs on different grids would train a model on misaligned voxels."""
    grids = [_grid(item) for item in items]
    for other in grids[1:]:
        first = grids[0]
        if other.shape[:3] != first.shape[:3]:
            raise GanlabError(f"{other.name}: shape {other.shape} differs from {first.name}'s {first.shape}; "
                              "expected volumes on the same voxel grid (resample them first)")
        if not np.allclose(other.affine, first.affine, rtol=0.0, atol=tolerance):
            diff = float(np.abs(other.affine - first.affine).max())
            raise GanlabError(f"{other.name}: affine differs from {first.name}'s by up to {diff:.4g} "
                              f"(tolerance {tolerance}); expected volumes on the same voxel grid")


def write_like(path: str | os.PathLike, array: np.ndarray, reference_image: nib.Nifti1Image,
               dtype: np.dtype | type | str | None = None) -> Path:
    """Write `array` as NIfTI on exactly the reference's grid: affine, shape, zooms, qform/sform (codes
    included) and every other geometry field of its header, so it overlays the reference in any viewer.

    dtype: on-disk type (e.g. np.int16 for HU; floats are rounded, never rescaled); default the array's own
    (float64 stored as float32).
    Written to a temporary file and renamed, so readers never see half a volume.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.shape != tuple(reference_image.shape):
        raise GanlabError(f"{path}: array shape {array.shape} differs from the reference "
                          f"{reference_image.get_filename() or 'image'}'s {tuple(reference_image.shape)}")
    if dtype is None:
        dtype = np.float32 if array.dtype == np.float64 else array.dtype
    if np.issubdtype(np.dtype(dtype), np.integer) and not np.issubdtype(array.dtype, np.integer):
        # Rounded and stored as is: nibabel would otherwise rescale to the dtype's full range with a
        # slope/intercept, which some readers ignore (HU would come back as arbitrary numbers).
        info = np.iinfo(dtype)
        rounded = np.rint(array)
        if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
            raise GanlabError(f"{path}: values [{rounded.min()}, {rounded.max()}] do not fit "
                              f"{np.dtype(dtype).name}; choose a wider dtype")
        array = rounded.astype(dtype)
    reference_header = reference_image.header
    header = reference_header.copy()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(array, reference_image.affine, header=header)
    for field in GEOMETRY_FIELDS:  # copied verbatim: nibabel may re-derive them from the affine otherwise
        if field in reference_header:
            image.header[field] = reference_header[field]
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix or ".nii"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, str(tmp))
        os.replace(tmp, path)
    except OSError as err:  # read-only, disk full, permission denied: one line naming the file meant
        refused = os_error(err, path, "cannot write")
        if refused is None:
            raise
        raise refused from err
    finally:
        tmp.unlink(missing_ok=True)
    return path
