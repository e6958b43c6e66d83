"""Which volumes `ganlab sample input=...` translates: one NIfTI file (with optional `reference=` CT and
`mask=`), a folder of them, one SynthRAD patient folder, or a folder of `<patient>/` folders holding
`mr.nii.gz` and, when present, `ct.nii.gz`, `mask.nii.gz` and `labels.nii.gz` (.nii works too).

Only paths are gathered here; the files are read (and refused with one message each) by `ganlab.data.nifti`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ganlab.errors import GanlabError, warn

SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class VolumeInput:
    """One volume to translate: its name in the output, the file, and the patient's mask and real CT if any."""

    name: str
    path: Path
    mask: Path | None = None
    reference: Path | None = None
    labels: Path | None = None  # tissue classes (the phantom's), for MAE per tissue

    def companions(self) -> list[Path]:
        return [p for p in (self.mask, self.reference, self.labels) if p is not None]


def _stem(path: Path) -> str:
    name = path.name
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), path.stem)


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))


def _patient(folder: Path, direction: str) -> VolumeInput | None:
    """A SynthRAD patient folder (`mr`, and `ct`, `mask`, `labels` when present, .nii or .nii.gz), or None."""
    if not folder.is_dir():
        return None
    files = {_stem(p): p for p in _nifti_files(folder)}
    if direction == "b2a":
        return VolumeInput(folder.name, files["ct"], files.get("mask")) if "ct" in files else None
    if "mr" not in files:
        return None
    return VolumeInput(folder.name, files["mr"], files.get("mask"), files.get("ct"), files.get("labels"))


def _optional_file(key: str, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise GanlabError(f"{key}={value}: no such file; expected a .nii/.nii.gz volume on the input's grid")
    return path


def find_inputs(spec: str, direction: str, reference: str | None = None, mask: str | None = None) -> list[VolumeInput]:
    """`input=`: one NIfTI file (with optional `reference=` CT and `mask=`), a folder of them, one SynthRAD
    patient folder, or a folder of `<patient>/{mr,ct,mask}.nii.gz` folders."""
    path = Path(spec).expanduser()
    source = "mr" if direction == "a2b" else "ct"
    if path.is_file():
        if not path.name.endswith(SUFFIXES):
            raise GanlabError(f"input={spec}: expected a NIfTI file (.nii or .nii.gz) or a folder of them")
        if reference and direction != "a2b":
            raise GanlabError(f"reference={reference}: scores synthetic CTs, i.e. direction=a2b only")
        return [VolumeInput(_stem(path), path, _optional_file("mask", mask), _optional_file("reference", reference))]
    if not path.is_dir():
        raise GanlabError(f"input={spec}: no such file or folder; expected a .nii.gz volume or a folder of them")
    if reference or mask:
        raise GanlabError(f"{'reference' if reference else 'mask'}=: only with a single input file; a SynthRAD "
                          "folder's patients use their own ct.nii.gz and mask.nii.gz")
    patient = _patient(path, direction)
    if patient is not None:  # input= names one patient's folder
        return [patient]
    found = [VolumeInput(_stem(p), p) for p in _nifti_files(path)]
    skipped = []
    for folder in sorted(d for d in path.iterdir() if d.is_dir()):
        patient = _patient(folder, direction)
        if patient is not None:
            found.append(patient)
        elif not folder.name.startswith("."):
            skipped.append(folder)
    if not found:
        raise GanlabError(f"input={spec}: no *.nii.gz / *.nii files and no <patient>/{source}.nii.gz "
                          "folders in it")
    names = [item.name for item in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise GanlabError(f"input={spec}: {', '.join(twice)} named twice (e.g. x.nii and x.nii.gz, or a file and "
                          "a patient folder); outputs are named after them, so rename one")
    if skipped:  # a patient whose MR is missing or misnamed would otherwise just be absent from the output
        shown = ", ".join(str(d) for d in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warn(f"input={spec}: skipped {len(skipped)} folder(s) without {source}.nii.gz or {source}.nii: {shown}")
    return found
