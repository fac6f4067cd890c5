"""Text ops on string tensors (numpy object arrays of ``str``): normalization, concatenation, splitting,
regular-expression matching, and n-gram counting (TfIdfVectorizer). None has an encrypted form: strings
cannot be quantized, so each is constant-only in a quantized model."""

import re

import numpy as np
from cml_core.quantization import ConstantOnlyOp

from ._opset import OPS


def _strings(values):
    return np.asarray(values, dtype=object)


@OPS.op("StringNormalizer", since=10, quantized=ConstantOnlyOp)
def string_normalizer(x, /, *, case_change_action="NONE", is_case_sensitive=0, locale=None, stopwords=None):
    """Drops the elements equal to a stop word, then changes case. ``x`` is [C] or [1, C]; when every
    element is dropped, the output is one empty string ([1] or [1, 1])."""
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
        raise ValueError(f"StringNormalizer takes a tensor of shape [C] or [1, C], got {x.shape}")
    if case_change_action not in ("NONE", "LOWER", "UPPER"):
        raise ValueError(f"case_change_action must be NONE, LOWER or UPPER, got {case_change_action!r}")
    words = [str(w) for w in x.reshape(-1)]
    stops = list(stopwords or [])
    if is_case_sensitive:
        kept = [w for w in words if w not in set(stops)]
    else:
        folded = {s.casefold() for s in stops}
        kept = [w for w in words if w.casefold() not in folded]
    if case_change_action == "LOWER":
        kept = [w.lower() for w in kept]
    elif case_change_action == "UPPER":
        kept = [w.upper() for w in kept]
    out = _strings(kept or [""])
    return out.reshape(1, -1) if x.ndim == 2 else out


@OPS.op("StringConcat", since=20, quantized=ConstantOnlyOp)
def string_concat(x, y, /):
    """Element-wise concatenation with multidirectional broadcasting."""
    return _strings(np.frompyfunc(lambda a, b: str(a) + str(b), 2, 1)(x, y))


@OPS.op("StringSplit", since=20, quantized=ConstantOnlyOp)
def string_split(x, /, *, delimiter=None, maxsplit=None):
    """Splits each string; returns (substrings padded with "" to the longest split, the count per string).

    Without a delimiter (or with an empty one) runs of whitespace separate the parts and leading or
    trailing whitespace gives no empty part; with one, every occurrence separates, empty parts included.
    """
    if maxsplit is not None and maxsplit < 0:
        raise ValueError(f"maxsplit must be non-negative, got {maxsplit}")
    limit = -1 if maxsplit is None else int(maxsplit)
    parts = [(str(s).split(None, limit) if not delimiter else str(s).split(delimiter, limit)) for s in x.reshape(-1)]
    width = max((len(p) for p in parts), default=0)
    out = np.full((len(parts), width), "", dtype=object)
    for i, p in enumerate(parts):
        out[i, :len(p)] = p
    counts = np.array([len(p) for p in parts], np.int64).reshape(x.shape)
    return out.reshape(*x.shape, width), counts


@OPS.op("RegexFullMatch", since=20, quantized=ConstantOnlyOp)
def regex_full_match(x, /, *, pattern=None):
    """True where the whole string matches ``pattern`` (RE2 syntax; the common subset Python's ``re`` shares)."""
    if pattern is None:
        raise ValueError("RegexFullMatch needs its pattern attribute")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    return np.frompyfunc(lambda s: compiled.fullmatch(str(s)) is not None, 1, 1)(x).astype(bool).reshape(x.shape)


def _ngram_table(pool, ngram_counts, ngram_indexes):
    """{n-gram tuple: output column} from the pool, grouped by length as ``ngram_counts`` says."""
    starts = list(ngram_counts) + [len(pool)]
    table = {}
    position = 0
    for length, (start, end) in enumerate(zip(starts[:-1], starts[1:]), start=1):
        if (end - start) % length:
            raise ValueError(f"the pool's {length}-grams span {end - start} items, not a multiple of {length}")
        for offset in range(start, end, length):
            table[tuple(pool[offset:offset + length])] = int(ngram_indexes[position])
            position += 1
    if position != len(ngram_indexes):
        raise ValueError(f"the pool holds {position} n-grams but ngram_indexes has {len(ngram_indexes)} entries")
    return table


@OPS.op("TfIdfVectorizer", since=9, quantized=ConstantOnlyOp)
def tfidf_vectorizer(x, /, *, max_gram_length, max_skip_count, min_gram_length, mode, ngram_counts, ngram_indexes,
                     pool_int64s=None, pool_strings=None, weights=None):
    """Counts the pool's n-grams in each row of ``x`` ([C] or [N, C]) and weights the counts by ``mode``.

    An n-gram of length n takes n items with the same gap between neighbours: gaps of 1 to
    ``max_skip_count + 1`` positions (a 1-gram is counted once, whatever the skip).
    """
    if mode not in ("TF", "IDF", "TFIDF"):
        raise ValueError(f"mode must be TF, IDF or TFIDF, got {mode!r}")
    if (pool_int64s is None) == (pool_strings is None):
        raise ValueError("give exactly one of pool_int64s and pool_strings")
    if x.ndim not in (1, 2):
        raise ValueError(f"TfIdfVectorizer takes a tensor of shape [C] or [N, C], got {x.shape}")
    pool = list(pool_strings) if pool_strings is not None else [int(v) for v in pool_int64s]
    table = _ngram_table(pool, ngram_counts, ngram_indexes)
    width = max(ngram_indexes) + 1 if len(ngram_indexes) else 0
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    counts = np.zeros((rows.shape[0], width), np.float32)
    for r, row in enumerate(rows):
        items = [str(v) for v in row] if pool_strings is not None else [int(v) for v in row]
        for n in range(max(min_gram_length, 1), max_gram_length + 1):
            for gap in range(1, (max_skip_count + 1 if n > 1 else 1) + 1):
                for start in range(len(items) - (n - 1) * gap):
                    column = table.get(tuple(items[start:start + (n - 1) * gap + 1:gap]))
                    if column is not None:
                        counts[r, column] += 1
    scale = np.ones(width, np.float32) if weights is None else np.zeros(width, np.float32)
    if weights is not None:
        for position, column in enumerate(ngram_indexes):
            scale[column] = weights[position]
    if mode == "IDF":
        counts = (counts > 0).astype(np.float32) * scale
    elif mode == "TFIDF":
        counts = counts * scale
    return counts.reshape(width) if x.ndim == 1 else counts
