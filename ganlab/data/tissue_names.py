"""Names of the classes in a dataset's labels.nii.gz, read from the dataset, never assumed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ganlab.errors import GanlabError

# <root>/tissues.json: a JSON list of class names, index = label value, e.g. ["air", "fat", "bone"].
# The phantom records its classes in <root>/phantom.json under "tissues".
NAME_FILES = (("tissues.json", None), ("phantom.json", "tissues"))


def read_tissue_names(root: Path) -> tuple[str, ...] | None:
    """The class names a dataset folder declares, or None when it declares none."""
    for name, key in NAME_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            names = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise GanlabError(f"{path}: cannot read tissue names ({err}); expected a JSON list of class names")
        names = names.get(key) if key and isinstance(names, dict) else names
        if names is None and key:
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise GanlabError(f"{path}: expected a JSON list of class names (index = label value), got {names!r}")
        return tuple(names)
    return None


def names_for_labels(declared: Sequence[str] | None, max_label: int) -> tuple[str, ...]:
    """The declared names, or tissue0 ... tissue<max_label> where a dataset declares none."""
    if declared is None:
        return tuple(f"tissue{k}" for k in range(max_label + 1))
    if max_label >= len(declared):
        raise GanlabError(f"labels go up to {max_label} but the dataset names only {len(declared)} classes "
                          f"({', '.join(declared)}); add the missing names to tissues.json")
    return tuple(declared)


def tissue_names_near(labels: Path, max_label: int) -> tuple[str, ...]:
    """Names for a patient's labels file: declared in its dataset folder (or the patient folder itself)."""
    patient = labels.resolve().parent
    for folder in (patient, patient.parent):
        declared = read_tissue_names(folder)
        if declared is not None:
            return names_for_labels(declared, max_label)
    return names_for_labels(None, max_label)
