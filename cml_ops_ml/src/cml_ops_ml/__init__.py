"""cml plugin: the ONNX-ML domain ``ai.onnx.ml``.

Linear models, tree ensembles and SVMs (classifiers and regressors) and the preprocessing ops
(Scaler, Normalizer, OneHotEncoder, LabelEncoder, ...) that skl2onnx and onnxmltools export,
computed as onnxruntime computes them.
"""

from cml_core import hookimpl

from . import linear, maps, preprocessing, svm, trees  # noqa: F401  (modules register their ops on OPS when imported)
from ._opset import OPS


@hookimpl
def cml_register_ops(registry):  # type: ignore[no-untyped-def]
    registry.add(OPS)
