"""Property-test case for ImageDecoder: small random images encoded losslessly by Pillow at test time."""

import io

import numpy as np
from cml_core.testing import Example, OpCase
from hypothesis import strategies as st


@st.composite
def _encoded_image(draw, constant=False):
    from PIL import Image

    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    grey = draw(st.booleans())
    shape = (height, width) if grey else (height, width, 3)
    pixels = np.array(draw(st.lists(st.integers(0, 255), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                      np.uint8).reshape(shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L" if grey else "RGB").save(buffer, format=draw(st.sampled_from(["PNG", "BMP", "TIFF"])))
    stream = np.frombuffer(buffer.getvalue(), np.uint8).copy()
    # the reference evaluator returns a grey source as it is stored whatever the format asks (2-D for RGB):
    # grey sources are drawn with Grayscale only; test_image_decoder.py checks the spec's RGB of a grey image
    formats = ["Grayscale"] if grey else ["RGB", "BGR", "Grayscale"]
    attributes = {"pixel_format": draw(st.sampled_from(formats))}
    return Example([stream], attributes, constant_inputs=(0,) if constant else ())


CASES = [OpCase("ImageDecoder", lambda opset: _encoded_image(),
                quantizable=lambda opset: _encoded_image(constant=True))]
