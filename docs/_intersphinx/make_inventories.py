"""Write the small intersphinx inventories the documentation links against.

The documentation builds offline, so instead of downloading each project's
``objects.inv`` we list the targets our pages and docstrings refer to, with
their real addresses, and write them in Sphinx's inventory format (version
2: four header lines, then ``name domain:role priority uri dispname`` lines
compressed with zlib; ``$`` below stands for the name, written out in the
file). Add a target
here when a page refers to a new one, then run::

    python docs/_intersphinx/make_inventories.py

and commit the ``.inv`` files. ``conf.py`` points ``intersphinx_mapping`` at
them.
"""

import zlib
from pathlib import Path

SKLEARN_GENERATED = "modules/generated/$.html#$"

#: project file -> (project name, base URL, [(name, domain:role, uri)])
PROJECTS = {
    "python": (
        "Python",
        "https://docs.python.org/3/",
        [
            ("pathlib.Path", "py:class", "library/pathlib.html#$"),
            ("pathlib.PosixPath", "py:class", "library/pathlib.html#$"),
            ("pathlib.WindowsPath", "py:class", "library/pathlib.html#$"),
            ("sys.stdout", "py:data", "library/sys.html#$"),
            ("pickle", "py:module", "library/pickle.html#module-$"),
            ("ValueError", "py:exception", "library/exceptions.html#$"),
            ("TypeError", "py:exception", "library/exceptions.html#$"),
            ("FileNotFoundError", "py:exception", "library/exceptions.html#$"),
            ("FileExistsError", "py:exception", "library/exceptions.html#$"),
            ("OSError", "py:exception", "library/exceptions.html#$"),
            ("ImportError", "py:exception", "library/exceptions.html#$"),
            ("str", "py:class", "library/stdtypes.html#$"),
            ("dict", "py:class", "library/stdtypes.html#$"),
            ("tuple", "py:class", "library/stdtypes.html#$"),
            ("list", "py:class", "library/stdtypes.html#$"),
            ("int", "py:class", "library/functions.html#$"),
            ("float", "py:class", "library/functions.html#$"),
            ("callable", "py:function", "library/functions.html#$"),
            ("None", "py:data", "library/constants.html#$"),
            ("True", "py:data", "library/constants.html#$"),
            ("False", "py:data", "library/constants.html#$"),
            # the glossary terms and the label numpydoc links parameter types to
            ("sequence", "std:term", "glossary.html#term-$"),
            ("iterable", "std:term", "glossary.html#term-$"),
            ("generator", "std:term", "glossary.html#term-$"),
            ("bltin-boolean-values", "std:label", "library/stdtypes.html#boolean-type-bool"),
        ],
    ),
    "numpy": (
        "NumPy",
        "https://numpy.org/doc/stable/",
        [
            ("numpy.ndarray", "py:class", "reference/generated/$.html#$"),
            ("numpy.dtype", "py:class", "reference/generated/$.html#$"),
            ("numpy.memmap", "py:class", "reference/generated/$.html#$"),
            ("numpy.concatenate", "py:function", "reference/generated/$.html#$"),
            ("numpy.load", "py:function", "reference/generated/$.html#$"),
            ("numpy.save", "py:function", "reference/generated/$.html#$"),
            ("numpy.savez", "py:function", "reference/generated/$.html#$"),
            ("numpy.outer", "py:function", "reference/generated/$.html#$"),
            ("numpy.inf", "py:data", "reference/constants.html#$"),
            ("numpy.nan", "py:data", "reference/constants.html#$"),
            ("array_like", "std:term", "glossary.html#term-$"),
            ("arrays.scalars", "std:label", "reference/arrays.scalars.html"),
        ],
    ),
    "sklearn": (
        "scikit-learn",
        "https://scikit-learn.org/stable/",
        [
            ("sklearn.pipeline.Pipeline", "py:class", SKLEARN_GENERATED),
            ("sklearn.pipeline.FeatureUnion", "py:class", SKLEARN_GENERATED),
            ("sklearn.pipeline.make_pipeline", "py:function", SKLEARN_GENERATED),
            ("sklearn.compose.ColumnTransformer", "py:class", SKLEARN_GENERATED),
            ("sklearn.model_selection.GridSearchCV", "py:class", SKLEARN_GENERATED),
            ("sklearn.model_selection.StratifiedKFold", "py:class", SKLEARN_GENERATED),
            ("sklearn.model_selection.cross_val_score", "py:function", SKLEARN_GENERATED),
            ("sklearn.model_selection.cross_val_predict", "py:function", SKLEARN_GENERATED),
            ("sklearn.model_selection.train_test_split", "py:function", SKLEARN_GENERATED),
            ("sklearn.svm.SVC", "py:class", SKLEARN_GENERATED),
            ("sklearn.preprocessing.Normalizer", "py:class", SKLEARN_GENERATED),
            ("sklearn.kernel_approximation.Nystroem", "py:class", SKLEARN_GENERATED),
            ("sklearn.utils.Bunch", "py:class", SKLEARN_GENERATED),
            ("sklearn.metrics.average_precision_score", "py:function", SKLEARN_GENERATED),
            ("sklearn.metrics.make_scorer", "py:function", SKLEARN_GENERATED),
            ("sklearn.exceptions.UndefinedMetricWarning", "py:class", SKLEARN_GENERATED),
            ("sklearn.datasets.load_digits", "py:function", SKLEARN_GENERATED),
            ("sklearn.base.BaseEstimator", "py:class", SKLEARN_GENERATED),
            ("sklearn.set_config", "py:function", SKLEARN_GENERATED),
            ("sklearn.config_context", "py:function", SKLEARN_GENERATED),
        ],
    ),
    "onnxruntime": (
        "ONNX Runtime",
        "https://onnxruntime.ai/docs/api/python/",
        [
            ("onnxruntime.InferenceSession", "py:class", "api_summary.html#$"),
            ("onnxruntime.SessionOptions", "py:class", "api_summary.html#$"),
            ("onnxruntime.RunOptions", "py:class", "api_summary.html#$"),
            ("onnxruntime.get_device", "py:function", "api_summary.html#$"),
        ],
    ),
    "onnx": (
        "ONNX",
        "https://onnx.ai/onnx/",
        [
            ("onnx.ModelProto", "py:class", "api/classes.html#$"),
            ("onnx.GraphProto", "py:class", "api/classes.html#$"),
            ("onnx.NodeProto", "py:class", "api/classes.html#$"),
        ],
    ),
    "skops": (
        "skops",
        "https://skops.readthedocs.io/en/stable/",
        [
            ("skops.io", "py:module", "modules/classes.html#module-$"),
            ("skops.io.dump", "py:function", "modules/classes.html#$"),
            ("skops.io.load", "py:function", "modules/classes.html#$"),
            ("skops.io.get_untrusted_types", "py:function", "modules/classes.html#$"),
        ],
    ),
    "joblib": (
        "joblib",
        "https://joblib.readthedocs.io/en/stable/",
        [
            ("joblib.dump", "py:function", "generated/$.html#$"),
            ("joblib.load", "py:function", "generated/$.html#$"),
        ],
    ),
    "pillow": (
        "Pillow",
        "https://pillow.readthedocs.io/en/stable/",
        [
            ("PIL.Image.Image", "py:class", "reference/Image.html#$"),
            ("PIL.Image.open", "py:function", "reference/Image.html#$"),
        ],
    ),
}


def inventory(project, entries):
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: stable\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(f"{name} {role} 1 {uri.replace('$', name)} -\n" for name, role, uri in sorted(entries))
    return header.encode() + zlib.compress(body.encode())


def main():
    folder = Path(__file__).parent
    for key, (project, _, entries) in PROJECTS.items():
        (folder / f"{key}.inv").write_bytes(inventory(project, entries))


if __name__ == "__main__":
    main()
