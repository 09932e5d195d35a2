"""Gradient features of layers applied at several positions in files and Zarr stores."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from test_kernel_positions import multi_position

from skfishing import TensorSketch, trace_kernel
from skfishing.features import gradient_dtype, load_features, save_features

SOURCE = {"model_sha256": "ab" * 32, "layer": 3, "temperature": 2.0, "labels": (0.25, 0.75)}


def with_source(Z):
    T = Z.dtype["forward"].shape[0] if Z.dtype["forward"].ndim == 2 else None
    out = np.empty(len(Z), dtype=gradient_dtype(*(Z.dtype[f].shape[-1] for f in Z.dtype.names), SOURCE, T))
    out["forward"], out["backward"] = Z["forward"], Z["backward"]
    return out


@pytest.mark.parametrize("T", [None, 5])
def test_save_and_load_keep_positions_values_and_provenance(tmp_path, T):
    Z = with_source(multi_position(6, T, 4, 3))
    save_features(tmp_path / "Z.npz", Z, paths=[f"{i}.png" for i in range(6)])
    loaded = load_features(tmp_path / "Z.npz")
    assert loaded.features.dtype == Z.dtype and dict(loaded.features.dtype.metadata) == SOURCE
    assert_array_equal(loaded.features["forward"], Z["forward"])
    assert_array_equal(loaded.features["backward"], Z["backward"])
    assert_array_equal(trace_kernel(loaded.features), trace_kernel(Z))


def test_one_position_as_2d_fields_loads_as_1d_fields(tmp_path):
    """gradient_dtype(positions=1) is the FC layout: 1-D fields, the same kernel."""
    Z = multi_position(6, 1, 4, 3)
    save_features(tmp_path / "Z.npz", Z)
    loaded = load_features(tmp_path / "Z.npz").features
    assert loaded.dtype == gradient_dtype(4, 3)
    assert_array_equal(loaded["forward"], Z["forward"][:, 0])
    assert_array_equal(trace_kernel(loaded), trace_kernel(Z))


def test_save_names_the_row_and_refuses_other_layouts(tmp_path):
    Z = multi_position(6, 5, 4, 3)
    Z["backward"][3, 2, 1] = np.inf
    with pytest.raises(ValueError, match="'backward' contains NaN or infinity in row 3"):
        save_features(tmp_path / "Z.npz", Z)
    bad = np.zeros(3, dtype=[("forward", "f4", (4, 6)), ("backward", "f4", (5, 3))])
    with pytest.raises(
        ValueError, match="features fields 'forward' and 'backward' must have the same number"
    ):
        save_features(tmp_path / "bad.npz", bad)
    assert not list(tmp_path.iterdir())


def test_load_refuses_fields_of_different_positions(tmp_path):
    np.savez(tmp_path / "bad.npz", forward=np.zeros((3, 4, 6), "f4"), backward=np.zeros((3, 5, 2), "f4"))
    with pytest.raises(ValueError, match=r"bad\.npz'.*different numbers of positions"):
        load_features(tmp_path / "bad.npz")
    np.savez(
        tmp_path / "deep.npz", forward=np.zeros((3, 4, 6, 1), "f4"), backward=np.zeros((3, 4, 2, 1), "f4")
    )
    with pytest.raises(ValueError, match=r"array 'forward' must be a non-empty 2-D float array \(or 3-D\)"):
        load_features(tmp_path / "deep.npz")


def test_zarr_round_trip_and_sketch_of_the_store(tmp_path):
    dask = pytest.importorskip("dask")
    pytest.importorskip("zarr")
    from skfishing.distributed import dask_transform, from_zarr, to_zarr

    Z = with_source(multi_position(23, 5, 4, 3))
    with dask.config.set(scheduler="synchronous"):
        stored = to_zarr(Z, tmp_path / "Z.zarr")
        assert stored.dtype == Z.dtype and dict(stored.dtype.metadata) == SOURCE
        back = from_zarr(tmp_path / "Z.zarr").compute()
        assert_array_equal(back["forward"], Z["forward"])
        assert_array_equal(back["backward"], Z["backward"])
        sketch = TensorSketch(15, random_state=0).fit(Z[:1])
        assert_array_equal(
            dask_transform(sketch, from_zarr(tmp_path / "Z.zarr")).compute(), sketch.transform(Z)
        )
        bad = np.zeros(3, dtype=[("forward", "f4", (4, 6)), ("backward", "f4", (5, 3))])
        with pytest.raises(ValueError, match="Z fields 'forward' and 'backward' must have the same number"):
            to_zarr(bad, tmp_path / "bad.zarr")
