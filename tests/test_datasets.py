"""Tests of the VOC loaders (2007 and 2012 devkit folders, npz archive) and the digits."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from skfishing.datasets import (
    VOC2007_CLASSES,
    VOC2012_CLASSES,
    load_digits_images,
    load_voc2007,
    load_voc2007_npz,
    load_voc2012,
)

SHARED_VOC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "voc2007_trainval64.npz"

# Split file order on purpose not sorted: the loader keeps the file's order.
TRAIN_IDS = ["000012", "000005"]
VAL_IDS = ["000009", "000017", "000007"]


def _devkit_labels(ids):
    """Deterministic devkit labels in {1, -1, 0}, shape (len(ids), 20)."""
    rows = [np.roll(np.array([1, -1, 0, -1, -1] * 4), int(i)) for i in ids]
    return np.array(rows)


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def _make_devkit(root, year="2007", train_ids=TRAIN_IDS, val_ids=VAL_IDS):
    """A VOCdevkit folder with tiny JPEGs and train/val/trainval sets."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    main = voc / "ImageSets" / "Main"
    (voc / "JPEGImages").mkdir(parents=True)
    for k, image_id in enumerate(train_ids + val_ids):
        pixels = np.full((6, 8, 3), 40 * k, dtype=np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg")
    for split, ids in [
        ("train", train_ids),
        ("val", val_ids),
        ("trainval", train_ids + val_ids),
    ]:
        _write(main / f"{split}.txt", ids)
        labels = _devkit_labels(ids)
        for c, name in enumerate(VOC2007_CLASSES):
            # The devkit pads positive labels with a second space.
            _write(
                main / f"{name}_{split}.txt",
                [f"{i} {'' if v < 0 else ' '}{v}" for i, v in zip(ids, labels[:, c])],
            )
    return root / "VOCdevkit"


@pytest.fixture
def devkit(tmp_path):
    """A VOCdevkit folder with VOC2007: 5 tiny JPEGs, train/val/trainval sets."""
    return _make_devkit(tmp_path)


def test_classes():
    assert len(VOC2007_CLASSES) == 20 == len(set(VOC2007_CLASSES))
    assert VOC2007_CLASSES[0] == "aeroplane" and VOC2007_CLASSES[-1] == "tvmonitor"
    assert VOC2007_CLASSES[14] == "person"
    assert list(VOC2007_CLASSES) == sorted(VOC2007_CLASSES)


@pytest.mark.parametrize("split, ids", [("train", TRAIN_IDS), ("val", VAL_IDS)])
def test_load_voc2007(devkit, split, ids):
    voc = load_voc2007(devkit, split=split)
    expected = _devkit_labels(ids)
    assert voc.ids.tolist() == ids
    assert voc.labels.dtype == np.uint8 and voc.labels.shape == (len(ids), 20)
    np.testing.assert_array_equal(voc.labels, expected == 1)
    assert voc.difficult.dtype == bool
    np.testing.assert_array_equal(voc.difficult, expected == 0)
    assert voc.images == [str(devkit / "VOC2007" / "JPEGImages" / f"{i}.jpg") for i in ids]
    assert all(isinstance(p, str) and Path(p).is_file() for p in voc.images)
    assert voc.classes.tolist() == list(VOC2007_CLASSES)
    assert voc.split.tolist() == [split] * len(ids)


def test_default_split_and_both_root_layouts(devkit):
    from_devkit = load_voc2007(devkit)
    from_voc2007 = load_voc2007(str(devkit / "VOC2007"), "trainval")
    assert from_devkit.ids.tolist() == TRAIN_IDS + VAL_IDS
    for key in ("labels", "difficult", "ids", "images"):
        np.testing.assert_array_equal(from_devkit[key], from_voc2007[key])


def test_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_voc2007(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="expected either a VOCdevkit"):
        load_voc2007(tmp_path)


@pytest.mark.parametrize("split", ["", "../train", None, 3])
def test_bad_split_name(devkit, split):
    with pytest.raises(
        ValueError, match="split must be the name of an image set|'split' parameter of load_voc2007 must be"
    ):
        load_voc2007(devkit, split=split)


def test_missing_split_file(devkit):
    with pytest.raises(FileNotFoundError, match="test.txt"):
        load_voc2007(devkit, "test")


def test_missing_class_file(devkit):
    (devkit / "VOC2007" / "ImageSets" / "Main" / "sofa_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="sofa_val.txt"):
        load_voc2007(devkit, "val")


def _class_file(devkit, name="cow", split="val"):
    return devkit / "VOC2007" / "ImageSets" / "Main" / f"{name}_{split}.txt"


def test_id_not_in_split(devkit):
    path = _class_file(devkit)
    path.write_text(path.read_text() + "000005 -1\n")
    with pytest.raises(ValueError, match=r"cow_val.txt, line 4: .*'000005'"):
        load_voc2007(devkit, "val")


@pytest.mark.parametrize("bad_line", ["000017  2", "000017", "000017 1 1", "000017 yes"])
def test_malformed_line(devkit, bad_line):
    path = _class_file(devkit)
    lines = path.read_text().splitlines()
    lines[1] = bad_line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"cow_val.txt, line 2: expected"):
        load_voc2007(devkit, "val")


def test_blank_lines_are_skipped(devkit):
    path = _class_file(devkit)
    path.write_text("\n" + path.read_text() + "\n\n")
    np.testing.assert_array_equal(load_voc2007(devkit, "val").labels, _devkit_labels(VAL_IDS) == 1)


def test_duplicate_and_missing_ids(devkit):
    path = _class_file(devkit)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(ValueError, match=r"no label for 1 image.*'000007'"):
        load_voc2007(devkit, "val")
    path.write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(ValueError, match="line 4: duplicate id '000009'"):
        load_voc2007(devkit, "val")
    split_file = devkit / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    split_file.write_text("000012\n000005\n000012\n")
    with pytest.raises(ValueError, match="train.txt, line 3: duplicate"):
        load_voc2007(devkit, "train")


def test_missing_jpegs_are_listed(devkit):
    for image_id in VAL_IDS[:2]:
        (devkit / "VOC2007" / "JPEGImages" / f"{image_id}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2 of the 3") as error:
        load_voc2007(devkit, "val")
    assert "000009.jpg" in str(error.value) and "000017.jpg" in str(error.value)
    assert "000007.jpg" not in str(error.value)


# -- VOC 2012 --------------------------------------------------------------------

# VOC2012 image ids carry the year of the image.
TRAIN_IDS_2012 = ["2008_000008", "2008_000002", "2011_003276"]
VAL_IDS_2012 = ["2008_000014", "2012_004331"]


def _labels_2012(ids):
    return _devkit_labels([int(i.replace("_", "")) % 97 for i in ids])


@pytest.fixture
def devkit2012(tmp_path):
    """A VOCdevkit folder holding both VOC2007 and VOC2012, as unpacked releases are."""
    _make_devkit(tmp_path, "2007")
    root = tmp_path / "VOCdevkit"
    voc = root / "VOC2012"
    main = voc / "ImageSets" / "Main"
    (voc / "JPEGImages").mkdir(parents=True)
    for k, image_id in enumerate(TRAIN_IDS_2012 + VAL_IDS_2012):
        Image.fromarray(np.full((7, 5, 3), 30 * k, dtype=np.uint8)).save(
            voc / "JPEGImages" / f"{image_id}.jpg"
        )
    for split, ids in [
        ("train", TRAIN_IDS_2012),
        ("val", VAL_IDS_2012),
        ("trainval", TRAIN_IDS_2012 + VAL_IDS_2012),
    ]:
        _write(main / f"{split}.txt", ids)
        labels = _labels_2012(ids)
        for c, name in enumerate(VOC2012_CLASSES):
            _write(
                main / f"{name}_{split}.txt",
                [f"{i} {'' if v < 0 else ' '}{v}" for i, v in zip(ids, labels[:, c])],
            )
    return root


@pytest.mark.parametrize(
    "split, ids",
    [("train", TRAIN_IDS_2012), ("val", VAL_IDS_2012), ("trainval", TRAIN_IDS_2012 + VAL_IDS_2012)],
)
def test_load_voc2012(devkit2012, split, ids):
    voc = load_voc2012(devkit2012, split)
    expected = _labels_2012(ids)
    assert voc.ids.tolist() == ids
    np.testing.assert_array_equal(voc.labels, expected == 1)
    np.testing.assert_array_equal(voc.difficult, expected == 0)
    assert voc.labels.dtype == np.uint8 and voc.difficult.dtype == bool
    assert voc.images == [str(devkit2012 / "VOC2012" / "JPEGImages" / f"{i}.jpg") for i in ids]
    assert voc.classes.tolist() == list(VOC2007_CLASSES) and voc.split.tolist() == [split] * len(ids)
    # the same devkit's VOC2007 is read by the other loader, and vice versa
    assert (
        load_voc2007(devkit2012, split).ids.tolist()
        == {"train": TRAIN_IDS, "val": VAL_IDS, "trainval": TRAIN_IDS + VAL_IDS}[split]
    )
    from_folder = load_voc2012(devkit2012 / "VOC2012", split)
    assert from_folder.images == voc.images


def test_voc2012_errors_name_the_release_and_the_file(devkit2012, tmp_path):
    only2007 = _make_devkit(tmp_path / "only2007")
    with pytest.raises(FileNotFoundError, match="not a PASCAL VOC2012 folder"):
        load_voc2012(only2007)
    with pytest.raises(FileNotFoundError, match="looks like another release than VOC2007"):
        load_voc2007(devkit2012 / "VOC2012")
    with pytest.raises(FileNotFoundError, match="looks like another release than VOC2012"):
        load_voc2012(devkit2012 / "VOC2007")
    (devkit2012 / "VOC2012" / "ImageSets" / "Main" / "dog_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="VOC2012/ImageSets/Main/dog_val.txt"):
        load_voc2012(devkit2012, "val")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        load_voc2012(devkit2012, "test")  # test labels are not public


# -- npz archive ----------------------------------------------------------------


@pytest.fixture
def archive(tmp_path):
    rng = np.random.RandomState(0)
    n = 6
    arrays = dict(
        images=rng.randint(0, 256, size=(n, 4, 4, 3)).astype(np.uint8),
        labels=rng.randint(0, 2, size=(n, 20)).astype(np.uint8),
        difficult=rng.randint(0, 2, size=(n, 20)).astype(np.uint8),
        classes=np.array(VOC2007_CLASSES),
        split=np.array(["val", "train", "train", "val", "val", "train"]),
        ids=np.array([f"{i:06d}" for i in range(n)]),
        orig_hw=rng.randint(100, 500, size=(n, 2)).astype(np.int16),
    )
    path = tmp_path / "voc.npz"
    np.savez_compressed(path, **arrays)
    return path, arrays


@pytest.mark.parametrize("split", [None, "trainval", "train", "val"])
def test_load_npz(archive, split):
    path, arrays = archive
    rows = np.arange(6) if split in (None, "trainval") else arrays["split"] == split
    voc = load_voc2007_npz(path, split=split)
    np.testing.assert_array_equal(voc.images, arrays["images"][rows])
    assert voc.images.dtype == np.uint8
    np.testing.assert_array_equal(voc.labels, arrays["labels"][rows])
    assert voc.labels.dtype == np.uint8
    np.testing.assert_array_equal(voc.difficult, arrays["difficult"][rows] == 1)
    assert voc.difficult.dtype == bool
    np.testing.assert_array_equal(voc.ids, arrays["ids"][rows])
    np.testing.assert_array_equal(voc.split, arrays["split"][rows])
    np.testing.assert_array_equal(voc.orig_hw, arrays["orig_hw"][rows])
    assert voc.classes.tolist() == list(VOC2007_CLASSES)


def test_npz_errors(archive, tmp_path):
    path, arrays = archive
    with pytest.raises(ValueError, match="'split' parameter of load_voc2007_npz must be a str among"):
        load_voc2007_npz(path, split="test")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_voc2007_npz(tmp_path / "missing.npz")
    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, **{k: v for k, v in arrays.items() if k != "difficult"})
    with pytest.raises(ValueError, match="lacks the array.*difficult"):
        load_voc2007_npz(incomplete)
    inconsistent = tmp_path / "inconsistent.npz"
    np.savez(inconsistent, **{**arrays, "ids": arrays["ids"][:-1]})
    with pytest.raises(ValueError, match="ids must have shape"):
        load_voc2007_npz(inconsistent)
    grey = tmp_path / "grey.npz"
    np.savez(grey, **{**arrays, "images": arrays["images"][..., 0]})
    with pytest.raises(ValueError, match=r"uint8 of shape \(N, H, W, 3\)"):
        load_voc2007_npz(grey)


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_VOC.is_file(), reason=f"{SHARED_VOC} not present")
def test_shared_voc2007_archive():
    voc = load_voc2007_npz(SHARED_VOC)
    assert voc.images.shape == (5008, 64, 64, 3)
    assert voc.classes.tolist() == list(VOC2007_CLASSES)
    # Positive images per class (trainval) from the data README.
    expected = [238, 242, 330, 181, 244, 186, 711, 337, 445, 141,
                200, 421, 287, 245, 2006, 245, 96, 229, 261, 256]  # fmt: skip
    np.testing.assert_array_equal(voc.labels.sum(0), expected)
    assert not (voc.labels.astype(bool) & voc.difficult).any()
    train = load_voc2007_npz(SHARED_VOC, "train")
    val = load_voc2007_npz(SHARED_VOC, "val")
    assert (len(train.ids), len(val.ids)) == (2500, 2508)
    assert set(train.split) == {"train"} and set(val.split) == {"val"}
    assert not set(train.ids) & set(val.ids)


# -- digits ---------------------------------------------------------------------


def test_digits_images_original_size():
    digits = load_digits()
    data = load_digits_images(size=8)
    assert data.images.shape == (1797, 8, 8, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images[..., 1], np.rint(digits.images * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(data.target, digits.target)
    np.testing.assert_array_equal(data.target_names, np.arange(10))


def test_digits_images_upsampled():
    digits = load_digits()
    data = load_digits_images()
    images = data.images
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 1]).all()
    assert (images[..., 0] == images[..., 2]).all()
    assert images.max() > 200  # white strokes survive the resize
    # Averaging 4x4 blocks gives back (close to) the 8x8 digit.
    blocks = images[..., 0].reshape(1797, 8, 4, 8, 4).mean((2, 4))
    original = digits.images * 255 / 16
    correlation = np.corrcoef(blocks.ravel(), original.ravel())[0, 1]
    assert correlation > 0.95


@pytest.mark.parametrize("size", [4, 7.5, "32", True])
def test_digits_images_bad_size(size):
    with pytest.raises(
        ValueError, match=r"'size' parameter of load_digits_images must be an int in the range \[8, inf\)"
    ):
        load_digits_images(size=size)
