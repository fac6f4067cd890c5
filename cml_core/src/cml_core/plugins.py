"""Plugin discovery and the hook facade.

Plugins are modules exposed through the ``cml.ops`` entry-point group. Each implements the
``cml_register_ops(registry)`` hook and calls ``registry.add(...)``/``registry.register(...)``; the
core alone decides what happens with what was registered, once every hook has run, so the order
hooks run in never decides anything.

Environment variables:

- ``CML_STRICT_PLUGINS=1``: a plugin that fails to import or register, or has no hook, raises
  ``PluginError`` instead of a ``PluginLoadWarning`` (for CI and plugin authors).
- ``CML_PLUGINS_ALLOW`` / ``CML_PLUGINS_DENY``: comma-separated distribution or entry-point
  names to load only / never. A name matching no installed plugin gives a ``PluginConfigWarning``.
- ``CML_PIN_OPS``: ``Op=distribution`` items, comma-separated (``domain::Op`` for custom
  domains), choosing which provider wins when several plugins register the same op; any of them
  can be pinned. Spaces around names are ignored. A malformed item, or one naming a distribution
  or op that is not installed, gives a ``PluginConfigWarning`` and is ignored.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from .errors import CmlWarning, PluginConfigWarning, PluginError
from .registry import OpImpl, OpRegistry, OpSet, Provider, normalize_domain

ENTRY_POINT_GROUP = "cml.ops"
PROJECT = "cml"
HOOK_NAME = "cml_register_ops"
#: Shown in place of the name of a distribution whose metadata has none.
UNNAMED = "<unnamed distribution>"
PIN_SYNTAX = ("CML_PIN_OPS takes comma-separated Op=distribution items (domain::Op=distribution for custom "
              "domains), e.g. CML_PIN_OPS='Relu=cml-ops-activations,com.acme::Foo=cml-ops-acme'")

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator marking a plugin's hook implementation: ``@hookimpl def cml_register_ops(registry): ...``
hookimpl = pluggy.HookimplMarker(PROJECT)


class PluginLoadWarning(CmlWarning):
    """A plugin could not be loaded; its ops are unavailable, every other op still works."""


class HookSpecs:
    """Hooks a plugin may implement. This list only ever grows."""

    @hookspec
    def cml_register_ops(self, registry: ProviderRegistry) -> None:
        """Register the plugin's ops by calling ``registry.add(opset)`` or ``registry.register(...)``."""


@dataclass
class ProviderRegistry:
    """What a plugin's hook receives: registration calls stamped with the plugin's distribution."""

    _registry: OpRegistry
    provider: Provider

    def add(self, opset: OpSet) -> None:
        """Register every definition of ``opset``.

        Raises:
            OpSignatureError: a function's signature breaks the input/attribute contract.
        """
        self._registry.add(opset, self.provider)

    def register(self, op_type: str, since_version: int, function: Callable[..., Any], **kwargs: Any) -> OpImpl:
        """Register one implementation (keywords as for ``OpRegistry.register``); returns the new entry.

        Raises:
            OpSignatureError: ``function``'s signature breaks the input/attribute contract.
        """
        return self._registry.register(op_type, since_version, function, provider=self.provider, **kwargs)


@dataclass(frozen=True)
class PluginInfo:
    """A plugin the loader saw: its entry point, distribution, and what is wrong with it (``None``: nothing)."""

    name: str
    distribution: str
    version: str
    module: str
    error: str | None = None


def _env_list(name: str) -> list[str]:
    return sorted({x.strip() for x in os.environ.get(name, "").split(",") if x.strip()})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): it tried to end the process (sys.exit() or similar)"
    return f"{type(exc).__name__}: {exc}"


def _provider_of(ep: metadata.EntryPoint) -> Provider:
    """The distribution that ships ``ep``; ``UNNAMED`` when its metadata gives no name."""
    dist = ep.dist
    if dist is None:
        return Provider(UNNAMED, "")
    meta = dist.metadata
    name = meta["Name"] if "Name" in meta else None
    try:
        version = dist.version
    except KeyError:  # newer Pythons raise instead of returning None for a missing field
        version = None
    return Provider(name or UNNAMED, version or "")


def _pin_problem(domain: str, op_type: str, distribution: str) -> str | None:
    if not op_type:
        return "the op name is empty"
    if not distribution:
        return "the distribution name is empty"
    if "=" in distribution:
        return "it has more than one '='"
    if any(c.isspace() for c in domain + op_type + distribution):
        return "a name contains a space"
    return None


