"""Tissue class names come from the dataset folder (tissues.json, the phantom's phantom.json), never assumed."""

import json

import pytest

from ganlab.data.tissue_names import names_for_labels, read_tissue_names, tissue_names_near
from ganlab.errors import GanlabError


def test_declared_names_generic_names_and_clear_errors(tmp_path):
    assert read_tissue_names(tmp_path) is None
    assert names_for_labels(None, 2) == ("tissue0", "tissue1", "tissue2")
    (tmp_path / "phantom.json").write_text(json.dumps({"seed": 0, "tissues": ["air", "bone"]}))
    assert read_tissue_names(tmp_path) == ("air", "bone")
    (tmp_path / "tissues.json").write_text(json.dumps(["background", "fat", "bone"]))  # wins over phantom.json
    assert read_tissue_names(tmp_path) == ("background", "fat", "bone")
    with pytest.raises(GanlabError, match="labels go up to 5 but the dataset names only 3 classes"):
        names_for_labels(read_tissue_names(tmp_path), 5)
    (tmp_path / "tissues.json").write_text('{"not": "a list"}')
    with pytest.raises(GanlabError, match="tissues.json: expected a JSON list of class names"):
        read_tissue_names(tmp_path)
    (tmp_path / "tissues.json").write_text("[oops")
    with pytest.raises(GanlabError, match="tissues.json: cannot read tissue names"):
        read_tissue_names(tmp_path)


def test_names_near_a_labels_file_follow_symlinks_to_the_dataset(tmp_path):
    patient = tmp_path / "dataset" / "1BA001"
    patient.mkdir(parents=True)
    (patient / "labels.nii.gz").write_bytes(b"")
    (tmp_path / "dataset" / "tissues.json").write_text(json.dumps(["air", "soft", "bone"]))
    (tmp_path / "picked").mkdir()
    (tmp_path / "picked" / "1BA001").symlink_to(patient, target_is_directory=True)
    assert tissue_names_near(tmp_path / "picked" / "1BA001" / "labels.nii.gz", 2) == ("air", "soft", "bone")
    (tmp_path / "dataset" / "tissues.json").unlink()
    assert tissue_names_near(patient / "labels.nii.gz", 1) == ("tissue0", "tissue1")
