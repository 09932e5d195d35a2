"""Deep Fishing gradient features of pretrained networks for scikit-learn.

The package turns a pretrained classification network with a fully connected
head into per-image gradient features (Gordo, Gaidon and Perronnin, "Deep
Fishing: Gradient Features from Deep Nets", BMVC 2015) and classifies them
with a support vector machine on the trace kernel.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
