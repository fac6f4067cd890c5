"""ImageDecoder cases the property test's oracle cannot judge: a grey image asked for in colour, and a stream
that is not an image."""

import io

import numpy as np
import pytest
from cml_core.testing import make_node_model

from cml_core import load_model

Image = pytest.importorskip("PIL.Image")


def _decode(stream, pixel_format):
    model = make_node_model("ImageDecoder", [stream], {"pixel_format": pixel_format}, opset=20)
    return load_model(model)(stream)


@pytest.mark.parametrize("pixel_format", ["RGB", "BGR"])
def test_a_grey_image_decodes_to_three_equal_channels(pixel_format):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    buffer = io.BytesIO()
    Image.fromarray(grey, "L").save(buffer, format="PNG")
    out = _decode(np.frombuffer(buffer.getvalue(), np.uint8).copy(), pixel_format)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


@pytest.mark.parametrize(("pixel_format", "channels"), [("RGB", 3), ("Grayscale", 1)])
def test_a_stream_that_is_not_an_image_gives_an_empty_image(pixel_format, channels):
    out = _decode(np.frombuffer(b"not an image at all", np.uint8).copy(), pixel_format)
    assert out.shape == (0, 0, channels) and out.dtype == np.uint8