def parse_pins(text: str) -> dict[tuple[str, str], str]:
    """Read a ``CML_PIN_OPS`` value into (domain, op type) -> distribution.

    Spaces around items, ``=`` and ``::`` are ignored. A malformed item, or an op pinned to two
    different distributions, gives a ``PluginConfigWarning`` naming it and is left out.

    Returns:
        The pins that are well formed.
    """
    pins: dict[tuple[str, str], str] = {}
    conflicting: set[tuple[str, str]] = set()
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        op, sep, distribution = (part.strip() for part in item.partition("="))
        domain, _, op_type = (part.strip() for part in op.rpartition("::"))
        problem = "it has no '='" if not sep else _pin_problem(domain, op_type, distribution)
        if problem is not None:
            warnings.warn(f"CML_PIN_OPS item {item!r} is ignored: {problem}. {PIN_SYNTAX}.",
                          PluginConfigWarning, stacklevel=2)
            continue
        key = (normalize_domain(domain), op_type)
        if pins.setdefault(key, distribution) != distribution:
            conflicting.add(key)
    for key in sorted(conflicting):
        name = f"{key[0]}::{key[1]}" if key[0] else key[1]
        warnings.warn(f"CML_PIN_OPS pins {name} more than once to different distributions; all its pins are "
                      f"ignored. Keep one {name}=distribution item.", PluginConfigWarning, stacklevel=2)
        del pins[key]
    return pins


