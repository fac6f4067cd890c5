"""The ONNX backend test data of the installed onnx through ``load_model`` (see backend_cases.py).

No case may give a wrong result or fail with anything but a ``CmlError``, and every case the record
lists as passing must still pass. After adding ops, ``python -m tests.conformance.backend_cases --write``
records the new figures.
"""

import json

import pytest

from .backend_cases import RECORD, UNMATCHABLE, collect, run_all, summary


@pytest.fixture(scope="module")
def results():
    return run_all(collect())


@pytest.fixture(scope="module")
def record():
    return json.loads(RECORD.read_text())


def test_no_case_gives_a_wrong_result(results):
    wrong = [f"{r.folder}/{r.name}: {r.detail}" for r in results if r.status == "wrong"]
    assert not wrong, "\n".join(wrong)


def test_every_refusal_is_a_cml_error(results):
    crashes = [f"{r.folder}/{r.name}: {r.detail}" for r in results if r.status == "crash"]
    assert not crashes, "\n".join(crashes)


def test_no_recorded_pass_is_lost(results, record):
    # a "tie" is only given where this machine is probed to round equal sums differently (see ROUNDING_TIES)
    now = {r.name: r for r in results}
    lost = [f"{name}: {now[name].status}: {now[name].detail}" for name, status in record["cases"].items()
            if status == "pass" and name in now and now[name].status not in ("pass", "tie")]
    assert not lost, "\n".join(lost)
    counts = summary(results)
    assert counts.get("pass", 0) + counts.get("tie", 0) >= record["counts"]["pass"]


def test_unmatchable_cases_are_refused_not_passed_off(results):
    # random ops cannot reproduce the values ONNX drew: they must be refused, never compared as right
    statuses = {r.name: r.status for r in results if r.name in UNMATCHABLE}
    assert statuses and all(status == "refused" for status in statuses.values()), statuses
