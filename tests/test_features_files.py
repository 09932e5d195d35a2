"""Features files: what save_features refuses to stamp, what load_features refuses to read."""

import os
import sys
import zipfile

import numpy as np
import pytest

from skfishing import DeepFisherTransformer
from skfishing.datasets import load_digits_images
from skfishing.features import gradient_dtype, load_features, save_features


@pytest.fixture(scope="module")
def images():
    return load_digits_images(size=32).images[:6]


def _dropped_metadata(Z, tmp_path):
    """Z after a round trip through np.save and np.load, which drop dtype metadata."""
    with pytest.warns(UserWarning, match="metadata"):
        np.save(tmp_path / "z.npy", Z)
    plain = np.load(tmp_path / "z.npy")
    assert plain.dtype.metadata is None and plain.dtype == Z.dtype
    return plain


# -- save_features: provenance is stamped only where it can be checked -------------


def test_features_without_provenance_are_not_stamped_with_another_temperature(images, tmp_path):
    """Temperature-4 features whose dtype lost its metadata, saved with a
    temperature-2 transformer, are refused: widths match, the temperature
    cannot be checked, so the file would lie."""
    tau4 = DeepFisherTransformer("tinyalexnet", layer=7, temperature=4.0).fit(images)
    tau2 = DeepFisherTransformer("tinyalexnet", layer=7, temperature=2.0).fit(images)
    plain = _dropped_metadata(tau4.transform(images), tmp_path)
    out = tmp_path / "z.npz"
    for transformer in (tau2, tau4):  # the right one cannot be told from the wrong one either
        with pytest.raises(
            ValueError, match=r"carry no provenance.*temperature and labels cannot be checked"
        ):
            save_features(out, plain, transformer)
    assert not out.exists()
    save_features(out, plain)  # without a transformer: no provenance claimed
    data = load_features(out)
    assert data.temperature is None and data.source is None and data.features.dtype.metadata is None
    with pytest.raises(ValueError, match=r"temperature 4\.0 \(transformer: 2\.0\)"):
        save_features(tmp_path / "z2.npz", tau4.transform(images), tau2)
    save_features(tmp_path / "z4.npz", tau4.transform(images), tau4)
    assert load_features(tmp_path / "z4.npz").temperature == 4.0


@pytest.mark.parametrize("features", ["activation", "probabilities"])
def test_an_array_of_other_width_or_dtype_is_not_stamped(images, tmp_path, features):
    """A random (10, 3) array does not get the provenance of a layer-7
    activation transformer; nor an array of the right width in float64."""
    fish = DeepFisherTransformer("tinyalexnet", layer=7 if features == "activation" else 8, features=features)
    fish.fit(images)
    A = fish.transform(images)
    out = tmp_path / "a.npz"
    rng = np.random.default_rng(0)
    with pytest.raises(
        ValueError, match=rf"float32 of width 3, but the transformer computes float32 {features}"
    ):
        save_features(out, rng.random((10, 3)).astype(np.float32), fish)
    with pytest.raises(ValueError, match=rf"float64 of width {A.shape[1]}.*width {A.shape[1]}"):
        save_features(out, A.astype(np.float64), fish)
    with pytest.raises(ValueError, match=r"width 3"):
        save_features(out, rng.random((10, 3)), fish)
    assert not out.exists()
    save_features(out, A, fish)
    np.testing.assert_array_equal(load_features(out).features, A)


def test_gradient_features_of_other_widths_are_refused(images, tmp_path):
    """Structured features with the transformer's provenance but other widths."""
    fish = DeepFisherTransformer("tinyalexnet", layer=7).fit(images)
    Z = fish.transform(images)
    d, D = Z["forward"].shape[1], Z["backward"].shape[1]
    forged = np.zeros(4, dtype=gradient_dtype(d + 1, D, dict(Z.dtype.metadata)))
    forged["forward"][:, 0] = forged["backward"][:, 0] = 1
    with pytest.raises(ValueError, match=rf"'forward' are float32 of width {d + 1}.*width {d} \(layer 7\)"):
        save_features(tmp_path / "z.npz", forged, fish)
    forged = np.zeros(4, dtype=gradient_dtype(d, 3, dict(Z.dtype.metadata)))
    forged["forward"][:, 0] = forged["backward"][:, 0] = 1
    with pytest.raises(ValueError, match=rf"'backward' are float32 of width 3.*width {D}"):
        save_features(tmp_path / "z.npz", forged, fish)
    assert not (tmp_path / "z.npz").exists()


# -- load_features: what it refuses, naming the file --------------------------------


def test_values_beyond_float32_are_refused_not_turned_into_inf(tmp_path):
    """float64 values above the float32 range would load as inf (gradient
    features are float32): refused, naming the file and the array."""
    big = np.ones((3, 2))
    big[1, 0] = 1e39
    np.savez(tmp_path / "big.npz", forward=big, backward=np.ones((3, 2)))
    with pytest.raises(
        ValueError, match=r"big\.npz': array 'forward' holds values up to 1e\+39, beyond the float32"
    ):
        load_features(tmp_path / "big.npz")
    np.savez(tmp_path / "plain.npz", features=-big)
    with pytest.raises(ValueError, match=r"plain\.npz': array 'features' holds values up to 1e\+39"):
        load_features(tmp_path / "plain.npz")
    np.savez(tmp_path / "ok.npz", forward=big / 1e10, backward=np.ones((3, 2)))
    assert np.isfinite(load_features(tmp_path / "ok.npz").features["forward"]).all()


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_a_forged_huge_shape_is_refused_before_allocating(tmp_path, version):
    """A header declaring shape (1e6, 1e6) gives an error naming the file and
    the array, not a MemoryError."""
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("forward", "backward"):
            header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
            with archive.open(f"{name}.npy", "w") as member:
                write = (
                    np.lib.format.write_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.write_array_header_2_0
                )
                write(member, header)
                member.write(np.ones(8, np.float32).tobytes())
    with pytest.raises(
        ValueError, match=r"forged\.npz': array 'forward' declares shape \(1000000, 1000000\)"
    ):
        load_features(path)
    np.savez(path, forward=np.ones((3, 2), np.float32), backward=np.ones((3, 2), np.float32))
    assert load_features(path).features.shape == (3,)  # a file of the declared size loads


def test_a_folder_or_fifo_is_named_for_what_it_is(tmp_path):
    folder = tmp_path / "features.npz"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"features\.npz' is a folder, not a features file"):
        load_features(folder)
    with pytest.raises(FileNotFoundError, match=r"no such features file.*missing\.npz"):
        load_features(tmp_path / "missing.npz")
    if sys.platform == "win32":
        return
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe\.npz' is a FIFO, not a features file"):
        load_features(fifo)
