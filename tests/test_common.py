"""scikit-learn's own estimator checks on the transformer.

The network is a small tabular classifier whose trunk accepts any number of
features (the checks use data of many widths).
"""

import pytest
from sklearn.utils.estimator_checks import estimator_checks_generator

from onnx_models import any_width_model
from skfishing import DeepFisherTransformer, TensorSketch

MODEL = any_width_model()

ESTIMATORS = [
    DeepFisherTransformer(MODEL, layer=7, features="activation"),
    DeepFisherTransformer(MODEL, layer=5, features="activation"),
    DeepFisherTransformer(MODEL, features="probabilities"),
    DeepFisherTransformer(MODEL, layer=7),
    DeepFisherTransformer(MODEL, layer=7, sketch=TensorSketch(32, random_state=0)),  # a dense output
]

#: Checks that compare transform outputs with numpy.testing.assert_allclose,
#: which cannot compare structured arrays (the documented output of
#: features="gradient"). They do not run on the gradient transformer:
#: test_structured_output.py tests the same properties field by field.
REPLACED_FOR_STRUCTURED_OUTPUT = {
    "check_pipeline_consistency",
    "check_estimators_pickle",
    "check_transformer_data_not_an_array",
    "check_transformer_general",
    "check_transformer_preserve_dtypes",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_fit_idempotent",
}


def _name(check):
    return getattr(check, "func", check).__name__


def _checks():
    for estimator in ESTIMATORS:
        structured = estimator.features == "gradient" and estimator.sketch is None
        replaced = REPLACED_FOR_STRUCTURED_OUTPUT if structured else set()
        kind = estimator.features + ("-sketched" if estimator.sketch is not None else "")
        for estimator_, check in estimator_checks_generator(estimator):
            if _name(check) not in replaced:
                keywords = ",".join(f"{k}={v}" for k, v in getattr(check, "keywords", {}).items())
                check_id = _name(check) + (f"({keywords})" if keywords else "")
                yield pytest.param(estimator_, check, id=f"{kind}-{estimator.layer}-{check_id}")


def test_every_replaced_check_exists():
    """The names above are scikit-learn's: a renamed check would otherwise run nowhere."""
    names = {_name(check) for _, check in estimator_checks_generator(ESTIMATORS[-1])}
    assert REPLACED_FOR_STRUCTURED_OUTPUT <= names


@pytest.mark.parametrize("estimator, check", list(_checks()))
def test_sklearn_compatible_transformer(estimator, check):
    check(estimator)
