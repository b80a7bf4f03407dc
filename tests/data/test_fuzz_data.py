"""Fuzz layer of dataset inputs (issue 27): entries that are not files and image headers that declare
huge images.

An image or label entry that is a dangling link, a directory, a FIFO or a link to a directory must
be refused naming it (skipping it shifted the splits); an image whose header declares more pixels
than the dataset reads must be refused from the header, before a byte is decoded (a 4 KB TIFF may
declare 60000x60000). Both in one line, bounded time and memory, nothing written
(:func:`fuzzing.refused_cleanly`, the reader ``dataset``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import refused_cleanly
from hostile import NOT_FILES, make_not_a_file, png_header_bomb, tiff_header_bomb, write_em
from sjunet.data import get_dataset
from sjunet.data.common import DatasetError
from sjunet.data.imageio import MAX_IMAGE_PIXELS

#: examples per fuzz test (SJUNET_FUZZ_EXAMPLES=500 for a longer hunt)
EXAMPLES = int(os.environ.get("SJUNET_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
N = 12  # images of the layout: test 10, 11; val 9; train the rest (test_images=2, val_images=1)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    return write_em(tmp_path_factory.mktemp("em") / "em", n=N)


def copy(layout: Path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="sjunet-fuzz-data-")) / "em"
    shutil.copytree(layout, d, symlinks=True)
    return d


def every_split(root: Path) -> None:
    """What every verb does first: build the dataset of each split (the headers are read, nothing decoded)
    and read one item."""
    for split in ("train", "val", "test"):
        ds = get_dataset("em", root, split, test_images=2, val_images=1)
    ds[0]


def refused(root: Path, name: str) -> None:
    probe = root / "probe"  # refused_cleanly watches the directory of the path it is given
    err = refused_cleanly(lambda p: every_split(root), probe, "dataset", exc=DatasetError)
    assert name in str(err), f"the refusal does not name {name}: {err}"
    shutil.rmtree(root.parent, ignore_errors=True)


@FUZZ
@given(kind=st.sampled_from(NOT_FILES), sub=st.sampled_from(["images", "labels"]), index=st.integers(0, N - 1))
def test_fuzz_dataset_entries_that_are_not_files(layout, kind, sub, index):
    root = copy(layout)
    make_not_a_file(root / sub / f"{index}.png", kind)
    refused(root, f"{index}.png")


@FUZZ
@given(fmt=st.sampled_from(["png", "tiff"]), sub=st.sampled_from(["images", "labels"]), index=st.integers(0, N - 1),
       width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_fuzz_image_headers_declaring_huge_images(layout, fmt, sub, index, width, height):
    if width * height <= MAX_IMAGE_PIXELS:  # a size the dataset reads: made huge along one axis
        width = MAX_IMAGE_PIXELS // height + 1
    root = copy(layout)
    target = root / sub / f"{index}.png"
    if fmt == "png":
        png_header_bomb(target, width, height)
    else:
        tiff_header_bomb(target, min(width, 2**32 - 1), min(height, 2**32 - 1))  # TIFF data under a .png name
    refused(root, f"{index}.png")


def test_an_image_and_label_of_different_header_sizes_are_refused_before_decoding(layout):
    from hostile import png_header_bomb as png

    root = copy(layout)
    png(root / "images" / "3.png", 4000, 4000)  # under the limit, but not its label's size: no decoding
    refused(root, "3.png")
