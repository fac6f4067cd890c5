"""ImageDecoder: an encoded image (BMP, JPEG, JPEG 2000, TIFF, PNG, WebP, PNM) to a channel-last uint8 array,
decoded by Pillow (the optional ``image`` extra: ``pip install cml-ops-std[image]``)."""

import io

import numpy as np
from cml_core.quantization import ConstantOnlyOp

from ._opset import OPS

_MODES = {"RGB": "RGB", "BGR": "RGB", "Grayscale": "L"}


@OPS.op("ImageDecoder", since=20, quantized=ConstantOnlyOp)
def image_decoder(encoded_stream, /, *, pixel_format="RGB"):
    """The image as uint8 (height, width, channels): 3 channels for RGB/BGR, 1 for Grayscale. A stream
    that does not decode gives an empty array, as ONNX specifies."""
    if pixel_format not in _MODES:
        raise ValueError(f"pixel_format must be RGB, BGR or Grayscale, got {pixel_format!r}")
    try:
        from PIL import Image
    except ImportError as exc:
        raise ValueError("ImageDecoder needs Pillow: pip install 'cml-ops-std[image]'") from exc
    channels = 1 if pixel_format == "Grayscale" else 3
    try:
        with Image.open(io.BytesIO(np.asarray(encoded_stream, np.uint8).tobytes())) as image:
            pixels = np.asarray(image.convert(_MODES[pixel_format]), np.uint8)
    except Exception:  # noqa: BLE001  (any undecodable stream: the spec's empty result)
        return np.zeros((0, 0, channels), np.uint8)
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], channels)
    return np.ascontiguousarray(pixels[..., ::-1]) if pixel_format == "BGR" else pixels
