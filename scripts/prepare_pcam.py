"""Unpack the distributed PCam `*.h5.gz` files into the `.h5` files ganlab reads, checking their MD5s.

    python scripts/prepare_pcam.py /data/pcam          # then: ganlab train ... data.root=/data/pcam

Each `camelyonpatch_level_2_split_*.h5.gz` in the directory is decompressed in one streaming pass (the
archive's MD5 is computed on the compressed bytes as they are read, so nothing is read twice) into a
temporary file that is renamed to `.h5` only if the checksum matches. Existing `.h5` files are kept.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

# MD5 of each official .h5.gz archive, as published in torchvision's own source
# (torchvision/datasets/pcam.py, PCAM._FILES; torchvision 0.29), which checks the downloaded .gz file.
OFFICIAL_MD5 = {
    "camelyonpatch_level_2_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
    "camelyonpatch_level_2_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
    "camelyonpatch_level_2_split_test_x.h5.gz": "d8c2d60d490dbd479f8199bdfa0cf6ec",
    "camelyonpatch_level_2_split_test_y.h5.gz": "60a7035772fbdb7f34eb86d4420cf66a",
    "camelyonpatch_level_2_split_valid_x.h5.gz": "d5b63470df7cfa627aeec8b9dc0c066e",
    "camelyonpatch_level_2_split_valid_y.h5.gz": "2b85f58b927af9964a4c15b8f7e8f179",
}
CHUNK = 1 << 20


class _HashingReader:
    """A read-only file wrapper that feeds every byte read into an MD5 and a progress bar."""

    def __init__(self, raw: BinaryIO, progress: tqdm) -> None:
        self.raw, self.progress, self.md5 = raw, progress, hashlib.md5()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.md5.update(data)
        self.progress.update(len(data))
        return data


def decompress_verified(archive: Path, expected_md5: str | None) -> Path:
    """Stream `archive` (.h5.gz) to `.h5`; raise ValueError (and leave no .h5) on an MD5 mismatch."""
    target = archive.with_suffix("")  # drop .gz
    partial = target.with_name(target.name + ".partial")
    with open(archive, "rb") as raw, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True,
                                          desc=archive.name) as progress:
        reader = _HashingReader(raw, progress)
        with gzip.GzipFile(fileobj=reader, mode="rb") as unzipped, open(partial, "wb") as out:  # type: ignore[arg-type]
            while block := unzipped.read(CHUNK):
                out.write(block)
        while reader.read(CHUNK):  # bytes after the gzip stream still count towards the checksum
            pass
    digest = reader.md5.hexdigest()
    if expected_md5 is not None and digest != expected_md5:
        partial.unlink()
        raise ValueError(f"{archive}: MD5 {digest} != expected {expected_md5}; the download is incomplete or "
                         "corrupt, download it again")
    os.replace(partial, target)
    return target


def prepare(directory: Path, checksums: dict[str, str] = OFFICIAL_MD5) -> list[Path]:
    """Decompress every known archive in `directory` whose .h5 is not there yet; return the new files."""
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such directory")
    done = []
    for name, md5 in checksums.items():
        archive, target = directory / name, directory / name.removesuffix(".gz")
        if target.is_file():
            print(f"{target.name}: already there, kept")
        elif archive.is_file():
            done.append(decompress_verified(archive, md5))
        else:
            print(f"{name}: not found in {directory}, skipped")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="folder holding the camelyonpatch_*.h5.gz files")
    args = parser.parse_args(argv)
    try:
        done = prepare(args.directory)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"decompressed and verified {len(done)} file(s) in {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
