"""Plugin discovery: broken plugins warn and the rest load; strict mode; allow/deny; duplicates."""

import sys
import types

import numpy as np
import pytest
from cml_core.plugins import PluginLoadWarning, PluginManager

from cml_core import DuplicateOpError, OpSet, PluginError, hookimpl


class FakeDist:
    def __init__(self, name, version="1.0"):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    def __init__(self, name, value, dist):
        self.name, self.value, self.dist = name, value, FakeDist(dist)

    def load(self):
        return __import__(self.value)


def _plugin_module(name, op_type, fail_import=False, fail_hook=False):
    module = types.ModuleType(name)
    if fail_import:
        module.__getattr__ = None  # the entry point's load below raises instead
    ops = OpSet()

    @ops.op(op_type, since=1, domain="com.test")
    def implementation(x, /):
        return x

    @hookimpl
    def cml_register_ops(registry):
        if fail_hook:
            raise RuntimeError("registration exploded")
        registry.add(ops)

    module.cml_register_ops = cml_register_ops
    return module


@pytest.fixture
def fake_plugins(monkeypatch):
    """Install fake entry points; returns a function taking (entry name, dist, module or exception)."""
    entries = []

    def add(name, dist, module):
        if isinstance(module, Exception):
            ep = FakeEntryPoint(name, f"missing_{name}", dist)

            def load(exc=module):
                raise exc

            ep.load = load
        else:
            monkeypatch.setitem(sys.modules, module.__name__, module)
            ep = FakeEntryPoint(name, module.__name__, dist)
        entries.append(ep)

    monkeypatch.setattr("cml_core.plugins.metadata.entry_points", lambda group: list(entries))
    for var in ("CML_STRICT_PLUGINS", "CML_PLUGINS_ALLOW", "CML_PLUGINS_DENY", "CML_PIN_OPS"):
        monkeypatch.delenv(var, raising=False)
    return add


def _build(strict=None):
    manager = PluginManager(strict=strict)
    manager.load_entry_points()
    return manager, manager.build_registry()


def test_a_broken_plugin_warns_by_name_and_the_others_load(fake_plugins):
    fake_plugins("good", "cml-ops-good", _plugin_module("good_mod", "Good"))
    fake_plugins("bad", "cml-ops-bad", ImportError("no module named numpyy"))
    with pytest.warns(PluginLoadWarning, match=r"cml-ops-bad 1\.0.*numpyy"):
        manager, registry = _build()
    assert registry.find("com.test", "Good", 1).provider.distribution == "cml-ops-good"
    status = {p.distribution: p.error for p in manager.plugins}
    assert status["cml-ops-good"] is None and "numpyy" in status["cml-ops-bad"]


def test_strict_mode_raises(fake_plugins, monkeypatch):
    fake_plugins("bad", "cml-ops-bad", ImportError("boom"))
    monkeypatch.setenv("CML_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="cml-ops-bad"):
        _build()


def test_a_failing_hook_warns_and_the_others_register(fake_plugins):
    fake_plugins("good", "cml-ops-good", _plugin_module("good_mod2", "Good"))
    fake_plugins("worse", "cml-ops-worse", _plugin_module("worse_mod", "Worse", fail_hook=True))
    with pytest.warns(PluginLoadWarning, match="cml-ops-worse.*registration exploded"):
        _, registry = _build()
    assert registry.find("com.test", "Good", 1) is not None
    assert registry.find("com.test", "Worse", 1) is None
    with pytest.raises(PluginError):
        _build(strict=True)


def test_allow_and_deny_lists(fake_plugins, monkeypatch):
    fake_plugins("one", "cml-ops-one", _plugin_module("one_mod", "One"))
    fake_plugins("two", "cml-ops-two", _plugin_module("two_mod", "Two"))
    monkeypatch.setenv("CML_PLUGINS_DENY", "cml-ops-one")
    _, registry = _build()
    assert registry.find("com.test", "One", 1) is None and registry.find("com.test", "Two", 1) is not None
    monkeypatch.delenv("CML_PLUGINS_DENY")
    monkeypatch.setenv("CML_PLUGINS_ALLOW", "one")
    _, registry = _build()
    assert registry.find("com.test", "One", 1) is not None and registry.find("com.test", "Two", 1) is None


def test_two_plugins_with_the_same_op_and_a_pin(fake_plugins, monkeypatch):
    fake_plugins("a", "cml-ops-a", _plugin_module("a_mod", "Same"))
    fake_plugins("b", "cml-ops-b", _plugin_module("b_mod", "Same"))
    with pytest.raises(DuplicateOpError, match=r"cml-ops-a 1\.0 and cml-ops-b 1\.0"):
        _build()
    monkeypatch.setenv("CML_PIN_OPS", "com.test::Same=cml-ops-b")
    _, registry = _build()
    assert registry.find("com.test", "Same", 1).provider.distribution == "cml-ops-b"


def test_first_party_plugins_are_discovered_with_their_versions():
    from importlib import metadata

    from cml_core.known_plugins import KNOWN_PLUGINS

    from cml_core import get_registry

    registry = get_registry()
    for dist, ops in KNOWN_PLUGINS.items():
        provided = {i.op_type for i in registry if i.provider.distribution == dist}
        assert {i.provider.version for i in registry if i.provider.distribution == dist} == {metadata.version(dist)}
        # the pip-hint table names exactly the ops each plugin registers (no drift)
        assert ops == provided, f"{dist}: table {sorted(ops ^ provided)} differs from the registry"
    assert np.all([i.quantized is not None for i in registry if i.provider.distribution in KNOWN_PLUGINS])
