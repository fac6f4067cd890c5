"""Plugin discovery: broken plugins warn and the rest load; strict mode; allow/deny; duplicates and pins."""

import email.message
import itertools
import os
import re
import subprocess
import sys
import textwrap
import types

import numpy as np
import onnx
import pytest
from cml_core.errors import PluginConfigWarning
from cml_core.plugins import PluginLoadWarning, PluginManager
from onnx import helper

import cml_ops_activations
from cml_core import DuplicateOpError, OpSet, PluginError, cli, hookimpl, load_model, plugins


class FakeDist:
    def __init__(self, name, version="1.0"):
        self.metadata = {"Name": name}
        self.version = version


class UnnamedDist:
    """A distribution whose metadata file lacks Name and Version (what importlib.metadata returns then)."""

    def __init__(self):
        self.metadata = email.message.Message()
        self.version = None


class FakeEntryPoint:
    def __init__(self, name, value, dist):
        self.name, self.value = name, value
        self.dist = FakeDist(dist) if isinstance(dist, str) else dist

    def load(self):
        return __import__(self.value)


def _plugin_module(name, op_type, fail_import=False, fail_hook=False, exit_hook=False, since=1,
                   domain="com.test", replace=False):
    module = types.ModuleType(name)
    if fail_import:
        module.__getattr__ = None  # the entry point's load below raises instead
    ops = OpSet()

    @ops.op(op_type, since=since, domain=domain, replace=replace)
    def implementation(x, /):
        return x

    @hookimpl
    def cml_register_ops(registry):
        if fail_hook:
            raise RuntimeError("registration exploded")
        if exit_hook:
            sys.exit(4)
        registry.add(ops)

    module.cml_register_ops = cml_register_ops
    return module


@pytest.fixture
def fake_plugins(monkeypatch):
    """Install fake entry points; returns a function taking (entry name, dist, plugin).

    ``plugin`` is a module, an exception its loading raises, or the name of a module to import from
    ``sys.path``; ``dist`` is a distribution name or a distribution object. ``add.clear()`` forgets them.
    """
    entries = []

    def add(name, dist, module):
        if isinstance(module, BaseException):
            ep = FakeEntryPoint(name, f"missing_{name}", dist)

            def load(exc=module):
                raise exc

            ep.load = load
        elif isinstance(module, str):
            ep = FakeEntryPoint(name, module, dist)
        else:
            monkeypatch.setitem(sys.modules, module.__name__, module)
            ep = FakeEntryPoint(name, module.__name__, dist)
        entries.append(ep)

    add.clear = entries.clear
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
        provided = {i.op_type for i in registry if i.provider.distribution == dist and i.domain in ("", "ai.onnx")}
        assert {i.provider.version for i in registry if i.provider.distribution == dist} == {metadata.version(dist)}
        # the pip-hint table names exactly the ops each plugin registers (no drift)
        assert ops == provided, f"{dist}: table {sorted(ops ^ provided)} differs from the registry"
    assert np.all([i.quantized is not None for i in registry if i.provider.distribution in KNOWN_PLUGINS])


# --- plugins that try to end the process ---------------------------------------------------------


