"""One call from an ONNX model, a PyTorch or Brevitas module or a scikit-learn estimator to a compiled QuantizedModule."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..quantization.module import QuantizedModule


def compile_onnx_model(model: Any, calibration_x: Any, n_bits: Any = 8, rounding_threshold_bits: Any = None,
                       p_error: float | None = None, global_p_error: float | None = None,
                       configuration: Any = None, verbose: bool = False,
                       base_dir: str | os.PathLike[str] | None = None) -> QuantizedModule:
    """Load, quantize and compile an ONNX model (path, bytes or ModelProto); returns the QuantizedModule.

    ``base_dir`` is the folder of the external data of a model given as bytes or ModelProto (see
    ``load_model``).

    Raises:
        ModelLoadError, UnsupportedOpError: from ``load_model``.
        QuantizationError: from ``quantize`` (``BitWidthError`` for a lookup over 16 bits).
        CompileError: concrete-python cannot compile the integer program.
    """
    from ..numpy_module import load_model

    qmodule = load_model(model, base_dir=base_dir).quantize(calibration_x, n_bits=n_bits, rounding_threshold_bits=rounding_threshold_bits)
    qmodule.compile(calibration_x, p_error=p_error, global_p_error=global_p_error, configuration=configuration,
                    verbose=verbose)
    return qmodule


def export_torch(torch_module: Any, example_x: Any, opset_version: int = 14) -> bytes:
    """Serialized ONNX of ``torch_module`` (``torch.onnx.export`` with ``dynamo=False``, dynamic batch)."""
    import torch

    inputs = example_x if isinstance(example_x, tuple) else (example_x,)
    tensors = tuple(torch.as_tensor(np.asarray(x[:1], dtype=np.float32)) for x in inputs)
    names = [f"input_{i}" for i in range(len(tensors))]
    buffer = io.BytesIO()
    torch_module.eval()
    torch.onnx.export(torch_module, tensors, buffer,  # type: ignore[arg-type]  # a binary buffer works
                      dynamo=False, opset_version=opset_version, input_names=names,
                      output_names=["output"], dynamic_axes={n: {0: "batch"} for n in names + ["output"]})
    return buffer.getvalue()


def compile_torch_model(torch_module: Any, calibration_x: Any, n_bits: Any = 8, rounding_threshold_bits: Any = None,
                        p_error: float | None = None, global_p_error: float | None = None,
                        configuration: Any = None, verbose: bool = False, opset_version: int = 14) -> QuantizedModule:
    """Export a PyTorch module to ONNX and compile it like ``compile_onnx_model``."""
    return compile_onnx_model(export_torch(torch_module, calibration_x, opset_version), calibration_x, n_bits=n_bits,
                              rounding_threshold_bits=rounding_threshold_bits, p_error=p_error,
                              global_p_error=global_p_error, configuration=configuration, verbose=verbose)


def export_brevitas(module: Any, example_x: Any, form: str = "qcdq") -> bytes:
    """Serialized ONNX of a Brevitas QAT ``module`` in QCDQ (QuantizeLinear/Clip/DequantizeLinear,
    ``form="qcdq"``) or QONNX (``Quant`` nodes, ``form="qonnx"``) form, with a free batch dimension.

    Raises:
        CmlError: brevitas is not installed, or ``form`` is neither.
    """
    import tempfile

    import onnx
    import torch

    from ..errors import CmlError

    if form not in ("qcdq", "qonnx"):
        raise CmlError(f"form must be 'qcdq' or 'qonnx', got {form!r}")
    try:
        from brevitas.export import export_onnx_qcdq, export_qonnx
    except ImportError as exc:
        raise CmlError("exporting a Brevitas model needs brevitas and onnxoptimizer: pip install brevitas "
                       "onnxoptimizer (and cml-ops-qonnx for the QONNX form)") from exc
    inputs = example_x if isinstance(example_x, tuple) else (example_x,)
    tensors = tuple(torch.as_tensor(np.asarray(x[:1], dtype=np.float32)) for x in inputs)
    module.eval()
    with tempfile.TemporaryDirectory(prefix="cml-brevitas-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        example = tensors[0] if len(tensors) == 1 else tensors
        if form == "qcdq":
            export_onnx_qcdq(module, input_t=example, export_path=path, dynamo=False)
        else:
            export_qonnx(module, input_t=example, export_path=path, dynamo=False)
        model = onnx.load(path)
    # the exporters fix the batch to the example's: free it, and let shape inference redo the rest
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    return bytes(model.SerializeToString())


def compile_brevitas_model(brevitas_module: Any, calibration_x: Any, form: str = "qcdq", n_bits: Any = 8,
                           rounding_threshold_bits: Any = None, p_error: float | None = None,
                           global_p_error: float | None = None, configuration: Any = None,
                           verbose: bool = False) -> QuantizedModule:
    """Export a Brevitas QAT module (``export_brevitas``) and compile it like ``compile_onnx_model``.

    The model's own quantizers (its activations' and weights' scales, zero points and bit widths)
    are kept as they are; ``n_bits`` applies only to tensors the model leaves unquantized. A model
    trained at a few bits usually compiles without ``rounding_threshold_bits``.
    """
    return compile_onnx_model(export_brevitas(brevitas_module, calibration_x, form), calibration_x, n_bits=n_bits,
                              rounding_threshold_bits=rounding_threshold_bits, p_error=p_error,
                              global_p_error=global_p_error, configuration=configuration, verbose=verbose)


#: The opsets ``export_sklearn`` asks skl2onnx for: ONNX 17 and ONNX-ML 3 (TreeEnsembleClassifier/Regressor 3).
SKLEARN_TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def export_sklearn(estimator: Any, example_x: Any, target_opset: Any = None) -> bytes:
    """Serialized ONNX of a fitted scikit-learn estimator or pipeline, exported with skl2onnx.

    A classifier is exported without ZipMap: its outputs are the label and the (samples, classes)
    probabilities, both tensors. ``target_opset`` defaults to ``SKLEARN_TARGET_OPSET``.

    Raises:
        ModelLoadError: skl2onnx is not installed, the estimator is not fitted, or skl2onnx cannot
            convert it.
    """
    from ..errors import ModelLoadError

    try:
        from skl2onnx import to_onnx
    except ImportError as exc:
        raise ModelLoadError('exporting a scikit-learn model needs scikit-learn and skl2onnx: '
                             'pip install "cml-ops-ml[sklearn]"') from exc
    from sklearn.base import is_classifier
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise ModelLoadError(f"{type(estimator).__name__} is not fitted: call fit(x, y) before exporting it") from exc
    except TypeError as exc:  # not an estimator at all
        raise ModelLoadError(f"expected a fitted scikit-learn estimator, got {type(estimator).__name__}") from exc
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    # classifiers with probabilities get a ZipMap unless told otherwise; the others (LinearSVC) take no such option
    options = {id(final): {"zipmap": False}} if is_classifier(final) and hasattr(final, "predict_proba") else None
    sample = np.asarray(example_x, dtype=np.float32)[:1]
    try:
        model = to_onnx(estimator, sample, options=options,
                        target_opset=SKLEARN_TARGET_OPSET if target_opset is None else target_opset)
    except (RuntimeError, ValueError, TypeError, NotImplementedError, NameError) as exc:
        raise ModelLoadError(f"skl2onnx cannot convert {type(estimator).__name__}: {exc}") from exc
    return bytes(model.SerializeToString())


#: the opset Hummingbird's export writes (its TorchScript export supports 17 at most with torch 2.13)
HUMMINGBIRD_TARGET_OPSET = 17


def export_hummingbird(estimator: Any, example_x: Any, tree_implementation: str = "gemm",
                       scores_only: bool = False) -> bytes:
    """Serialized ONNX of a fitted scikit-learn estimator converted by Hummingbird into tensor ops.

    ``tree_implementation`` is Hummingbird's strategy for trees (``"gemm"``, ``"tree_trav"`` or
    ``"perf_tree_trav"``). Hummingbird calls ``torch.onnx.export`` expecting its TorchScript exporter: it is
    selected for the conversion. Hummingbird's boosting exports squeeze every axis of size 1 (a single
    sample's batch axis too): those Squeeze nodes get the axes they squeeze on a batch of several samples,
    so that the model runs one sample at a time as calibration and compilation do. ``scores_only`` keeps the
    last output (the scores) and the nodes it needs: the label, then, is derived by the caller from the
    scores (by default the label output stays, and quantization leaves its ArgMax to the client).

    Raises:
        ModelLoadError: Hummingbird or torch is not installed, or the conversion fails.
    """
    import contextlib
    import functools
    import warnings

    from ..errors import ModelLoadError

    try:
        import torch
        from hummingbird.ml import convert
    except ImportError as exc:
        raise ModelLoadError("exporting with Hummingbird needs torch and hummingbird-ml: pip install "
                             "hummingbird-ml (it declares an old onnx; --no-deps keeps the installed one)") from exc
    x = np.asarray(example_x, dtype=np.float32)

    @contextlib.contextmanager
    def torchscript_exporter() -> Any:
        original = torch.onnx.export
        torch.onnx.export = functools.partial(original, dynamo=False)
        try:
            yield
        finally:
            torch.onnx.export = original

    try:
        with warnings.catch_warnings(), torchscript_exporter():
            warnings.simplefilter("ignore")
            container = convert(estimator, "onnx", x[:10], extra_config={
                "tree_implementation": tree_implementation, "onnx_target_opset": HUMMINGBIRD_TARGET_OPSET})
    except Exception as exc:  # noqa: BLE001  (Hummingbird raises many kinds; the message names the estimator)
        raise ModelLoadError(f"Hummingbird cannot convert {type(estimator).__name__}: {type(exc).__name__}: "
                             f"{exc}") from exc
    model = container.model
    if scores_only:
        _keep_last_output(model)
    _explicit_squeeze_axes(model, x)
    return bytes(model.SerializeToString())


def _keep_last_output(model: Any) -> None:
    """Keep ``model``'s last output and the nodes computing it (in place)."""
    kept = model.graph.output[-1]
    needed, nodes = {kept.name}, []
    for node in reversed(list(model.graph.node)):
        if any(name in needed for name in node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    del model.graph.output[:]
    model.graph.output.append(kept)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))


