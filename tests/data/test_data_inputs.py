"""Tests of how the loaders read awkward or broken image / label files, on fixtures written here:
8/16-bit, 1-bit and float images, binary labels stored as 0/1, 0/255 or noisy values, class
indices out of range, truncated or corrupt files and image / label size mismatches. Each bad
file must give one :class:`DatasetError` line naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from sjunet.data import get_dataset
from sjunet.data.common import IGNORE_INDEX, DatasetError, binary_label, read_image, read_label

H, W = 16, 24


def stripes(low: int, high: int, dtype=np.uint8) -> np.ndarray:
    """A label with ``low`` on the left half and ``high`` on the right half."""
    label = np.full((H, W), low, dtype)
    label[:, W // 2 :] = high
    return label


def write_em(
    root: Path, n: int = 3, label: np.ndarray | None = None, image: np.ndarray | None = None
) -> Path:
    """EM layout ``root/images/<i>.png`` + ``root/labels/<i>.png`` with ``n`` pairs; use it with
    ``test_images=1, val_images=1`` (the last pair is the ``test`` split)."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = image if image is not None else rng.integers(0, 256, (H, W), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(label if label is not None else stripes(0, 255)).save(root / "labels" / f"{i}.png")
    return root


def em(root: Path, split: str = "test"):
    return get_dataset("em", root, split, test_images=1, val_images=1)


def one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    """The error's message, checked to be one line containing every one of ``parts``."""
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------- bit depths


