"""Tests of the volumetric datasets (``em3d``, ``demo-seg3d``), 3-D items through the shared helpers
and the typed options, and segmentation metrics on ``[B, D, H, W]`` volumes. The ``em3d`` logic runs
on a small stack written here; the real ISBI-2012 stack is checked when present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sjunet.data import DATASETS, TASK_OF, check_dataset_options, check_fits, get_dataset, spatial_size
from sjunet.data.common import IGNORE_INDEX, DatasetError, image_to_tensor, label_to_tensor, segmentation_item
from sjunet.metrics import MetricAccumulator, confusion_matrix, segmentation_metrics
from sjunet.tasks import task_for

from test_data import real

# the fixture stack: 12 sections of 48x80; blocks train x<40, val 40..55, test 56..79
D, H, W = 12, 48, 80
SMALL = {"val_x": 40, "test_x": 56}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """An ISBI-2012-like directory: ``images/0.png…`` (gray) and ``labels/0.png…`` (0/255)."""
    root = tmp_path_factory.mktemp("em3d") / "ISBI2012-EM"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for z in range(D):
        Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(root / "images" / f"{z}.png")
        Image.fromarray(np.where(rng.random((H, W)) < 0.3, 0, 255).astype(np.uint8)).save(root / "labels" / f"{z}.png")
    return root


def check_volume_item(item, channels: int, shape) -> None:
    x, y = item
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.dim() == 4 and x.shape[0] == channels and tuple(y.shape) == tuple(x.shape[1:]) == tuple(shape)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(torch.unique(y).tolist()) <= {0, 1, IGNORE_INDEX}


# --------------------------------------------------------------------------- registry, helpers


def test_registry_and_spatial_dims() -> None:
    assert {"em3d", "demo-seg3d"} <= set(DATASETS)
    assert TASK_OF["em3d"] == TASK_OF["demo-seg3d"] == "segmentation"
    for name, cls in DATASETS.items():
        assert cls.spatial_dims == (3 if name in ("em3d", "demo-seg3d") else 2), name
    assert DATASETS["em3d"].CLASS_NAMES == DATASETS["em"].CLASS_NAMES
    assert DATASETS["em3d"].FOREGROUND == DATASETS["em"].FOREGROUND == "membrane"


def test_segmentation_item_2d_unchanged_and_3d() -> None:
    rng = np.random.default_rng(1)
    image, label = rng.random((5, 7, 3), dtype=np.float32), rng.integers(0, 3, (5, 7)).astype(np.uint8)
    label[0, 0] = IGNORE_INDEX
    x, y = segmentation_item(image, label)
    assert torch.equal(x, image_to_tensor(image)) and torch.equal(y, label_to_tensor(label))
    assert tuple(x.shape) == (3, 5, 7) and int(y[0, 0]) == IGNORE_INDEX
    gray = rng.random((5, 7), dtype=np.float32)  # channel-less 2-D image
    assert torch.equal(segmentation_item(gray, label)[0], image_to_tensor(gray))

    volume, vlabel = rng.random((4, 5, 7, 2), dtype=np.float32), rng.integers(0, 2, (4, 5, 7)).astype(np.uint8)
    vlabel[1, 2, 3] = IGNORE_INDEX
    x, y = segmentation_item(volume, vlabel)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert tuple(x.shape) == (2, 4, 5, 7) and tuple(y.shape) == (4, 5, 7)
    assert torch.equal(x, torch.from_numpy(np.moveaxis(volume, -1, 0))) and int(y[1, 2, 3]) == IGNORE_INDEX
    assert tuple(segmentation_item(volume[..., 0], vlabel)[0].shape) == (1, 4, 5, 7)  # channel-less volume
    with pytest.raises(DatasetError, match="differ in size"):
        segmentation_item(volume[:3], vlabel)


def test_volume_options_typed() -> None:
    assert check_dataset_options("em3d", {"crop": "4x32x32"}) == {"crop": (4, 32, 32)}
    assert check_dataset_options("em3d", {"crop": [4, 32, 32], "val_x": "100"}) == {"crop": (4, 32, 32), "val_x": 100}
    assert check_dataset_options("em3d", {"crop": 16, "flip": "no"}) == {"crop": 16, "flip": False}
    assert check_dataset_options("em3d", {"crop": "none"}) == {"crop": None}
    assert check_dataset_options("demo-seg3d", {"size": "8,16,16"}) == {"size": (8, 16, 16)}
    bad = [
        ("em3d", {"crop": [8, 64]}, "crop: takes a volume size"),
        ("em3d", {"crop": [8, 64, 0]}, "crop: takes a volume size"),
        ("em3d", {"crop": "abc"}, "crop: takes a volume size"),
        ("em3d", {"val_x": 0}, "val_x"),
        ("demo-seg3d", {"size": 4}, "size: takes a volume size: a whole number in 8..256"),
        ("demo-seg3d", {"size": [8, 16, 999]}, "size"),
        ("demo-seg3d", {"bogus": 1}, "unknown option"),
    ]
    for name, opts, match in bad:
        with pytest.raises(DatasetError, match=match) as err:
            check_dataset_options(name, opts)
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- em3d on a fixture stack


def test_em3d_shapes_layout_and_whole_blocks(stack: Path) -> None:
    train = get_dataset("em3d", stack.parent, "train", crop=[4, 16, 16], samples_per_epoch=5, **SMALL)
    val = get_dataset("em3d", stack, "val", **SMALL)
    test = get_dataset("em3d", stack, "test", **SMALL)
    assert len(train) == 5 and len(val) == len(test) == 1
    check_volume_item(train[0], 1, (4, 16, 16))
    check_volume_item(val[0], 1, (D, H, 16))
    check_volume_item(test[0], 1, (D, H, 24))
    layout = {"axis": "x", "train": [0, 40], "val": [40, 56], "test": [56, 80]}
    for ds in (train, val, test):
        info = ds.describe()
        assert info["spatial_dims"] == 3 and info["options"]["layout"] == layout
        assert info["options"]["x_range"] == layout[ds.split]
    # the recorded ranges are disjoint and tile the width
    spans = [layout[s] for s in ("train", "val", "test")]
    assert spans[0][1] == spans[1][0] and spans[1][1] == spans[2][0] and spans[2][1] == W
    # val / test are exactly their column block of the stack (no crop, no flip), every epoch
    image, label = test.volume()
    x, y = test[0]
    assert torch.equal(x[0], torch.tensor(image[:, :, 56:, 0])) and torch.equal(y, torch.tensor(label[:, :, 56:]).long())
    test.set_epoch(3)
    assert torch.equal(test[0][0], x)
    # the default keeps the validation columns out of training; holdout_val=False trains on x < test_x
    assert get_dataset("em3d", stack, "train", crop=4, holdout_val=False, **SMALL).options["x_range"] == [0, 56]
    # crop=None: the whole training block
    whole = get_dataset("em3d", stack, "train", crop=None, **SMALL)
    assert tuple(whole[0][1].shape) == (D, H, 40)


def test_em3d_crops_never_leave_the_train_block(stack: Path) -> None:
    for holdout, end in ((True, 40), (False, 56)):
        ds = get_dataset("em3d", stack, "train", crop=[4, 16, 16], samples_per_epoch=20, flip=False,
                         holdout_val=holdout, **SMALL)
        image, label = ds.volume()
        xs = set()
        for epoch in range(5):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                z, y0, x0, d, h, w = ds.crop_box(i)
                assert 0 <= x0 and x0 + w <= end and 0 <= z and z + d <= D and 0 <= y0 and y0 + h <= H
                xs.add(x0)
                x, y = ds[i]  # without flips the item is the stack at its box
                assert torch.equal(y, torch.tensor(label[z:z + d, y0:y0 + h, x0:x0 + w]).long())
                assert torch.equal(x[0], torch.tensor(image[z:z + d, y0:y0 + h, x0:x0 + w, 0]))
        assert max(xs) + 16 >= end - 4  # crops do reach the block's right end


def test_em3d_determinism_and_epochs(stack: Path) -> None:
    a = get_dataset("em3d", stack, "train", crop=[4, 16, 16], samples_per_epoch=4, seed=3, **SMALL)
    b = get_dataset("em3d", stack, "train", crop=[4, 16, 16], samples_per_epoch=4, seed=3, **SMALL)
    for i in range(4):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    first = [a[i][0] for i in range(4)]
    a.set_epoch(1)
    assert any(not torch.equal(first[i], a[i][0]) for i in range(4))
    a.set_epoch(0)
    assert all(torch.equal(first[i], a[i][0]) for i in range(4))
    c = get_dataset("em3d", stack, "train", crop=[4, 16, 16], samples_per_epoch=4, seed=4, **SMALL)
    assert any(not torch.equal(first[i], c[i][0]) for i in range(4))
    # flips change the content but not the crop box or the shape
    f = get_dataset("em3d", stack, "train", crop=[4, 16, 16], samples_per_epoch=4, seed=3, flip=False, **SMALL)
    assert [f.crop_box(i) for i in range(4)] == [a.crop_box(i) for i in range(4)]


def test_em3d_bad_options_one_line(stack: Path) -> None:
    cases = [
        ({"crop": [4, 16, 41]}, "does not fit in the train block of 12x48x40"),
        ({"crop": [13, 16, 16]}, "does not fit"),
        ({"crop": 64}, "does not fit"),
        ({"val_x": 56, "test_x": 56}, "0 < val_x < test_x < width"),
        ({"val_x": 40, "test_x": 80}, "0 < val_x < test_x < width"),
    ]
    for opts, match in cases:
        with pytest.raises(DatasetError, match=match) as err:
            get_dataset("em3d", stack, "train", **{**SMALL, **opts})
        assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="expected"):
        get_dataset("em3d", stack / "images", "test")
    # val / test ignore the training crop: a crop bigger than their block is fine there
    assert len(get_dataset("em3d", stack, "val", crop=[4, 16, 41], **SMALL)) == 1


# --------------------------------------------------------------------------- em3d on the real stack


def test_em3d_real_stack() -> None:
    data = real("ISBI2012-EM")
    train = get_dataset("em3d", data, "train", samples_per_epoch=3)
    val, test = get_dataset("em3d", data, "val"), get_dataset("em3d", data, "test")
    check_volume_item(train[0], 1, (8, 64, 64))
    check_volume_item(val[0], 1, (30, 512, 64))
    xt, yt = test[0]
    check_volume_item((xt, yt), 1, (30, 512, 256))
    assert test.options["layout"] == {"axis": "x", "train": [0, 192], "val": [192, 256], "test": [256, 512]}
    assert all(train.crop_box(i)[2] + 64 <= 192 for i in range(3))
    # same classes as the 2-D em dataset: its image 25 (first test image) is section 25 of the stack
    x2, y2 = get_dataset("em", data, "test")[0]
    assert torch.equal(yt[25], y2[:, 256:]) and torch.equal(xt[0, 25], x2[0, :, 256:])
    assert 0.1 < float((yt == 0).float().mean()) < 0.4  # membrane is the minority class
    assert task_for(test).metric == "f1_membrane"


# --------------------------------------------------------------------------- demo-seg3d


def test_demo_seg3d_items() -> None:
    sets = {s: get_dataset("demo-seg3d", None, s) for s in ("train", "val", "test")}
    assert [len(sets[s]) for s in ("train", "val", "test")] == [32, 8, 8]
    for ds in sets.values():
        check_volume_item(ds[0], 1, (16, 32, 32))
        assert ds.describe()["spatial_dims"] == 3
    # both classes in every item, foreground a reasonable minority overall
    ys = torch.stack([sets["val"][i][1] for i in range(8)])
    assert all(set(torch.unique(y).tolist()) == {0, 1} for y in ys)
    share = float(ys.float().mean())
    assert 0.05 < share < 0.35
    # the object is brighter than the background (learnable)
    xs = torch.stack([sets["val"][i][0][0] for i in range(8)])
    assert float(xs[ys == 1].mean()) > float(xs[ys == 0].mean()) + 0.1
    # splits differ; the same seed reproduces, another seed does not
    assert not torch.equal(sets["val"][0][0], sets["test"][0][0])
    again = get_dataset("demo-seg3d", None, "val")
    assert torch.equal(again[3][0], sets["val"][3][0]) and torch.equal(again[3][1], sets["val"][3][1])
    assert not torch.equal(get_dataset("demo-seg3d", None, "val", seed=1)[3][0], sets["val"][3][0])
    t = task_for(sets["train"])
    assert t.metric == "f1_object" and t.new_meter().spatial_dims == 3


def test_demo_seg3d_epochs_and_options() -> None:
    ds = get_dataset("demo-seg3d", None, "train", size=[8, 16, 24], num_items=6)
    check_volume_item(ds[0], 1, (8, 16, 24))
    first = [ds[i][1] for i in range(6)]
    ds.set_epoch(1)
    assert any(not torch.equal(first[i], ds[i][1]) for i in range(6))  # fresh flips per epoch
    ds.set_epoch(0)
    assert all(torch.equal(first[i], ds[i][1]) for i in range(6))
    noflip = get_dataset("demo-seg3d", None, "train", size=[8, 16, 24], num_items=6, flip=False)
    assert torch.equal(noflip[2][1], torch.from_numpy(noflip.load(2)[1]).long())
    assert tuple(get_dataset("demo-seg3d", None, "test", size=12, num_items=1)[0][1].shape) == (12, 12, 12)
    with pytest.raises(DatasetError, match="8..256") as err:
        get_dataset("demo-seg3d", None, "train", size=[4, 32, 32])
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- metrics on volumes


def test_metrics_on_volumes() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (2, 3, 4, 5), generator=g)
    target[0, 0, 0, :2] = IGNORE_INDEX
    logits = torch.randn(2, 2, 3, 4, 5, generator=g)
    pred = logits.argmax(1)
    cm3 = confusion_matrix(pred, target, 2)
    # the same voxels as a batch of 2-D images give the same matrix
    assert torch.equal(cm3, confusion_matrix(pred.reshape(6, 4, 5), target.reshape(6, 4, 5), 2))
    assert int(cm3.sum()) == target.numel() - 2
    for spatial_dims in (3, 2):  # logits are recognised by their class axis either way
        meter = MetricAccumulator("segmentation", 2, ("membrane", "interior"), spatial_dims=spatial_dims)
        meter.update(logits, target, reference=pred)
        assert torch.equal(meter.cm, cm3)
        assert meter.result()["agreement"] == 1.0
    assert meter.result()["num_images"] == 1.0  # spatial_dims=2 cannot tell a batch of volumes
    meter = MetricAccumulator("segmentation", 2, ("membrane", "interior"), spatial_dims=3)
    meter.update(logits, target)
    meter.update(pred.float(), target)  # floating labels of the target's shape are labels
    r = meter.result()
    assert r["num_images"] == 4.0 and torch.equal(meter.cm, 2 * cm3)
    assert r == {**segmentation_metrics(2 * cm3, ("membrane", "interior")), "num_images": 4.0}
    # 2-D unchanged: [B,K,H,W] logits, [B,H,W] targets, batches counted
    meter2 = MetricAccumulator("segmentation", 2)
    meter2.update(logits[:, :, 0], target[:, 0])
    assert torch.equal(meter2.cm, confusion_matrix(pred[:, 0], target[:, 0], 2)) and meter2.num_images == 2
    meter2.update(logits[0, :, 0][None], target[0, 0])  # one [1,K,H,W] against an [H,W] target
    assert meter2.num_images == 3
    with pytest.raises(ValueError, match="spatial_dims"):
        MetricAccumulator("segmentation", 2, spatial_dims=4)


# --------------------------------------------------------------------------- size rule


def test_check_fits_volumes(stack: Path) -> None:
    train = get_dataset("em3d", stack, "train", crop=[4, 16, 24], samples_per_epoch=1, **SMALL)
    assert spatial_size(train) == (4, 16, 24)
    check_fits(train, 4, padded=False)
    check_fits(train, (2, 8, 8), padded=False)
    with pytest.raises(DatasetError, match=r"volumes of 4×16×24 \(em3d, train split\) cannot pass the ANN: "
                                           r"depth 4 must be a multiple of 8; pass --opt crop="):
        check_fits(train, 8, padded=False, what="the ANN")
    with pytest.raises(DatasetError, match="width 24 must be a multiple of 16; pass --opt crop=") as err:
        check_fits(train, (1, 16, 16), padded=False)
    assert "\n" not in str(err.value)
    check_fits(get_dataset("em3d", stack, "val", **SMALL), 16, padded=True)  # evaluation pads
    demo = get_dataset("demo-seg3d", None, "train", num_items=1)
    check_fits(demo, 16, padded=False)
    with pytest.raises(DatasetError, match="depth 16 must be a multiple of 32; pass --opt size="):
        check_fits(demo, 32, padded=False)
    # images keep the 2-D rule and message
    with pytest.raises(DatasetError, match="height and width must be multiples of 32"):
        check_fits(get_dataset("demo-seg", None, "train", num_items=1, size=48), 32, padded=False)
