"""Plugin discovery and the hook facade.

Plugins are modules exposed through the ``cml.ops`` entry-point group. Each implements the
``cml_register_ops(registry)`` hook and calls ``registry.add(...)``/``registry.register(...)``; the
core alone decides what happens with what was registered.

Environment variables:

- ``CML_STRICT_PLUGINS=1``: a plugin that fails to import or register raises ``PluginError``
  instead of a warning (for CI and plugin authors).
- ``CML_PLUGINS_ALLOW`` / ``CML_PLUGINS_DENY``: comma-separated distribution or entry-point
  names to load only / never.
- ``CML_PIN_OPS``: ``Op=distribution`` pairs, comma-separated (``domain::Op`` for custom
  domains), choosing which provider wins when two plugins register the same op.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from .errors import PluginError
from .registry import OpImpl, OpRegistry, OpSet, Provider, normalize_domain

ENTRY_POINT_GROUP = "cml.ops"
PROJECT = "cml"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator marking a plugin's hook implementation: ``@hookimpl def cml_register_ops(registry): ...``
hookimpl = pluggy.HookimplMarker(PROJECT)


class PluginLoadWarning(UserWarning):
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
        self._registry.add(opset, self.provider)

    def register(self, op_type: str, since_version: int, function: Callable[..., Any], **kwargs: Any) -> OpImpl:
        return self._registry.register(op_type, since_version, function, provider=self.provider, **kwargs)


@dataclass(frozen=True)
class PluginInfo:
    """A plugin the loader saw: its entry point, distribution, and whether it loaded."""

    name: str
    distribution: str
    version: str
    module: str
    error: str | None = None


def _env_list(name: str) -> set[str]:
    return {x.strip() for x in os.environ.get(name, "").split(",") if x.strip()}


def _env_pins() -> dict[tuple[str, str], str]:
    pins = {}
    for item in _env_list("CML_PIN_OPS"):
        op, _, dist = item.partition("=")
        domain, _, op_type = op.rpartition("::")
        pins[(normalize_domain(domain), op_type)] = dist
    return pins


class PluginManager:
    """Typed facade over pluggy: loads entry points and builds the op registry."""

    def __init__(self, strict: bool | None = None) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(HookSpecs)
        self._providers: dict[str, Provider] = {}
        self.plugins: list[PluginInfo] = []
        self.strict = os.environ.get("CML_STRICT_PLUGINS", "") not in ("", "0") if strict is None else strict

    def _fail(self, message: str, exc: BaseException) -> None:
        if self.strict:
            raise PluginError(message) from exc
        warnings.warn(message, PluginLoadWarning, stacklevel=3)

    def add_plugin(self, plugin: object, name: str, provider: Provider) -> None:
        """Register an in-process plugin object (a module or any object with hook implementations)."""
        self._pm.register(plugin, name=name)
        self._providers[name] = provider

    def load_entry_points(self) -> None:
        """Import every ``cml.ops`` entry point, honouring the allow/deny lists.

        A plugin that fails to import gives a ``PluginLoadWarning`` naming its distribution (or
        ``PluginError`` in strict mode); the others still load.
        """
        allow, deny = _env_list("CML_PLUGINS_ALLOW"), _env_list("CML_PLUGINS_DENY")
        seen: set[tuple[str, str]] = set()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "<unknown>"
            version = ep.dist.version if ep.dist is not None else ""
            if (dist, ep.name) in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add((dist, ep.name))
            if (allow and not {dist, ep.name} & allow) or {dist, ep.name} & deny:
                continue
            name = f"{dist}:{ep.name}"
            try:
                module = ep.load()
                self.add_plugin(module, name, Provider(dist, version))
            except Exception as exc:  # any import-time failure of third-party code
                self.plugins.append(PluginInfo(ep.name, dist, version, ep.value, f"{type(exc).__name__}: {exc}"))
                self._fail(
                    f"cml plugin {dist} {version} (entry point {ep.name!r} -> {ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}. Its ops are unavailable; reinstall or uninstall it.",
                    exc,
                )
                continue
            self.plugins.append(PluginInfo(ep.name, dist, version, ep.value))

    def build_registry(self, pins: dict[tuple[str, str], str] | None = None) -> OpRegistry:
        """Call every plugin's ``cml_register_ops`` hook and return the filled registry.

        Raises:
            DuplicateOpError: two plugins register the same op version and no pin decides.
        """
        from .errors import DuplicateOpError

        registry = OpRegistry(pins=_env_pins() if pins is None else pins)
        for hook in self._pm.hook.cml_register_ops.get_hookimpls():
            provider = self._providers.get(hook.plugin_name, Provider(hook.plugin_name, ""))
            try:
                hook.function(registry=ProviderRegistry(registry, provider))
            except DuplicateOpError:
                raise
            except Exception as exc:  # a plugin's own registration code failed
                self._fail(
                    f"cml plugin {provider} failed while registering its ops: {type(exc).__name__}: {exc}",
                    exc,
                )
        return registry


_REGISTRY: OpRegistry | None = None
_MANAGER: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, with entry points loaded."""
    global _MANAGER
    if _MANAGER is None:
        manager = PluginManager()
        manager.load_entry_points()
        _MANAGER = manager
    return _MANAGER


def get_registry() -> OpRegistry:
    """The process-wide registry built from installed plugins (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = get_plugin_manager().build_registry()
    return _REGISTRY


def reset() -> None:
    """Forget the loaded plugins and registry, so the next use rediscovers them (for tests)."""
    global _REGISTRY, _MANAGER
    _REGISTRY = None
    _MANAGER = None