@pytest.mark.parametrize("mode,suffix", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif")])
def test_16bit_image_is_scaled_by_65535(mode: str, suffix: str, tmp_path: Path) -> None:
    values = np.random.default_rng(1).integers(0, 65536, (H, W)).astype(np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    if mode == "I":
        im = Image.fromarray(values.astype(np.int32))
    else:
        im = Image.frombytes(mode, (W, H), values.astype(">u2" if mode.endswith("B") else "<u2").tobytes())
    path = tmp_path / f"a{suffix}"
    im.save(path)
    assert Image.open(path).mode == mode
    gray = read_image(path, 1)
    assert gray.shape == (H, W, 1) and gray.dtype == np.float32
    assert abs(float(gray.mean()) - values.mean() / 65535) < 1e-4
    np.testing.assert_allclose(gray[..., 0], values / 65535, atol=1e-6)
    assert read_image(path, 3).shape == (H, W, 3)


def test_16bit_em_images_are_read_in_unit_range(tmp_path: Path) -> None:
    image = (np.arange(H * W).reshape(H, W) * 150).astype(np.uint16)
    ds = em(write_em(tmp_path, image=image))
    x, _ = ds[0]
    assert abs(float(x.mean()) - image.mean() / 65535) < 1e-4 and float(x.max()) < 1.0


def test_int32_image_outside_16bit_range_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    Image.fromarray(np.full((H, W), 70000, np.int32)).save(path)
    with pytest.raises(DatasetError) as err:
        read_image(path, 1)
    one_line(err, str(path), "70000")


def test_1bit_and_8bit_images(tmp_path: Path) -> None:
    bits = np.zeros((H, W), bool)
    bits[::2] = True
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png", 1)[..., 0], bits.astype(np.float32))
    gray = np.arange(H * W).reshape(H, W).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_allclose(read_image(tmp_path / "gray.png", 1)[..., 0], gray / 255, atol=1e-7)


# --------------------------------------------------------------------------- float images


def test_float_image_in_unit_range_is_taken_as_is(tmp_path: Path) -> None:
    values = np.random.default_rng(2).random((H, W)).astype(np.float32)
    values[0, 0], values[0, 1] = 0.0, 1.0
    Image.fromarray(values).save(tmp_path / "f.tif")
    gray = read_image(tmp_path / "f.tif", 1)
    np.testing.assert_array_equal(gray[..., 0], values)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif", 3)[..., 2], values)


def test_float_image_outside_unit_range_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    Image.fromarray(np.linspace(-3, 1000, H * W, dtype=np.float32).reshape(H, W)).save(path)
    with pytest.raises(DatasetError) as err:
        read_image(path, 1)
    one_line(err, str(path), "-3", "1000", "[0, 1]", "16-bit")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_image_with_non_finite_values_is_refused(bad: float, tmp_path: Path) -> None:
    values = np.full((H, W), 0.5, np.float32)
    values[3, 4] = bad
    path = tmp_path / "f.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(DatasetError) as err:
        read_image(path, 1)
    one_line(err, str(path), "non-finite")


# --------------------------------------------------------------------------- binary labels


@pytest.mark.parametrize(
    "low,high,dtype",
    [(0, 1, np.uint8), (0, 255, np.uint8), (0, 1, np.uint16), (0, 255, np.uint16), (0, 65535, np.uint16)],
)
def test_binary_label_value_sets(low: int, high: int, dtype, tmp_path: Path) -> None:
    expected = stripes(0, 1)
    np.testing.assert_array_equal(binary_label(stripes(low, high, dtype), tmp_path / "l.png"), expected)


@pytest.mark.parametrize(
    "value,dtype,cls",
    [(0, np.uint8, 0), (1, np.uint8, 1), (255, np.uint8, 1), (65535, np.uint16, 1), (3, np.uint8, 0)],
)
def test_single_valued_binary_label(value: int, dtype, cls: int, tmp_path: Path) -> None:
    out = binary_label(np.full((H, W), value, dtype), tmp_path / "l.png")
    assert out.dtype == np.uint8 and np.all(out == cls)


def test_binary_label_with_values_near_both_ends(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    label = stripes(0, 255).astype(np.int64)
    label += np.where(label == 0, 1, -1) * rng.integers(0, 6, label.shape)  # JPEG-like ringing
    label[0, 0] = 128  # one pixel of 384 (0.3 %) far from both ends is tolerated
    out = binary_label(label.astype(np.uint8), tmp_path / "l.jpg")
    expected = stripes(0, 1)
    expected[0, 0] = 1
    np.testing.assert_array_equal(out, expected)
    sixteen = stripes(300, 65000, np.uint16)
    np.testing.assert_array_equal(binary_label(sixteen, tmp_path / "l.png"), stripes(0, 1))


@pytest.mark.parametrize(
    "label",
    [
        np.arange(H * W).reshape(H, W).astype(np.uint8),  # many gray levels
        stripes(0, 2),  # two values, neither 0/1 nor 0/255, both near 0: not all one class
        np.full((H, W), 128, np.uint8),  # a single value in the middle
        stripes(1000, 30000, np.uint16),  # 16-bit values far from the ends
    ],
)
def test_ambiguous_binary_label_is_refused(label: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "l.png"
    with pytest.raises(DatasetError) as err:
        binary_label(label, path)
    values = np.unique(label)
    one_line(err, str(path), str(values[0]), str(values[-1]))


def test_colour_binary_label_is_refused(tmp_path: Path) -> None:
    label = np.zeros((H, W, 3), np.uint8)
    label[:, W // 2 :] = (255, 0, 0)
    with pytest.raises(DatasetError) as err:
        binary_label(label, tmp_path / "l.png")
    one_line(err, "l.png", "colour")
    gray_rgb = np.repeat(stripes(0, 255)[..., None], 3, axis=2)
    np.testing.assert_array_equal(binary_label(gray_rgb, tmp_path / "l.png"), stripes(0, 1))


@pytest.mark.parametrize("high", [1, 255])
def test_em_binary_labels_0_1_and_0_255(high: int, tmp_path: Path) -> None:
    x, y = em(write_em(tmp_path, label=stripes(0, high)))[0]
    assert set(y.unique().tolist()) == {0, 1}
    np.testing.assert_array_equal(y.numpy(), stripes(0, 1))


def test_em_ambiguous_label_is_refused(tmp_path: Path) -> None:
    write_em(tmp_path, label=np.arange(H * W).reshape(H, W).astype(np.uint8))
    with pytest.raises(DatasetError) as err:
        em(tmp_path)[0]
    one_line(err, str(tmp_path / "labels" / "2.png"), "0, 1, 2")


def write_drive(
    root: Path, label_high: int = 255, mask_high: int = 255, suffix: str = ".png", label_size=(64, 64)
) -> Path:
    """DRIVE ``test`` layout with one 64x64 image: a vertical vessel, a FOV without a 2-pixel border.
    Labels and masks are written as ``suffix`` files: ``.png`` keeps the values written, ``.gif``
    (as DRIVE) stores palette indices, which PIL numbers 0/1 for a 0/255 image."""
    base = root / "test"
    for sub in ("images", "1st_manual", "mask"):
        (base / sub).mkdir(parents=True)
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / "images" / "01_test.tif")
    vessel = np.zeros(label_size, np.uint8)
    vessel[:, 30:34] = label_high
    Image.fromarray(vessel).save(base / "1st_manual" / f"01_manual1{suffix}")
    fov = np.zeros((64, 64), np.uint8)
    fov[2:-2, 2:-2] = mask_high
    Image.fromarray(fov).save(base / "mask" / f"01_test_mask{suffix}")
    return root


@pytest.mark.parametrize(
    "label_high,mask_high,suffix",
    [(255, 255, ".png"), (1, 1, ".png"), (1, 255, ".png"), (255, 1, ".png"), (255, 255, ".gif")],
)
def test_drive_binary_labels_and_masks(label_high: int, mask_high: int, suffix: str, tmp_path: Path) -> None:
    write_drive(tmp_path, label_high, mask_high, suffix)
    if suffix == ".png":
        assert read_label(tmp_path / "test" / "1st_manual" / "01_manual1.png").max() == label_high
    _, y = get_dataset("drive", tmp_path, "test")[0]
    y = y.numpy()
    assert y[0, 0] == IGNORE_INDEX and y[10, 10] == 0 and y[10, 31] == 1
    assert int((y == 1).sum()) == 60 * 4 and int((y == IGNORE_INDEX).sum()) == 64 * 64 - 60 * 60


# --------------------------------------------------------------------------- class indices


def write_camvid11(root: Path, frames: int = 10, bad: dict[int, int] | None = None) -> Path:
    """CamVid-11 layout: ``root/images/f<i>.png`` and ``root/labels/f<i>.png`` holding classes
    0..10 plus 11 (void) and 255; ``bad`` maps a frame to a value written into its label."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    label = (np.arange(H * W).reshape(H, W) % 12).astype(np.uint8)
    label[0, 0] = IGNORE_INDEX
    for i in range(frames):
        Image.fromarray(np.full((H, W, 3), i * 20, np.uint8)).save(root / "images" / f"f{i}.png")
        frame_label = label.copy()
        if bad and i in bad:
            frame_label[5, 5] = frame_label[6, 7] = bad[i]
        Image.fromarray(frame_label).save(root / "labels" / f"f{i}.png")
    return root


def test_camvid11_valid_labels_keep_their_mapping(tmp_path: Path) -> None:
    _, y = get_dataset("camseq", write_camvid11(tmp_path), "test", size=None)[0]
    raw = (np.arange(H * W).reshape(H, W) % 12)
    expected = np.where(raw == 11, IGNORE_INDEX, raw)
    expected[0, 0] = IGNORE_INDEX
    np.testing.assert_array_equal(y.numpy(), expected)


@pytest.mark.parametrize("value", [12, 37, 254])
def test_camvid11_out_of_range_class_is_refused(value: int, tmp_path: Path) -> None:
    write_camvid11(tmp_path, bad={8: value})
    ds = get_dataset("camseq", tmp_path, "test", size=None)  # frames 8, 9
    with pytest.raises(DatasetError) as err:
        ds[0]
    one_line(err, str(tmp_path / "labels" / "f8.png"), str(value))
    ds[1]  # the other frame is fine


def test_camvid11_colour_label_is_refused(tmp_path: Path) -> None:
    write_camvid11(tmp_path)
    colour = np.zeros((H, W, 3), np.uint8)
    colour[:, : W // 2] = (128, 128, 128)  # CamVid's Sky colour
    colour[:, W // 2 :] = (128, 0, 0)  # CamVid's Building colour
    Image.fromarray(colour).save(tmp_path / "labels" / "f9.png")
    ds = get_dataset("camseq", tmp_path, "test", size=None)
    with pytest.raises(DatasetError) as err:
        ds[1]
    one_line(err, str(tmp_path / "labels" / "f9.png"), "colour")


def test_float_label_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.tif"
    Image.fromarray(stripes(0, 1).astype(np.float32)).save(path)
    with pytest.raises(DatasetError) as err:
        read_label(path)
    one_line(err, str(path), "float")


# --------------------------------------------------------------------------- broken files


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("load_truncated", [False, True])
@pytest.mark.parametrize("which", ["images", "labels"])
def test_truncated_file_is_refused(which: str, load_truncated: bool, tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(5)
    write_em(tmp_path, image=rng.integers(0, 256, (H, W), dtype=np.uint8))
    path = tmp_path / which / "2.png"
    big = rng.integers(0, 256, (H, W), dtype=np.uint8)  # the header's size fits its partner: the data is cut
    Image.fromarray(big if which == "images" else (big > 127).astype(np.uint8) * 255).save(path)
    truncate(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    with pytest.raises(DatasetError) as err:
        em(tmp_path)[0]
    one_line(err, str(path), "cannot read image", "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # the caller's setting is restored


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_corrupt_file_is_refused(content: bytes | None, tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    if content is None:  # a damaged compressed stream
        data = bytearray(path.read_bytes())
        data[100:140] = bytes(40)
        content = bytes(data)
    path.write_bytes(content)
    for read in (lambda p: read_image(p, 1), read_label):
        with pytest.raises(DatasetError) as err:
            read(path)
        one_line(err, str(path), "cannot read image")


# --------------------------------------------------------------------------- sizes


def test_em_size_mismatch_names_both_files(tmp_path: Path) -> None:
    write_em(tmp_path)
    Image.fromarray(np.zeros((H + 2, W), np.uint8)).save(tmp_path / "labels" / "2.png")
    with pytest.raises(DatasetError) as err:
        em(tmp_path)[0]
    one_line(err, str(tmp_path / "images" / "2.png"), str(tmp_path / "labels" / "2.png"), f"{H + 2}x{W}")


def test_drive_size_mismatch_names_both_files(tmp_path: Path) -> None:
    write_drive(tmp_path, label_size=(64, 60))
    with pytest.raises(DatasetError) as err:
        get_dataset("drive", tmp_path, "test")[0]
    one_line(err, "01_test.tif", "01_manual1.png", "64x60")


def test_camseq_size_mismatch_names_both_files(tmp_path: Path) -> None:
    write_camvid11(tmp_path)
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(tmp_path / "labels" / "f9.png")
    with pytest.raises(DatasetError) as err:
        get_dataset("camseq", tmp_path, "test")[1]
    one_line(err, str(tmp_path / "images" / "f9.png"), str(tmp_path / "labels" / "f9.png"))