class PluginManager:
    """Typed facade over pluggy: loads entry points and builds the op registry."""

    def __init__(self, strict: bool | None = None) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(HookSpecs)
        self._providers: dict[str, Provider] = {}
        self._info_index: dict[str, int] = {}
        #: every distribution that ships a ``cml.ops`` entry point, loaded or not
        self.installed: set[str] = set()
        self.plugins: list[PluginInfo] = []
        self.strict = os.environ.get("CML_STRICT_PLUGINS", "") not in ("", "0") if strict is None else strict

    def _fail(self, message: str, exc: BaseException | None = None) -> None:
        if self.strict:
            raise PluginError(message) from exc
        warnings.warn(message, PluginLoadWarning, stacklevel=3)

    def _record(self, plugin_name: str, info: PluginInfo) -> None:
        self._info_index[plugin_name] = len(self.plugins)
        self.plugins.append(info)

    def _mark(self, plugin_name: str, error: str) -> None:
        index = self._info_index.get(plugin_name)
        if index is not None:
            self.plugins[index] = dataclasses.replace(self.plugins[index], error=error)

    def _hook_problem(self, plugin: object) -> str | None:
        if any(caller.name == HOOK_NAME for caller in self._pm.get_hookcallers(plugin) or ()):
            return None
        if hasattr(plugin, HOOK_NAME):
            return f"{HOOK_NAME} is not marked with @cml_core.hookimpl: registers nothing"
        return f"no {HOOK_NAME} hook: registers nothing"

    def add_plugin(self, plugin: object, name: str, provider: Provider) -> None:
        """Register an in-process plugin object (a module or any object with hook implementations).

        Raises:
            ValueError: ``name`` or ``plugin`` is already registered.
            pluggy.PluginValidationError: a hook implementation does not match its specification.
        """
        self._pm.register(plugin, name=name)
        self._providers[name] = provider

    def load_entry_points(self) -> None:
        """Import every ``cml.ops`` entry point, honouring the allow/deny lists.

        A plugin that fails to import (an exception, or ``sys.exit()`` at import time), or has no
        ``cml_register_ops`` hook, gives a ``PluginLoadWarning`` naming its distribution; the others
        still load. Allow/deny names that match nothing installed give a ``PluginConfigWarning``.

        Raises:
            PluginError: in strict mode, instead of the ``PluginLoadWarning``.
        """
        allow, deny = _env_list("CML_PLUGINS_ALLOW"), _env_list("CML_PLUGINS_DENY")
        names: set[str] = set()  # every installed distribution and entry-point name
        listing: set[str] = set()
        seen: set[tuple[str, ...]] = set()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            provider = _provider_of(ep)
            dist = provider.distribution
            self.installed.add(dist)
            names |= {dist, ep.name}
            listing.add(f"{dist} (entry point {ep.name})")
            # the same distribution seen twice on sys.path; unnamed ones are told apart by their module
            identity = (dist, ep.name) if dist != UNNAMED else (dist, ep.name, ep.value)
            if identity in seen:
                continue
            seen.add(identity)
            if (allow and not {dist, ep.name} & set(allow)) or {dist, ep.name} & set(deny):
                continue
            self._load(ep, provider)
        for variable, listed in (("CML_PLUGINS_ALLOW", allow), ("CML_PLUGINS_DENY", deny)):
            for name in listed:
                if name not in names:
                    installed = ", ".join(sorted(listing)) or "none"
                    warnings.warn(
                        f"{variable} names {name!r}, which is no installed cml plugin (installed: {installed}). "
                        f"{variable} takes comma-separated distribution or entry-point names.",
                        PluginConfigWarning, stacklevel=2,
                    )

    def _load(self, ep: metadata.EntryPoint, provider: Provider) -> None:
        plugin_name = f"{provider.distribution}:{ep.name}={ep.value}"
        version = provider.version or "(no version)"
        where = f"cml plugin {provider.distribution} {version} (entry point {ep.name!r} -> {ep.value})"
        try:
            module = ep.load()
            self.add_plugin(module, plugin_name, provider)
        except (Exception, SystemExit) as exc:  # third-party import code may fail in any way, even exit
            self._record(plugin_name, PluginInfo(ep.name, provider.distribution, provider.version, ep.value,
                                                 f"failed to load: {_describe(exc)}"))
            self._fail(f"{where} failed to load: {_describe(exc)}. Its ops are unavailable; reinstall or "
                       f"uninstall it.", exc)
            return
        problem = self._hook_problem(module)
        self._record(plugin_name, PluginInfo(ep.name, provider.distribution, provider.version, ep.value, problem))
        if problem is not None:
            self._fail(f"{where} has {problem}. A plugin module defines `@cml_core.hookimpl def "
                       f"{HOOK_NAME}(registry)`; see docs/writing-a-plugin.md.")

    def build_registry(self, pins: dict[tuple[str, str], str] | None = None) -> OpRegistry:
        """Call every plugin's ``cml_register_ops`` hook, then decide between providers.

        Every registration is collected first and collisions are settled only after all hooks
        ran, so hook order never matters. A hook that raises (or calls ``sys.exit()``) gives a
        ``PluginLoadWarning`` and contributes no op. ``pins`` defaults to ``CML_PIN_OPS``; a pin
        naming a distribution or op nobody installed gives a ``PluginConfigWarning``.

        Returns:
            The settled registry.

        Raises:
            DuplicateOpError: several plugins register the same op version and neither a pin nor
                ``replace=True`` decides; the message names every provider and the pin to set.
            PluginError: in strict mode, instead of the ``PluginLoadWarning``.
        """
        pins = parse_pins(os.environ.get("CML_PIN_OPS", "")) if pins is None else pins
        registry = OpRegistry(pins=pins, deferred=True)
        for hook in self._pm.hook.cml_register_ops.get_hookimpls():
            provider = self._providers.get(hook.plugin_name, Provider(hook.plugin_name, ""))
            staged = OpRegistry(deferred=True)  # a hook that fails half-way leaves nothing behind
            try:
                hook.function(registry=ProviderRegistry(staged, provider))
            except (Exception, SystemExit) as exc:  # a plugin's own registration code failed
                self._mark(hook.plugin_name, f"failed while registering its ops: {_describe(exc)}")
                self._fail(f"cml plugin {provider} failed while registering its ops: {_describe(exc)}. "
                           f"Its ops are unavailable.", exc)
                continue
            registry.take_offers(staged)
        self._check_pins(registry)
        registry.settle()
        return registry

    def _check_pins(self, registry: OpRegistry) -> None:
        loaded = {p.distribution for p in self._providers.values()}
        for (domain, op_type), distribution in sorted(registry.pins.items()):
            name = f"{domain}::{op_type}" if domain else op_type
            providers = registry.providers(domain, op_type)
            if distribution in providers:
                continue
            if distribution not in self.installed | loaded:
                installed = ", ".join(sorted(self.installed | loaded)) or "none"
                problem = f"no installed cml plugin distribution is named {distribution!r} (installed: {installed})"
            elif distribution not in loaded:
                problem = f"{distribution} is installed but not loaded (see `cml plugins`)"
            else:
                problem = f"{distribution} does not provide {name}"
            offered = (f"{name} is provided by {', '.join(providers)}" if providers
                       else f"no loaded plugin provides {name}")
            warnings.warn(f"CML_PIN_OPS item '{name}={distribution}' has no effect: {problem}; {offered}. "
                          f"{PIN_SYNTAX}.", PluginConfigWarning, stacklevel=3)


_REGISTRY: OpRegistry | None = None
_MANAGER: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, with entry points loaded.

    Raises:
        PluginError: in strict mode, when a plugin fails to load.
    """
    global _MANAGER
    if _MANAGER is None:
        manager = PluginManager()
        manager.load_entry_points()
        _MANAGER = manager
    return _MANAGER


def get_registry() -> OpRegistry:
    """The process-wide registry built from installed plugins (built on first use).

    Raises:
        DuplicateOpError: several plugins register the same op and no pin decides.
        PluginError: in strict mode, when a plugin fails to load or register.
    """
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = get_plugin_manager().build_registry()
    return _REGISTRY


def reset() -> None:
    """Forget the loaded plugins and registry, so the next use rediscovers them (for tests)."""
    global _REGISTRY, _MANAGER
    _REGISTRY = None
    _MANAGER = None
