"""The cml-ops-qonnx distribution: discovered, listed by ``cml plugins``, named in missing-op hints."""

import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
from cml_core.known_plugins import DOMAIN_PLUGINS, install_hint
from cml_core.testing import make_node_model

from cml_core import OpRegistry, UnsupportedOpError, get_registry, load_model

DIST = "cml-ops-qonnx"
QONNX = "qonnx.custom_op.general"
BREVITAS = "onnx.brevitas"


def test_cml_plugins_lists_the_distribution():
    run = subprocess.run([sys.executable, "-m", "cml_core", "plugins"], capture_output=True, text=True, timeout=120,
                         check=True)
    rows = [line.split() for line in run.stdout.splitlines()]
    row = next(r for r in rows if r and r[0] == DIST)
    assert row[1] == metadata.version(DIST) and row[-1] == "ok", run.stdout


def test_registered_ops_domains_and_versions():
    ours = {(i.domain, i.op_type, i.since_version) for i in get_registry() if i.provider.distribution == DIST}
    assert ours == {
        (QONNX, "Quant", 1), (QONNX, "IntQuant", 1), (QONNX, "BipolarQuant", 1), (QONNX, "Trunc", 1), (QONNX, "Trunc", 2),
        (BREVITAS, "Quant", 1), (BREVITAS, "BipolarQuant", 1), (BREVITAS, "Trunc", 1),
    }
    assert {i.provider.version for i in get_registry() if i.provider.distribution == DIST} == {metadata.version(DIST)}
    # Brevitas 0.13 imports the domain at version 2: Quant resolves to 1, Trunc to its version 2
    assert get_registry().resolve(QONNX, "Quant", 2).since_version == 1
    assert get_registry().resolve(QONNX, "Trunc", 2).since_version == 2


@pytest.mark.parametrize("dist", sorted(DOMAIN_PLUGINS))
def test_install_hint_table_names_exactly_the_registered_ops(dist):
    registry = get_registry()
    provided: dict[str, set[str]] = {}
    for impl in registry:
        if impl.provider.distribution == dist and impl.domain not in ("", "ai.onnx"):
            provided.setdefault(impl.domain, set()).add(impl.op_type)
    assert {d: set(ops) for d, ops in DOMAIN_PLUGINS[dist].items()} == provided


def test_a_missing_qonnx_op_names_the_distribution_to_install():
    model = make_node_model("Quant", [np.zeros(3, np.float32), np.array(1, np.float32), np.array(0, np.float32),
                                      np.array(4, np.float32)], opset=2, domain=QONNX, constant_inputs=[1, 2, 3])
    with pytest.raises(UnsupportedOpError, match=f"pip install {DIST}"):
        load_model(model, OpRegistry())  # as if the plugin were not installed
    assert install_hint(BREVITAS, "Trunc") == f"pip install {DIST}"
    assert install_hint(QONNX, "FloatQuant") is None  # in the dialect, but this plugin does not provide it
    assert install_hint("com.acme", "Quant") is None
