"""Where onnxruntime disagrees with the ONNX specification, the ONNX reference evaluator is the oracle.

(op type, since-version) -> reason.
"""

KNOWN_DISAGREEMENTS = {
    ("Dropout", 10): "onnxruntime returns an all-false mask in inference; the spec (and the ONNX reference "
                     "evaluator) keep every element, so the mask is all true",
}
