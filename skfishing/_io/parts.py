"""Long extractions written in parts: resumable, and able to skip unreadable images.

``skfishing extract`` computes the features of its images a *part* (a run
of consecutive images) at a time and writes each part, atomically, to a
parts folder beside the output (``feats.npz`` -> ``feats.npz.parts``). When
the run stops (an unreadable image, an error, Ctrl-C, a killed job), the
finished parts stay; the same command run again checks them and computes
only the rest. A part is used again only if it was computed with the same
settings (model content, layer, temperature, kind of features, image
preprocessing, execution providers) from the same image files (same paths,
sizes and modification times); otherwise it is computed again.

With ``skip_bad``, an image that cannot be read (truncated, corrupt, not an
image, missing) is left out and reported instead of stopping the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from sklearn.utils._param_validation import validate_params

from .._extraction.batches import image_error
from .._extraction.images import preprocess_image
from .files import atomic_path

__all__ = ["parts_folder"]  # PartsFolder serves skfishing extract

#: Value of ``format`` in the manifest of a parts folder.
FORMAT = "skfishing-parts-1"
_MANIFEST = "manifest.json"
#: Errors of an image that cannot be read (Pillow's are OSError or, once
#: named by skfishing._extraction.batches, ValueError).
_IMAGE_ERRORS = (OSError, ValueError)


@validate_params({"output": [str, os.PathLike]}, prefer_skip_nested_validation=True)
def parts_folder(output):
    """The parts folder of an output file: ``feats.npz`` -> ``feats.npz.parts``.

    Parameters
    ----------
    output : str or path-like
        The output file.

    Returns
    -------
    folder : pathlib.Path
    """
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _stats(paths):
    """Size and modification time (ns) of each file; -1 where it cannot be read."""
    rows = []
    for path in paths:
        try:
            found = os.stat(path)
            rows.append((found.st_size, found.st_mtime_ns))
        except OSError:
            rows.append((-1, -1))
    return np.array(rows, dtype=np.int64).reshape(len(rows), 2)


class PartsFolder:
    """The parts of one extraction: which are done, computing the rest, the result.

    Parameters
    ----------
    folder : str or path-like
        The parts folder (see :func:`parts_folder`).
    paths : list of str
        The images, in output order.
    settings : dict
        What the features depend on besides the images (JSON values); a
        folder written with other settings is refused.
    part_size : int
        Images per part.
    """

    def __init__(self, folder, paths, settings, part_size):
        self.folder = Path(folder)
        self.paths = list(paths)
        self.part_size = int(part_size)
        self.manifest = {
            "format": FORMAT,
            "part_size": self.part_size,
            "settings": settings,
        }
        self.n_parts = -(-len(self.paths) // self.part_size)

    # -- the folder -----------------------------------------------------------

    def open(self):
        """Create the folder, or check that it holds a run of the same settings.

        Returns
        -------
        n_written : int
            The number of parts already written (each is checked before it
            is used again).

        Raises
        ------
        ValueError
            If the folder exists but is not a parts folder, or holds a run
            with other settings.
        """
        manifest = self.folder / _MANIFEST
        shown = os.fsdecode(self.folder)
        if self.folder.is_dir() and manifest.is_file():
            try:
                found = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"parts folder {shown!r}: cannot read {_MANIFEST}: {exc}") from None
            if found != json.loads(json.dumps(self.manifest)):
                differ = _differences(found, self.manifest)
                raise ValueError(
                    f"parts folder {shown!r} holds an unfinished extraction with other settings "
                    f"({differ}); run that command again to finish it, or remove the folder to "
                    "start this one"
                )
            return len(list(self.folder.glob("part-*.npz")))
        if os.path.lexists(self.folder):
            raise ValueError(
                f"{shown!r} exists and is not a parts folder of skfishing extract (no {_MANIFEST}); "
                "it would hold the finished parts of this run: move it away or choose another output"
            )
        self.folder.mkdir()
        with atomic_path(manifest) as temporary:
            Path(temporary).write_text(json.dumps(self.manifest, indent=1), encoding="utf-8")
        return 0

    def remove(self):
        """Remove the parts and the manifest, and the folder if nothing else is in it."""
        # with the temporary files of writes that a killed run left behind
        for pattern in ("part-*.npz", ".part-*.npz.*.part", f".{_MANIFEST}.*.part"):
            for part in self.folder.glob(pattern):
                part.unlink(missing_ok=True)
        (self.folder / _MANIFEST).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # something else was put there: left alone

    def has_parts(self):
        """Whether at least one part is written."""
        return any(self.folder.glob("part-*.npz"))

    def _file(self, k):
        return self.folder / f"part-{k:06d}.npz"

    def _range(self, k):
        return k * self.part_size, min(len(self.paths), (k + 1) * self.part_size)

    # -- one part -------------------------------------------------------------

    def _load(self, k, skip_bad=True):
        """Part ``k`` as ``{"blocks": {...}, "skipped": [...]}``, or None if it must be computed."""
        path = self._file(k)
        if not path.is_file():
            return None
        start, stop = self._range(k)
        paths = self.paths[start:stop]
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except Exception:  # a damaged part is computed again
            return None
        if (
            arrays.get("paths") is None
            or arrays["paths"].tolist() != paths
            or not np.array_equal(arrays.get("stats"), _stats(paths))
        ):
            return None  # other images, or changed since
        skipped = arrays.get("skipped", np.zeros(0, np.int64)).tolist()
        reasons = arrays.get("reasons", np.zeros(0, str)).tolist()
        if skipped and not skip_bad:
            return None  # computed with skip_bad: this run wants an error instead
        blocks = {name: arrays[name] for name in ("forward", "backward", "features") if name in arrays}
        if any(len(block) != len(paths) - len(skipped) for block in blocks.values()):
            return None
        return {"blocks": blocks, "skipped": list(zip(skipped, reasons))}

    def _save(self, k, blocks, skipped):
        start, stop = self._range(k)
        paths = self.paths[start:stop]
        arrays = dict(blocks)
        arrays["paths"] = np.array(paths, dtype=str).reshape(len(paths))
        arrays["stats"] = _stats(paths)
        arrays["skipped"] = np.array([i for i, _ in skipped], dtype=np.int64)
        arrays["reasons"] = np.array([r for _, r in skipped], dtype=str).reshape(len(skipped))
        with atomic_path(self._file(k)) as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)

    def compute(self, transformer, preprocessing, *, skip_bad=False, on_part=None, on_skip=None):
        """Compute the missing parts and return the whole result.

        Parameters
        ----------
        transformer : DeepFisherTransformer
            Fitted; its ``transform`` runs on the images of each part.
        preprocessing : ImagePreprocessing
            The model's, to find which images of a failed part cannot be read.
        skip_bad : bool, default=False
            Leave out images that cannot be read instead of stopping.
        on_part : callable, default=None
            Called with the number of images of each part once it is done
            (read back or computed).
        on_skip : callable, default=None
            Called with ``(index, path, message)`` for each image left out.

        Returns
        -------
        blocks : dict of ndarray
            ``"forward"`` and ``"backward"``, or ``"features"``: the rows of
            the images kept, in order.
        skipped : list of int
            Indices of the images left out.
        """
        results = []
        for k in range(self.n_parts):
            start, stop = self._range(k)
            part = self._load(k, skip_bad)
            if part is None:
                part = self._compute(k, transformer, preprocessing, skip_bad)
                self._save(k, part["blocks"], part["skipped"])
            if on_skip is not None:
                for i, reason in part["skipped"]:
                    on_skip(start + i, self.paths[start + i], reason)
            results.append(part)
            if on_part is not None:
                on_part(stop - start)
        names = [name for part in results for name in part["blocks"]]
        if not names:
            self.remove()  # nothing left to resume
            raise ValueError(f"no image could be read: all {len(self.paths)} were skipped")
        blocks = {}
        for name in dict.fromkeys(names):
            blocks[name] = np.concatenate([p["blocks"][name] for p in results if name in p["blocks"]])
        skipped = [self._range(k)[0] + i for k, part in enumerate(results) for i, _ in part["skipped"]]
        return blocks, skipped

    def _compute(self, k, transformer, preprocessing, skip_bad):
        start, stop = self._range(k)
        paths = self.paths[start:stop]
        try:
            return {"blocks": _blocks(transformer.transform(paths)), "skipped": []}
        except _IMAGE_ERRORS as exc:
            bad = _unreadable(paths, preprocessing, start)
            if not bad:
                if start == 0:
                    raise
                raise type(exc)(f"{exc} (samples counted from image {start}, the first of its part)") from exc
            if not skip_bad:
                raise bad[0][1] from exc
        skipped = [(i, str(error)) for i, error in bad]
        bad_rows = {i for i, _ in bad}
        kept = [path for i, path in enumerate(paths) if i not in bad_rows]
        blocks = {} if not kept else _blocks(transformer.transform(kept))
        return {"blocks": blocks, "skipped": skipped}


def _blocks(Z):
    if Z.dtype.names is not None:
        return {
            "forward": np.ascontiguousarray(Z["forward"]),
            "backward": np.ascontiguousarray(Z["backward"]),
        }
    return {"features": Z}


def _unreadable(paths, preprocessing, start):
    """``(i, error)`` for the images of ``paths`` that cannot be read (errors name image ``start + i``)."""
    bad = []
    for i, path in enumerate(paths):
        try:
            preprocess_image(path, preprocessing)
        except Exception as exc:  # Pillow raises many kinds on corrupt files
            bad.append((i, image_error(exc, path, start + i)))
    return bad


def _differences(found, wanted):
    """The settings in which two manifests differ, as text."""
    if not isinstance(found, dict):
        return "not a manifest"
    found_settings = found.get("settings") if isinstance(found.get("settings"), dict) else {}
    rows = []
    for key in ("part_size",):
        if found.get(key) != wanted[key]:
            rows.append(f"{key.replace('_', ' ')} {found.get(key)!r}, here {wanted[key]!r}")
    for key, value in wanted["settings"].items():
        value = json.loads(json.dumps(value))
        if found_settings.get(key) != value:
            rows.append(f"{key} {found_settings.get(key)!r}, here {value!r}")
    return "; ".join(rows) or "another format"
