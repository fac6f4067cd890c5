"""Property-test cases for the text ops (strings.py): small words from a tiny alphabet, so stop words,
matches and repeated n-grams actually occur."""

import numpy as np
from cml_core.testing import Example, OpCase
from hypothesis import strategies as st

WORDS = st.text(alphabet="abAB ", min_size=0, max_size=4)


def _string_array(draw, shape):
    return np.array(draw(st.lists(WORDS, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                    dtype=object).reshape(shape)


@st.composite
def _normalizer(draw, constant=False):
    c = draw(st.integers(1, 5))
    x = _string_array(draw, draw(st.sampled_from([(c,), (1, c)])))
    attributes = {"case_change_action": draw(st.sampled_from(["NONE", "LOWER", "UPPER"])),
                  "is_case_sensitive": draw(st.integers(0, 1)),
                  "locale": "C"}  # onnxruntime builds a C++ locale of this name; en_US may not be installed
    if draw(st.booleans()):
        attributes["stopwords"] = draw(st.lists(WORDS.filter(bool), min_size=1, max_size=3))
    return Example([x], attributes, constant_inputs=(0,) if constant else ())


@st.composite
def _concat(draw, constant=False):
    x = _string_array(draw, draw(st.sampled_from([(3,), (2, 3)])))
    y = _string_array(draw, draw(st.sampled_from([(3,), (1, 3), ()])))
    return Example([x, y], constant_inputs=(0, 1) if constant else ())


@st.composite
def _split(draw, constant=False):
    x = _string_array(draw, draw(st.sampled_from([(3,), (2, 2)])))
    attributes = {}
    if draw(st.booleans()):
        attributes["delimiter"] = draw(st.sampled_from(["a", "ab", " "]))
    if draw(st.booleans()):
        attributes["maxsplit"] = draw(st.integers(0, 3))
    return Example([x], attributes, n_outputs=2, constant_inputs=(0,) if constant else ())


@st.composite
def _regex(draw, constant=False):
    x = _string_array(draw, draw(st.sampled_from([(4,), (2, 3)])))
    pattern = draw(st.sampled_from(["a+", "[ab]*", "A.b?", "(a|B)+ ?", ""]))
    return Example([x], {"pattern": pattern}, constant_inputs=(0,) if constant else ())


@st.composite
def _tfidf(draw, constant=False):
    strings = draw(st.booleans())
    alphabet = ["a", "b", "c"] if strings else [1, 2, 3]
    max_gram = draw(st.integers(1, 3))
    min_gram = draw(st.integers(1, max_gram))
    pool, counts = [], []
    for n in range(1, max_gram + 1):
        counts.append(len(pool))
        grams = draw(st.lists(st.tuples(*[st.sampled_from(alphabet)] * n), min_size=1, max_size=3, unique=True))
        pool.extend(v for gram in grams for v in gram)
    n_grams = sum((counts[i + 1] if i + 1 < len(counts) else len(pool)) - counts[i] for i in range(len(counts)))
    n_grams = sum(((counts[i + 1] if i + 1 < len(counts) else len(pool)) - counts[i]) // (i + 1)
                  for i in range(len(counts)))
    indexes = draw(st.permutations(range(n_grams)))
    attributes = {"max_gram_length": max_gram, "min_gram_length": min_gram,
                  "max_skip_count": draw(st.integers(0, 2)), "mode": draw(st.sampled_from(["TF", "IDF", "TFIDF"])),
                  "ngram_counts": counts, "ngram_indexes": list(indexes)}
    attributes["pool_strings" if strings else "pool_int64s"] = pool
    if draw(st.booleans()):
        attributes["weights"] = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=n_grams, max_size=n_grams))
    shape = draw(st.sampled_from([(6,), (2, 5)]))
    values = draw(st.lists(st.sampled_from(alphabet), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    x = np.array(values, dtype=object if strings else draw(st.sampled_from([np.int32, np.int64]))).reshape(shape)
    return Example([x], attributes, constant_inputs=(0,) if constant else ())


def _case(op_type, strategy):
    # strings cannot be encrypted: the quantized form is only ever met with constant inputs
    return OpCase(op_type, lambda opset: strategy(), quantizable=lambda opset: strategy(constant=True))


CASES = [
    _case("StringNormalizer", _normalizer),
    _case("StringConcat", _concat),
    _case("StringSplit", _split),
    _case("RegexFullMatch", _regex),
    _case("TfIdfVectorizer", _tfidf),
]

KNOWN_DISAGREEMENTS = {
    ("StringSplit", 20): (
        "an empty string split on an explicit delimiter: onnxruntime counts 0 substrings, the ONNX reference "
        "evaluator 1 (the empty string itself, as Python's str.split does); the specification says consecutive "
        "delimiters delimit empty strings, so the empty remainder is kept"
    ),
}
