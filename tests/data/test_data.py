"""Tests of sjunet.data: loaders on the real data sets (skipped when absent), the original
CamSeq01 layout on a fixture written here, the demo data sets, patch recomposition, errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sjunet.data.common import validation_size
import torch
from PIL import Image

from sjunet.data import DATASETS, TASK_OF, default_root, get_dataset
from sjunet.data.common import IGNORE_INDEX, DatasetError, fingerprint, make_rng, random_flip, read_image
from sjunet.data.patches import predict_by_patches


def _data_dir() -> Path:
    env = os.environ.get("SJUNET_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


DATA = _data_dir()


def real(subdir: str) -> Path:
    """The data directory, skipping the test when ``subdir`` is not there."""
    if not (DATA / subdir).is_dir():
        pytest.skip(f"real data not available: {DATA / subdir} not found (shared/data or $SJUNET_DATA)")
    return DATA


def check_segmentation_item(item, channels: int, num_classes: int, shape=None) -> None:
    x, y = item
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.dim() == 3 and x.shape[0] == channels and y.shape == x.shape[1:]
    if shape is not None:
        assert tuple(y.shape) == tuple(shape)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    labels = set(torch.unique(y).tolist())
    assert labels <= set(range(num_classes)) | {IGNORE_INDEX}


def check_describe(ds) -> dict:
    info = ds.describe()
    json.dumps(info)
    assert info["num_items"] == len(ds) and info["split"] == ds.split
    assert len(info["fingerprint"]) == 16 and int(info["fingerprint"], 16) >= 0
    return info


# --------------------------------------------------------------------------- registry / errors


def test_registry() -> None:
    assert set(DATASETS) == {"em", "drive", "camseq", "bsd", "set12", "bsd68", "cbsd68", "demo-seg", "demo-denoise",
                             "em3d", "demo-seg3d"}
    assert TASK_OF["em"] == TASK_OF["drive"] == TASK_OF["camseq"] == TASK_OF["demo-seg"] == "segmentation"
    assert TASK_OF["bsd"] == TASK_OF["set12"] == TASK_OF["cbsd68"] == TASK_OF["demo-denoise"] == "denoising"
    assert default_root("em") == "ISBI2012-EM" and default_root("cbsd68") == "BSD/CBSD68"
    assert default_root("demo-seg") is None
    with pytest.raises(DatasetError, match="valid names: .*em.*drive"):
        get_dataset("nope", None, "train")
    with pytest.raises(DatasetError, match="unknown option.*bogus"):
        get_dataset("demo-seg", None, "train", bogus=1)
    with pytest.raises(DatasetError, match="unknown split"):
        get_dataset("demo-seg", None, "training")
    assert issubclass(DatasetError, ValueError)


@pytest.mark.parametrize("name", ["em", "drive", "camseq", "bsd", "set12", "bsd68", "cbsd68"])
def test_refuses_empty_or_wrong_directory(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="expected") as err:
        get_dataset(name, tmp_path, DATASETS[name].SPLITS[0])
    assert str(tmp_path) in str(err.value)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="expected"):
        get_dataset(name, tmp_path / "images", DATASETS[name].SPLITS[0])
    with pytest.raises(DatasetError, match="does not exist|expected"):
        get_dataset(name, tmp_path / "missing", DATASETS[name].SPLITS[0])


def test_em_missing_label_is_refused(tmp_path: Path) -> None:
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / f"{i}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "labels" / "0.png")
    with pytest.raises(DatasetError, match="no label file"):
        get_dataset("em", tmp_path, "train", test_images=1, val_images=1)


# --------------------------------------------------------------------------- helpers


def test_common_helpers(tmp_path: Path) -> None:
    a, b = make_rng(3, 1, 2).random(4), make_rng(3, 1, 2).random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, make_rng(3, 2, 1).random(4))
    img = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    lab = np.arange(12).reshape(3, 4)
    for seed in range(8):
        fi, fl = random_flip([img, lab], make_rng(seed), horizontal=True, vertical=True)
        assert np.array_equal(fi[..., 0], fl)  # image and label flipped together
    f = tmp_path / "a.png"
    Image.fromarray(np.full((4, 4, 3), (255, 0, 0), np.uint8)).save(f)
    fp1 = fingerprint([f])
    gray = read_image(f, 1)
    assert gray.shape == (4, 4, 1) and np.allclose(gray, 0.299)
    assert read_image(f, 3).shape == (4, 4, 3)
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(f)
    assert fingerprint([f]) != fp1


# --------------------------------------------------------------------------- patches


def test_predict_by_patches_matches_full_image() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, kernel_size=1)
    image = torch.rand(3, 50, 61)
    out = predict_by_patches(conv, image, patch=16, stride=5, batch_size=7)
    with torch.no_grad():
        direct = conv(image[None])[0]
    assert out.shape == (2, 50, 61)
    torch.testing.assert_close(out, direct, rtol=1e-5, atol=1e-6)
    batch = torch.rand(2, 3, 20, 20)
    out_b = predict_by_patches(conv, batch, patch=8, stride=4)
    with torch.no_grad():
        torch.testing.assert_close(out_b, conv(batch), rtol=1e-5, atol=1e-6)


def test_predict_by_patches_averages_overlaps() -> None:
    calls = []

    def patch_id(x: torch.Tensor) -> torch.Tensor:
        # every window returns a constant: its running number
        start = sum(calls)
        calls.append(x.shape[0])
        ids = torch.arange(start, start + x.shape[0], dtype=torch.float32)
        return ids.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:]).clone()

    out = predict_by_patches(patch_id, torch.zeros(1, 8, 8), patch=4, stride=2, batch_size=3)
    # windows on a 3x3 grid (corners 0,2,4), numbered row-major 0..8
    assert out.shape == (1, 8, 8) and sum(calls) == 9
    assert out[0, 0, 0] == 0  # only window 0
    assert out[0, 2, 2] == pytest.approx((0 + 1 + 3 + 4) / 4)  # windows (0,0),(0,2),(2,0),(2,2)
    assert out[0, 3, 5] == pytest.approx((1 + 2 + 4 + 5) / 4)
    # padding: a 9x9 image needs a 10x10 canvas for 4x4 windows every 2
    assert predict_by_patches(lambda x: x, torch.ones(1, 9, 9), patch=4, stride=2).shape == (1, 9, 9)


# --------------------------------------------------------------------------- demo


def test_demo_segmentation() -> None:
    ds = get_dataset("demo-seg", None, "train", seed=1)
    assert (len(ds), ds.in_channels, ds.num_classes, ds.CLASS_NAMES) == (64, 1, 2, ("background", "vessel"))
    x, y = ds[3]
    check_segmentation_item((x, y), 1, 2, (64, 64))
    again = get_dataset("demo-seg", None, "train", seed=1)[3]
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    test = get_dataset("demo-seg", None, "test", seed=1)
    assert len(test) == 16 and not torch.equal(test[3][0], x)
    fraction = torch.stack([test[i][1] for i in range(len(test))]).float().mean()
    assert 0.08 < fraction < 0.3
    assert torch.equal(test[0][0], get_dataset("demo-seg", None, "test", seed=1)[0][0])
    small = get_dataset("demo-seg", None, "val", size=32, num_items=3)
    assert len(small) == 3 and small[0][0].shape == (1, 32, 32)
    check_describe(ds)


def test_demo_denoising() -> None:
    train = get_dataset("demo-denoise", None, "train", seed=0, samples_per_epoch=8)
    noisy, noise = train[0]
    assert noisy.shape == noise.shape == (1, 64, 64) and train.in_channels == 1 and train.num_classes == 0
    clean = noisy - noise
    assert -1e-6 <= float(clean.min()) and float(clean.max()) <= 1 + 1e-6
    assert torch.equal(noisy, get_dataset("demo-denoise", None, "train", seed=0, samples_per_epoch=8)[0][0])
    train.set_epoch(1)
    assert not torch.equal(noisy, train[0][0])
    test = get_dataset("demo-denoise", None, "test", color=True, sigma=50)
    noisy, noise = test[0]
    assert noisy.shape == (3, 128, 128) and abs(float(noise.std()) * 255 - 50) < 2
    check_describe(test)


# --------------------------------------------------------------------------- CamSeq01 original layout


def write_camseq32(root: Path, frames: int = 10) -> list[tuple[int, int, int]]:
    colors = [(64, 128, 64), (192, 0, 128), (0, 0, 0)]
    (root / "label_colors.txt").write_text("64 128 64\tAnimal\n192 0 128\tArchway\n0 0 0\tVoid\n")
    for i in range(frames):
        name = f"0016E5_{i:05d}"
        Image.fromarray(np.full((6, 8, 3), i * 20, np.uint8)).save(root / f"{name}.png")
        label = np.zeros((6, 8, 3), np.uint8)
        label[:, :4] = colors[0]
        label[:, 4:] = colors[1]
        label[0, 0] = (1, 2, 3)  # not in the table → ignored
        label[5, 7] = colors[2]
        Image.fromarray(label).save(root / f"{name}_L.png")
    return colors


def test_camseq_original_layout(tmp_path: Path) -> None:
    write_camseq32(tmp_path)
    ds = get_dataset("camseq", tmp_path, "train", size=None)
    assert ds.layout == "camseq32" and ds.num_classes == 3 and ds.CLASS_NAMES == ("Animal", "Archway", "Void")
    assert ds.in_channels == 3 and len(ds) == 8 - validation_size(8) == 4  # frames 0..3; val 4..7
    x, y = get_dataset("camseq", tmp_path, "test", size=None)[0]
    check_segmentation_item((x, y), 3, 3, (6, 8))
    assert y[0, 0] == IGNORE_INDEX and y[5, 7] == 2 and y[1, 1] == 0 and y[1, 5] == 1
    assert float(x[0, 0, 0]) == pytest.approx(8 * 20 / 255)  # test = frames 8, 9
    resized = get_dataset("camseq", tmp_path, "val", size=(12, 16))
    assert len(resized) == 4 and resized[0][0].shape == (3, 12, 16) and resized[0][1].shape == (12, 16)
    assert resized.describe()["class_names"] == ["Animal", "Archway", "Void"]
    (tmp_path / "0016E5_00003_L.png").unlink()
    with pytest.raises(DatasetError, match="no label file"):
        get_dataset("camseq", tmp_path, "train")


# --------------------------------------------------------------------------- real data


def test_em() -> None:
    data = real("ISBI2012-EM")
    train, test = get_dataset("em", data, "train"), get_dataset("em", data / "ISBI2012-EM", "test")
    assert (len(train), len(test), len(get_dataset("em", data, "val"))) == (25, 5, 5)
    assert len(get_dataset("em", data, "train", holdout_val=True)) == 20
    assert test.options["images"] == [f"{i}.png" for i in range(25, 30)]
    assert train.CLASS_NAMES == ("membrane", "interior") and train.in_channels == 1
    x, y = test[0]
    check_segmentation_item((x, y), 1, 2, (512, 512))
    assert 0.1 < float((y == 0).float().mean()) < 0.5  # membrane is the minority class
    crops = get_dataset("em", data, "train", crop=64, samples_per_epoch=50, seed=7)
    a = crops[30]
    check_segmentation_item(a, 1, 2, (64, 64))
    assert len(crops) == 50
    assert torch.equal(a[0], get_dataset("em", data, "train", crop=64, samples_per_epoch=50, seed=7)[30][0])
    crops.set_epoch(1)
    assert not torch.equal(a[0], crops[30][0])
    assert check_describe(test)["fingerprint"] != check_describe(train)["fingerprint"]


def test_drive() -> None:
    data = real("DRIVE")
    train = get_dataset("drive", data, "train", samples_per_epoch=20, seed=3)
    assert len(train) == 20 and train.CLASS_NAMES == ("background", "vessel")
    x, y = train[5]
    check_segmentation_item((x, y), 1, 2, (48, 48))
    assert int(y[24, 24]) != IGNORE_INDEX  # patch centres lie inside the field of view
    val = get_dataset("drive", data, "val")
    assert val.options["images"] == [f"{i}_training.tif" for i in range(37, 41)] and len(val) == 4  # max(4, 20 % of 20)
    check_segmentation_item(val[1], 1, 2, (584, 565))  # validated whole, like the test images
    test = get_dataset("drive", data, "test")
    assert len(test) == 20
    x, y = test[0]
    check_segmentation_item((x, y), 1, 2, (584, 565))
    ignored = float((y == IGNORE_INDEX).float().mean())
    vessel = float((y == 1).sum()) / float((y != IGNORE_INDEX).sum())
    assert 0.2 < ignored < 0.5 and 0.05 < vessel < 0.2
    check_describe(test)


def test_camseq_camvid11() -> None:
    data = real("CamSeq01-CamVid11")
    splits = {s: get_dataset("camseq", data, s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [64, 17, 20]  # val: 20 % of the 81 non-test frames
    train = splits["train"]
    assert train.layout == "camvid11" and train.num_classes == 11 and train.CLASS_NAMES[3] == "Road"
    names = [[p.name for p, _ in d.pairs] for d in splits.values()]
    assert names[0][-1] < names[1][0] and names[1][-1] < names[2][0]  # contiguous blocks
    x, y = splits["test"][0]
    check_segmentation_item((x, y), 3, 11, (256, 256))
    check_describe(train)


def test_bsd_training() -> None:
    data = real("BSD/BSD200")
    train = get_dataset("bsd", data, "train", seed=2)
    assert len(train) == 200 and train.in_channels == 1 and train.task == "denoising"
    noisy, noise = train[0]
    assert noisy.shape == noise.shape == (1, 192, 256)
    assert torch.equal(noisy, get_dataset("bsd", data, "train", seed=2)[0][0])
    val = get_dataset("bsd", data, "val", color=True)
    assert len(val) == 40 and val.in_channels == 3  # 20 % of BSD200
    noisy, noise = val[9]
    assert noisy.shape == (3, 192, 256)
    assert abs(float(noise.std()) * 255 - 25) < 1
    clean = noisy - noise
    assert -1e-6 <= float(clean.min()) and float(clean.max()) <= 1 + 1e-6
    check_describe(val)


@pytest.mark.parametrize("name,count,channels", [("set12", 12, 1), ("bsd68", 68, 1), ("cbsd68", 68, 3)])
def test_denoising_test_sets(name: str, count: int, channels: int) -> None:
    data = real(default_root(name))
    ds = get_dataset(name, data, "test", sigma=15)
    assert len(ds) == count and ds.in_channels == channels
    noisy, noise = ds[0]
    assert noisy.shape[0] == channels and noisy.shape == noise.shape
    clean = read_image(ds.files[0], channels).transpose(2, 0, 1)
    np.testing.assert_allclose((noisy - noise).numpy(), clean, atol=1e-6)
    assert abs(float(noise.std()) * 255 - 15) < 1
    again = get_dataset(name, data / default_root(name), "test", sigma=15)[0]
    assert torch.equal(noise, again[1])  # fixed seed per image
    assert not torch.equal(noise, get_dataset(name, data, "test", sigma=50)[0][1] * 15 / 50)
    check_describe(ds)