def _explicit_squeeze_axes(model: Any, x: Any) -> None:
    """Give each Squeeze without axes the axes it squeezes on a batch of up to three samples (in place)."""
    from onnx import numpy_helper

    from ..numpy_module import load_model

    squeezes = [n for n in model.graph.node if n.op_type == "Squeeze" and len(n.input) == 1]
    if not squeezes or len(x) < 2:
        return
    values = load_model(model).run(x[:3], keep_intermediates=True)
    for node in squeezes:
        axes = [axis for axis, size in enumerate(values[node.input[0]].shape) if size == 1]
        name = f"{node.output[0]}_axes"
        model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
        node.input.append(name)


def compile_sklearn_model(estimator: Any, calibration_x: Any, n_bits: Any = 8, rounding_threshold_bits: Any = None,
                          per_feature_inputs: bool | str = "auto", p_error: float | None = None,
                          global_p_error: float | None = None, configuration: Any = None, verbose: bool = False,
                          target_opset: Any = None, calibration_chunk_size: int | None = None) -> QuantizedModule:
    """Export a fitted scikit-learn estimator with skl2onnx (``export_sklearn``), quantize and compile it.

    The calibration data is read as float32 (what the export expects). ``per_feature_inputs``
    (default ``"auto"``) gives tabular features of very different scales one quantizer each (see
    ``quantize_module``). A classifier's label, and anything else after the scores that only the
    client can compute, runs in the clear on the decrypted scores (``qmodule.client_tail``).

    Raises:
        ModelLoadError: from ``export_sklearn`` (skl2onnx missing, estimator not fitted or not convertible).
        UnsupportedOpError, QuantizationError, CompileError: as ``compile_onnx_model``.
    """
    from ..numpy_module import load_model

    x = np.asarray(calibration_x, dtype=np.float32)
    module = load_model(export_sklearn(estimator, x, target_opset))
    qmodule = module.quantize(x, n_bits=n_bits, rounding_threshold_bits=rounding_threshold_bits,
                              per_feature_inputs=per_feature_inputs, calibration_chunk_size=calibration_chunk_size)
    qmodule.compile(x, p_error=p_error, global_p_error=global_p_error, configuration=configuration, verbose=verbose)
    return qmodule