def test_a_plugin_calling_sys_exit_at_import_warns_by_name_and_the_others_load(fake_plugins, tmp_path, monkeypatch):
    (tmp_path / "cml_test_exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_plugins("good", "cml-ops-good", _plugin_module("good_mod3", "Good"))
    fake_plugins("exits", "cml-ops-exits", "cml_test_exits_at_import")
    with pytest.warns(PluginLoadWarning, match=r"cml-ops-exits 1\.0.*SystemExit\(3\)"):
        manager, registry = _build()
    assert registry.find("com.test", "Good", 1) is not None
    status = {p.distribution: p.error for p in manager.plugins}
    assert status["cml-ops-good"] is None and "SystemExit(3)" in status["cml-ops-exits"]
    with pytest.raises(PluginError, match="cml-ops-exits") as raised:
        _build(strict=True)
    assert isinstance(raised.value.__cause__, SystemExit)


def test_a_hook_calling_sys_exit_warns_by_name_and_the_others_register(fake_plugins):
    fake_plugins("good", "cml-ops-good", _plugin_module("good_mod4", "Good"))
    fake_plugins("quits", "cml-ops-quits", _plugin_module("quits_mod", "Quits", exit_hook=True))
    with pytest.warns(PluginLoadWarning, match=r"cml-ops-quits 1\.0 failed while registering.*SystemExit\(4\)"):
        manager, registry = _build()
    assert registry.find("com.test", "Good", 1) is not None and registry.find("com.test", "Quits", 1) is None
    assert "SystemExit(4)" in {p.distribution: p.error for p in manager.plugins}["cml-ops-quits"]
    with pytest.raises(PluginError, match="cml-ops-quits"):
        _build(strict=True)


def test_ctrl_c_while_loading_a_plugin_is_not_swallowed(fake_plugins):
    fake_plugins("slow", "cml-ops-slow", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _build()


def _installed_plugin(site, dist, module, source):
    """A real distribution on disk: a module and a dist-info folder with a ``cml.ops`` entry point."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[cml.ops]\n{module} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


HOST = """
    import sys

    import numpy as np
    from onnx import TensorProto, helper

    from cml_core import load_model

    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", vi[:1], vi[1:])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 14)])
    print("survived", load_model(model)(np.array([-1.0, 2.0], dtype=np.float32)).tolist())
    sys.exit(7)
"""


@pytest.mark.parametrize("source", [
    "import sys\nsys.exit()\n",
    """
    import sys
    from cml_core import hookimpl

    @hookimpl
    def cml_register_ops(registry):
        sys.exit()
    """,
], ids=["at-import", "in-hook"])
def test_the_host_process_survives_a_plugin_calling_sys_exit(tmp_path, source):
    _installed_plugin(tmp_path / "site", "cml-ops-exiting", "cml_test_exiting", source)
    (tmp_path / "host.py").write_text(textwrap.dedent(HOST))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CML_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, str(tmp_path / "host.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 7, done.stderr
    assert "survived [0.0, 2.0]" in done.stdout
    assert re.search(r"PluginLoadWarning: cml plugin cml-ops-exiting 1\.0.*SystemExit\(None\)", done.stderr)


# --- collisions and pins -------------------------------------------------------------------------


def test_a_pin_settles_a_collision_among_any_number_of_providers_in_any_order(fake_plugins, monkeypatch):
    modules = {dist: _plugin_module(f"{dist.replace('-', '_')}_mod", "Same") for dist in
               ("cml-ops-a", "cml-ops-b", "cml-ops-c")}
    for order in itertools.permutations(modules):
        fake_plugins.clear()
        for dist in order:
            fake_plugins(dist, dist, modules[dist])
        monkeypatch.delenv("CML_PIN_OPS", raising=False)
        with pytest.raises(DuplicateOpError, match=r"cml-ops-a 1\.0, cml-ops-b 1\.0 and cml-ops-c 1\.0"):
            _build()
        for pinned in modules:
            monkeypatch.setenv("CML_PIN_OPS", f"com.test::Same={pinned}")
            _, registry = _build()
            assert registry.find("com.test", "Same", 1).provider.distribution == pinned, (order, pinned)


RELU = helper.make_model(
    helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
                      [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])]),
    ir_version=10, opset_imports=[helper.make_opsetid("", 14)])


def test_pinning_the_first_party_relu_beats_two_third_party_ones(fake_plugins, monkeypatch):
    for name in ("fastrelu", "reluplus"):
        fake_plugins(name, f"cml-ops-{name}", _plugin_module(f"{name}_mod", "Relu", since=(6, 13, 14), domain=""))
    fake_plugins("activations", "cml-ops-activations", cml_ops_activations)
    with pytest.raises(DuplicateOpError) as raised:
        _build()
    message = str(raised.value)
    assert "Relu (since-versions 6, 13, 14) is registered by cml-ops-activations 1.0, cml-ops-fastrelu 1.0 " \
           "and cml-ops-reluplus 1.0" in message
    assert "CML_PIN_OPS='Relu=cml-ops-activations'" in message
    monkeypatch.setenv("CML_PIN_OPS", "Relu=cml-ops-activations")
    _, registry = _build()
    assert {registry.find("", "Relu", v).provider.distribution for v in (6, 13, 14)} == {"cml-ops-activations"}
    out = load_model(RELU, registry)(np.array([-1.0, 0.5, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(out, [0.0, 0.5, 2.0])


def test_an_explicit_replacement_wins_whatever_the_order(fake_plugins, monkeypatch):
    plain = _plugin_module("plain_mod", "Same")
    replacing = _plugin_module("replacing_mod", "Same", replace=True)
    for order in ((("plain", plain), ("replacing", replacing)), (("replacing", replacing), ("plain", plain))):
        fake_plugins.clear()
        for name, module in order:
            fake_plugins(name, f"cml-ops-{name}", module)
        _, registry = _build()
        assert registry.find("com.test", "Same", 1).provider.distribution == "cml-ops-replacing"
    fake_plugins("again", "cml-ops-again", _plugin_module("again_mod", "Same", replace=True))
    with pytest.raises(DuplicateOpError, match="cml-ops-again 1.0, cml-ops-plain 1.0 and cml-ops-replacing 1.0"):
        _build()
    monkeypatch.setenv("CML_PIN_OPS", "com.test::Same=cml-ops-plain")  # the user's pin beats replace=True
    _, registry = _build()
    assert registry.find("com.test", "Same", 1).provider.distribution == "cml-ops-plain"


def test_a_pin_naming_a_distribution_that_does_not_provide_the_op(fake_plugins, monkeypatch):
    fake_plugins("a", "cml-ops-a", _plugin_module("pa_mod", "Same"))
    fake_plugins("b", "cml-ops-b", _plugin_module("pb_mod", "Same"))
    fake_plugins("other", "cml-ops-other", _plugin_module("pother_mod", "Other"))
    monkeypatch.setenv("CML_PIN_OPS", "com.test::Same=cml-ops-other")
    with pytest.warns(PluginConfigWarning, match=r"cml-ops-other does not provide com\.test::Same; "
                                                 r"com\.test::Same is provided by cml-ops-a, cml-ops-b"):
        with pytest.raises(DuplicateOpError, match="pins it to cml-ops-other, which does not provide it"):
            _build()
    fake_plugins.clear()
    fake_plugins("a", "cml-ops-a", _plugin_module("pa_mod", "Same"))
    fake_plugins("other", "cml-ops-other", _plugin_module("pother_mod", "Other"))
    with pytest.warns(PluginConfigWarning, match=r"com\.test::Same is provided by cml-ops-a"):
        _, registry = _build()
    assert registry.find("com.test", "Same", 1).provider.distribution == "cml-ops-a"


# --- settings that are malformed or name nothing installed ---------------------------------------


@pytest.mark.parametrize("item, problem", [
    ("com.test::Same", "no '='"),
    ("=cml-ops-b", "op name is empty"),
    ("com.test::=cml-ops-b", "op name is empty"),
    ("com.test::Same=", "distribution name is empty"),
    ("com.test::Same=cml-ops-b=cml-ops-a", "more than one '='"),
    ("com.test::Sa me=cml-ops-b", "contains a space"),
])
def test_a_malformed_pin_warns_with_the_syntax_and_is_ignored(fake_plugins, monkeypatch, item, problem):
    fake_plugins("a", "cml-ops-a", _plugin_module("ma_mod", "Same"))
    fake_plugins("b", "cml-ops-b", _plugin_module("mb_mod", "Same"))
    monkeypatch.setenv("CML_PIN_OPS", item)
    expected = rf"CML_PIN_OPS item {re.escape(repr(item))} is ignored: .*{problem}.*CML_PIN_OPS takes .*Op=distribution"
    with pytest.warns(PluginConfigWarning, match=expected):
        with pytest.raises(DuplicateOpError):
            _build()
    monkeypatch.setenv("CML_PIN_OPS", f"{item}, com.test::Same=cml-ops-a")  # the well-formed pins still count
    with pytest.warns(PluginConfigWarning, match=expected):
        _, registry = _build()
    assert registry.find("com.test", "Same", 1).provider.distribution == "cml-ops-a"


def test_spaces_around_pin_names_are_accepted(fake_plugins, monkeypatch, recwarn):
    fake_plugins("a", "cml-ops-a", _plugin_module("sa_mod", "Same"))
    fake_plugins("b", "cml-ops-b", _plugin_module("sb_mod", "Same"))
    monkeypatch.setenv("CML_PIN_OPS", " com.test :: Same = cml-ops-b , ")
    _, registry = _build()
    assert registry.find("com.test", "Same", 1).provider.distribution == "cml-ops-b"
    assert not [w for w in recwarn if issubclass(w.category, PluginConfigWarning)]


def test_pins_naming_nothing_installed_warn(fake_plugins, monkeypatch):
    fake_plugins("a", "cml-ops-a", _plugin_module("na_mod", "Same"))
    fake_plugins("denied", "cml-ops-denied", _plugin_module("ndenied_mod", "Same"))
    monkeypatch.setenv("CML_PLUGINS_DENY", "cml-ops-denied")
    for pin, expected in [
        ("com.test::Same=cml-ops-nope", r"no installed cml plugin distribution is named 'cml-ops-nope' "
                                        r"\(installed: cml-ops-a, cml-ops-denied\)"),
        ("Nothing=cml-ops-a", r"'Nothing=cml-ops-a' has no effect: cml-ops-a does not provide Nothing; "
                              r"no loaded plugin provides Nothing"),
        ("com.test::Same=cml-ops-denied", "cml-ops-denied is installed but not loaded"),
        ("com.test::Same=cml-ops-a,com.test::Same=cml-ops-denied", "pins com.test::Same more than once"),
    ]:
        monkeypatch.setenv("CML_PIN_OPS", pin)
        with pytest.warns(PluginConfigWarning, match=expected):
            _, registry = _build()
        assert registry.find("com.test", "Same", 1).provider.distribution == "cml-ops-a"


@pytest.mark.parametrize("variable", ["CML_PLUGINS_ALLOW", "CML_PLUGINS_DENY"])
def test_allow_and_deny_lists_naming_nothing_installed_warn(fake_plugins, monkeypatch, variable):
    fake_plugins("one", "cml-ops-one", _plugin_module("aone_mod", "One"))
    monkeypatch.setenv(variable, "one, cml-ops-typo")
    with pytest.warns(PluginConfigWarning, match=rf"{variable} names 'cml-ops-typo', which is no installed cml "
                                                 rf"plugin \(installed: cml-ops-one \(entry point one\)\)"
                                                 rf".*comma-separated distribution or entry-point names"):
        _, registry = _build()
    assert (registry.find("com.test", "One", 1) is None) == (variable == "CML_PLUGINS_DENY")


# --- plugins that register nothing, and `cml plugins` --------------------------------------------


@pytest.fixture
def fresh_process_plugins():
    """Make ``get_registry``/``get_plugin_manager`` rediscover plugins now and again after the test."""
    plugins.reset()
    yield
    plugins.reset()


def _cli_plugins(capsys):
    code = cli.main(["plugins"])
    captured = capsys.readouterr()
    rows = {line.split()[0] if not line.startswith("<") else "<unnamed>": line.rstrip()
            for line in captured.out.splitlines()[2:]}
    return code, rows, captured


def test_cml_plugins_shows_what_is_wrong_with_each_plugin(fake_plugins, fresh_process_plugins, capsys):
    fake_plugins("good", "cml-ops-good", _plugin_module("cgood_mod", "Good"))
    hookless = types.ModuleType("chookless_mod")
    fake_plugins("hookless", "cml-ops-hookless", hookless)
    unmarked = types.ModuleType("cunmarked_mod")
    unmarked.cml_register_ops = lambda registry: None
    fake_plugins("unmarked", "cml-ops-unmarked", unmarked)
    fake_plugins("nameless", UnnamedDist(), _plugin_module("cnameless_mod", "Nameless"))
    fake_plugins("bad", "cml-ops-bad", ImportError("no module named numpyy"))
    fake_plugins("worse", "cml-ops-worse", _plugin_module("cworse_mod", "Worse", fail_hook=True))
    with pytest.warns(PluginLoadWarning) as caught:
        code, rows, captured = _cli_plugins(capsys)
    assert code == 0 and "None" not in captured.out
    assert re.search(r"cml-ops-good\s+1\.0\s+good = cgood_mod\s+1\s+ok$", rows["cml-ops-good"])
    assert rows["cml-ops-hookless"].endswith("0    no cml_register_ops hook: registers nothing")
    assert rows["cml-ops-unmarked"].endswith("cml_register_ops is not marked with @cml_core.hookimpl: registers nothing")
    assert re.search(r"^<unnamed distribution>\s+-\s+nameless = cnameless_mod\s+1\s+ok$", rows["<unnamed>"])
    assert "failed to load: ImportError: no module named numpyy" in rows["cml-ops-bad"]
    assert "failed while registering its ops: RuntimeError: registration exploded" in rows["cml-ops-worse"]
    messages = [str(w.message) for w in caught]
    assert any(re.search(r"cml-ops-hookless 1\.0 .*has no cml_register_ops hook", m) for m in messages)
    assert any(re.search(r"cml-ops-unmarked 1\.0 .*not marked with @cml_core.hookimpl", m) for m in messages)


def test_a_plugin_without_a_hook_fails_in_strict_mode(fake_plugins):
    fake_plugins("hookless", "cml-ops-hookless", types.ModuleType("shookless_mod"))
    with pytest.raises(PluginError, match=r"cml-ops-hookless 1\.0 .*no cml_register_ops hook"):
        _build(strict=True)


def test_cml_plugins_still_lists_the_plugins_when_their_ops_collide(fake_plugins, fresh_process_plugins, capsys):
    fake_plugins("a", "cml-ops-a", _plugin_module("ca_mod", "Same"))
    fake_plugins("b", "cml-ops-b", _plugin_module("cb_mod", "Same"))
    code, rows, captured = _cli_plugins(capsys)
    assert code == 1 and set(rows) == {"cml-ops-a", "cml-ops-b"}
    assert all(re.search(r"\s\?\s+ok$", row) for row in rows.values())
    assert "cml: error: com.test::Same (since-version 1) is registered by cml-ops-a 1.0 and cml-ops-b 1.0" in captured.err


def test_a_plugin_registering_its_own_op_twice_is_told_to_use_replace(fake_plugins):
    module = _plugin_module("twice_mod", "Twice")
    hook = module.cml_register_ops

    @hookimpl
    def cml_register_ops(registry):
        hook(registry)
        hook(registry)

    module.cml_register_ops = cml_register_ops
    fake_plugins("twice", "cml-ops-twice", module)
    with pytest.raises(DuplicateOpError, match=r"com\.test::Twice \(since-version 1\) is registered more than "
                                               r"once by cml-ops-twice 1\.0; pass replace=True"):
        _build()
