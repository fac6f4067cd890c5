"""A batch runs encrypted with its samples side by side (``CML_FHE_WORKERS``, default the CPUs): the same
integers as one sample at a time and as the simulation, in the batch's order."""

import numpy as np
import pytest
from cml_core.demo import load_example
from cml_core.fhe.run import WORKERS_VARIABLE, execution_workers

from cml_core import CmlError, load_model, load_quantized


@pytest.fixture(scope="module")
def compiled():
    model, data = load_example()
    module = load_model(model)
    x = data["x_train"][:200]
    qmodule = module.quantize(x, n_bits={"model_inputs": 4, "op_inputs": 4, "op_weights": 4},
                              rounding_threshold_bits={"n_bits": 4, "method": "exact"})
    qmodule.compile(x)
    return qmodule, data["x_test"][:4]


def test_workers_follow_the_variable_and_never_exceed_the_batch(monkeypatch):
    monkeypatch.setenv(WORKERS_VARIABLE, "3")
    assert execution_workers(10) == 3 and execution_workers(2) == 2
    monkeypatch.setenv(WORKERS_VARIABLE, "0")
    with pytest.raises(CmlError, match=WORKERS_VARIABLE):
        execution_workers(4)
    monkeypatch.delenv(WORKERS_VARIABLE)
    assert 1 <= execution_workers(1000) <= 1000 and execution_workers(1) == 1


@pytest.mark.slow  # two key generations: about 80 s here
def test_side_by_side_samples_give_what_one_at_a_time_and_the_simulation_give(compiled, monkeypatch, tmp_path):
    qmodule, x = compiled
    q = qmodule.quantize_input(x)
    simulated = qmodule.quantized_forward(q, fhe="simulate")
    monkeypatch.setenv(WORKERS_VARIABLE, "1")
    alone = qmodule.quantized_forward(q, fhe="execute")
    monkeypatch.setenv(WORKERS_VARIABLE, "2")
    together = qmodule.quantized_forward(q, fhe="execute")
    np.testing.assert_array_equal(alone, simulated)
    np.testing.assert_array_equal(together, simulated)
    # a module loaded from its saved folder runs the same way
    loaded = load_quantized(qmodule.save(tmp_path / "saved"))
    np.testing.assert_array_equal(loaded.quantized_forward(q, fhe="execute"), simulated)
