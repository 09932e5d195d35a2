"""scikit-learn's own estimator checks on the transformer.

The network is a small tabular classifier whose trunk accepts any number of
features (the checks use data of many widths).
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from onnx_models import any_width_model
from skfishing.transformer import DeepFisherTransformer

MODEL = any_width_model()

# These checks compare transform outputs with numpy.testing.assert_allclose,
# which cannot compare structured arrays (the documented output of
# features="gradient"); test_transformer.py checks the same properties
# (pickling, sample order and subset invariance, repeated fits) field by field.
_STRUCTURED_OUTPUT = "compares outputs with assert_allclose, which rejects structured arrays"
GRADIENT_EXPECTED_FAILURES = {
    name: _STRUCTURED_OUTPUT
    for name in [
        "check_pipeline_consistency",
        "check_estimators_pickle",
        "check_transformer_data_not_an_array",
        "check_transformer_general",
        "check_transformer_preserve_dtypes",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_fit_idempotent",
    ]
}


def _expected_failed_checks(estimator):
    return GRADIENT_EXPECTED_FAILURES if estimator.features == "gradient" else {}


@parametrize_with_checks(
    [
        DeepFisherTransformer(MODEL, layer=7, features="activation"),
        DeepFisherTransformer(MODEL, layer=5, features="activation"),
        DeepFisherTransformer(MODEL, features="probabilities"),
        DeepFisherTransformer(MODEL, layer=7),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible_transformer(estimator, check):
    check(estimator)
