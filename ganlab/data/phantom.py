"""A synthetic, paired MR/CT head dataset in the SynthRAD2023 layout, so MR-to-CT synthesis can be run and
tested offline, with ground-truth tissue labels that real data does not have.

Each patient is a head-like label map (skin, scalp fat, a skull of varying thickness with a frontal sinus,
CSF around the brain and in two ventricles) rendered twice: as CT in Hounsfield units and as a T1-weighted
MR. As in real T1 images, cortical bone and air are both dark in MR but are -1000 and ~1000-1600 HU in CT:
the ambiguity a synthesis model has to resolve from anatomy. Rendering is seeded per (seed, patient).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from ganlab.data.nifti import write_like
from ganlab.errors import GanlabError

# Tissue classes in labels.nii.gz: the index is the label value. Bone is 4 as in the 5-class list; CSF,
# split from brain because its CT and MR contrast differ, is appended as 5.
TISSUES = ("air", "fat", "soft_tissue", "brain", "bone", "csf")
AIR, FAT, SOFT, BRAIN, BONE, CSF = range(len(TISSUES))
# CT: (mean HU, texture std HU); bone is drawn per patient between its inner diploe and its cortical tables.
CT_HU = {AIR: (-1000.0, 5.0), FAT: (-100.0, 10.0), SOFT: (40.0, 8.0), BRAIN: (35.0, 4.0), CSF: (10.0, 4.0)}
# MR: T1-like signal relative to fat; air and bone carry (almost) no signal.
MR_T1 = {AIR: 0.0, FAT: 0.95, SOFT: 0.40, BRAIN: 0.62, BONE: 0.04, CSF: 0.12}
MR_SCALE = 1000.0  # arbitrary scanner units, as real MR files have
MR_NOISE = 0.025  # Rician noise std relative to MR_T1
VOXEL_SIZE = (1.0, 1.0, 2.5)  # mm, thick slices along the third axis as in clinical protocols
FORMAT_VERSION = 1  # bump when the rendering changes, so cached phantoms are regenerated


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float,
                  voxel: tuple[float, ...]) -> np.ndarray:
    """Gaussian-correlated noise with unit std: tissue texture and grey/white variation."""
    field = gaussian_filter(rng.standard_normal(shape), sigma=[sigma_mm / v for v in voxel], mode="reflect")
    return field / (field.std() + 1e-12)


def _label_head(rng: np.random.Generator, shape: tuple[int, int, int], voxel: tuple[float, ...]):
    """(labels uint8, body mask uint8, bone depth fraction) of one random head."""
    centre = rng.uniform(-2.0, 2.0, 3)
    axes_mm = [np.arange(n) * v - (n - 1) * v / 2 - c for n, v, c in zip(shape, voxel, centre)]
    x, y, z = np.meshgrid(*axes_mm, indexing="ij")
    theta = rng.uniform(-0.2, 0.2)  # head turned a little in the axial plane
    x, y = np.cos(theta) * x - np.sin(theta) * y, np.sin(theta) * x + np.cos(theta) * y
    semi = np.array([0.40, 0.45, 0.47]) * np.array(shape) * np.array(voxel) * rng.uniform(0.92, 1.04, 3)
    r = np.sqrt((x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2)
    radius = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    depth = np.where(r > 1e-6, radius * (1.0 - r) / np.maximum(r, 1e-6), np.inf)  # mm inward along the ray
    unit = np.stack([x, y, z]) / np.maximum(radius, 1e-6)
    # Skull thickness varies smoothly over directions (a few random waves on the sphere), thicker frontally.
    waves = sum(np.cos(np.tensordot(rng.normal(0.0, 2.0, 3), unit, axes=1) + rng.uniform(0, 2 * np.pi))
                for _ in range(3)) / 3.0
    frontal = np.exp(-((unit[1] - 0.8) ** 2 + (unit[2] + 0.35) ** 2) / 0.08)
    has_sinus = rng.random() < 0.75
    # Layer thicknesses of an adult head (semi-axes ~80 mm), scaled to the size of this head.
    k = float(np.clip(semi.mean() / 80.0, 0.5, 1.5))
    skin, fat = k * rng.uniform(2.0, 3.0), k * rng.uniform(2.0, 4.0) * (1.0 + 0.3 * waves)
    bone = k * (rng.uniform(5.0, 7.5) * (1.0 + 0.35 * waves) + (9.0 * frontal if has_sinus else 0.0))
    csf_gap = k * rng.uniform(2.0, 3.5)
    labels = np.full(shape, AIR, dtype=np.uint8)
    inner_fat, inner_bone = skin + fat, skin + fat + bone
    labels[depth >= 0] = SOFT
    labels[(depth >= skin) & (depth < inner_fat)] = FAT
    labels[(depth >= inner_fat) & (depth < inner_bone)] = BONE
    labels[(depth >= inner_bone) & (depth < inner_bone + csf_gap)] = CSF
    labels[depth >= inner_bone + csf_gap] = BRAIN
    bone_fraction = np.clip((depth - inner_fat) / bone, 0.0, 1.0)  # 0 outer table -> 1 inner table
    # Lateral ventricles: two CSF ellipsoids either side of the midline.
    half_gap, v_axes = 2 * k * rng.uniform(3.0, 6.0), 2 * k * rng.uniform([2.0, 6.0, 5.0], [4.0, 10.0, 9.0])
    for side in (-1.0, 1.0):
        inside = ((x - side * half_gap) / v_axes[0]) ** 2 + ((y + 2.0) / v_axes[1]) ** 2 + (z / v_axes[2]) ** 2
        labels[(inside <= 1.0) & (labels == BRAIN)] = CSF
    if has_sinus:  # frontal sinus: air enclosed in the thick frontal bone
        s_centre = np.array([0.0, semi[1] * 0.80, -semi[2] * 0.30])
        s_axes = 2 * k * rng.uniform([4.0, 2.0, 3.0], [8.0, 3.5, 6.0])
        inside = sum(((c - m) / a) ** 2 for c, m, a in zip((x, y, z), s_centre, s_axes))
        labels[(inside <= 1.0) & (labels == BONE) & (bone_fraction > 0.2) & (bone_fraction < 0.8)] = AIR
    mask = (depth >= 0).astype(np.uint8)  # the body outline, filled (sinus air is inside the body)
    return labels, mask, bone_fraction


def render_patient(rng: np.random.Generator, shape: tuple[int, int, int],
                   voxel: tuple[float, ...] = VOXEL_SIZE) -> dict[str, np.ndarray]:
    """{"labels", "mask", "ct" (HU, int16), "mr" (float32)} of one random head."""
    labels, mask, bone_fraction = _label_head(rng, shape, voxel)
    texture = _smooth_noise(rng, shape, 2.0, voxel)
    ct = np.zeros(shape, dtype=np.float64)
    for tissue, (mean, std) in CT_HU.items():
        ct[labels == tissue] = mean + std * texture[labels == tissue]
    cortical, diploe = rng.uniform(1400.0, 1600.0), rng.uniform(1000.0, 1200.0)
    profile = np.abs(2.0 * bone_fraction - 1.0)  # dense outer and inner tables, spongy diploe between
    is_bone = labels == BONE
    ct[is_bone] = diploe + (cortical - diploe) * profile[is_bone] + 30.0 * texture[is_bone]
    ct += rng.normal(0.0, 4.0, shape)  # quantum noise
    ct = np.clip(np.round(ct), -1024, 3000).astype(np.int16)

    signal = np.zeros(shape, dtype=np.float64)
    for tissue, value in MR_T1.items():
        signal[labels == tissue] = value
    grey_white = _smooth_noise(rng, shape, 3.0, voxel)
    signal[labels == BRAIN] += 0.07 * grey_white[labels == BRAIN]
    signal = gaussian_filter(signal, sigma=[0.5 / v * min(voxel) for v in voxel])  # MR partial volume
    # Smooth multiplicative bias field (receive-coil sensitivity), about +-20 %.
    coords = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    log_bias = sum(rng.normal(0.0, 0.08) * c + rng.normal(0.0, 0.05) * c ** 2 for c in coords)
    signal *= np.exp(log_bias)
    # Rician noise: the magnitude of complex data with gaussian noise in both channels.
    real = signal + rng.normal(0.0, MR_NOISE, shape)
    imag = rng.normal(0.0, MR_NOISE, shape)
    mr = (np.sqrt(real ** 2 + imag ** 2) * MR_SCALE).astype(np.float32)
    return {"labels": labels, "mask": mask, "ct": ct, "mr": mr}


def _reference(shape: tuple[int, int, int], affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine)
    image.set_qform(affine, code=1)  # scanner coordinates, both forms set as scanners export them
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return image


def write_phantom_dataset(root: str | os.PathLike, n_patients: int = 12, shape: tuple[int, int, int] = (64, 64, 24),
                          seed: int = 0, voxel_size: tuple[float, float, float] = VOXEL_SIZE) -> list[Path]:
    """Write `<root>/<patient>/{mr,ct,mask,labels}.nii.gz` for `n_patients` heads; return the patient dirs.

    Deterministic per (seed, patient). Written into a temporary sibling dir renamed at the end, so an
    interrupted or concurrent run never leaves a half dataset; an existing identical phantom is reused.
    """
    root = Path(root)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4 or n_patients < 1:
        raise GanlabError(f"data.phantom: expected n_patients >= 1 and a 3-D shape of at least 4 voxels per "
                          f"axis, got n_patients={n_patients}, shape={list(shape)}")
    params = {"format_version": FORMAT_VERSION, "n_patients": int(n_patients), "shape": list(shape),
              "seed": int(seed), "voxel_size": [float(v) for v in voxel_size], "tissues": list(TISSUES)}
    names = [f"phantom{i:03d}" for i in range(n_patients)]
    if root.exists():
        info = root / "phantom.json"
        if info.is_file() and json.loads(info.read_text()) == params:
            return [root / name for name in names]
        raise GanlabError(f"{root}: already exists and is not a phantom with these parameters; "
                          "choose another directory (never overwritten)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex}"
    try:
        for i, name in enumerate(names):
            rng = np.random.default_rng([int(seed), i])
            origin = np.array([-70.0, -90.0, -40.0]) + rng.uniform(-5.0, 5.0, 3)  # scanner mm, non-zero
            affine = np.diag([*voxel_size, 1.0])
            affine[:3, 3] = origin
            reference = _reference(shape, affine)
            volumes = render_patient(rng, shape, tuple(voxel_size))
            dtypes = {"mr": np.float32, "ct": np.int16, "mask": np.uint8, "labels": np.uint8}
            for kind, dtype in dtypes.items():
                write_like(tmp / name / f"{kind}.nii.gz", volumes[kind], reference, dtype=dtype)
        (tmp / "phantom.json").write_text(json.dumps(params, indent=1) + "\n")
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: keep its copy if it is the same phantom
            info = root / "phantom.json"
            if not (info.is_file() and json.loads(info.read_text()) == params):
                raise GanlabError(f"{root}: appeared while writing the phantom and holds something else")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [root / name for name in names]
