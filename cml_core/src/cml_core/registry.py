"""The op registry: (domain, op type, since-version) -> implementation, with who provided it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DuplicateOpError, UnsupportedOpError
from .signature import OpSignature

if TYPE_CHECKING:
    from .quantization.base import QuantizedOp

ONNX_DOMAIN = ""


def normalize_domain(domain: str) -> str:
    """ONNX writes the default domain as '' or 'ai.onnx'; use '' for both."""
    return "" if domain in ("", "ai.onnx") else domain


@dataclass(frozen=True)
class Provider:
    """The distribution (and version) that registered an op."""

    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


LOCAL = Provider("<local>", "")


@dataclass(frozen=True)
class OpImpl:
    """One registered implementation of an op for one since-version."""

    domain: str
    op_type: str
    since_version: int
    function: Callable[..., Any]
    signature: OpSignature
    quantized: type[QuantizedOp] | None
    provider: Provider

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.domain, self.op_type, self.since_version)

    @property
    def display_name(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type


@dataclass
class OpDefinition:
    """An op as a plugin declares it, before it is registered (see ``OpSet``)."""

    op_type: str
    since_versions: tuple[int, ...]
    function: Callable[..., Any]
    domain: str = ONNX_DOMAIN
    quantized: type[QuantizedOp] | None = None
    replace: bool = False


@dataclass
class OpSet:
    """A plugin's collection of op definitions, filled with the ``op`` decorator.

    Example::

        ops = OpSet()

        @ops.op("Relu", since=(6, 13, 14), quantized=UnivariateOp)
        def relu(x, /):
            return np.maximum(x, 0).astype(x.dtype)
    """

    definitions: list[OpDefinition] = field(default_factory=list)

    def op(
        self,
        op_type: str,
        since: int | Iterable[int],
        *,
        domain: str = ONNX_DOMAIN,
        quantized: type[QuantizedOp] | None = None,
        replace: bool = False,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator declaring ``function`` as the numpy implementation of ``op_type``."""
        versions = (since,) if isinstance(since, int) else tuple(since)

        def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
            self.definitions.append(
                OpDefinition(op_type, versions, function, normalize_domain(domain), quantized, replace)
            )
            return function

        return decorate


class OpRegistry:
    """Every op implementation known to this process.

    Plugins fill it through ``register`` (usually via ``add``); the core resolves node ops with
    ``resolve``. A second registration of the same (domain, op type, since-version) raises
    ``DuplicateOpError`` naming both providers, unless it passes ``replace=True`` or the user pins
    a provider for that op (``pins``: (domain, op type) -> distribution name).
    """

    def __init__(self, pins: dict[tuple[str, str], str] | None = None) -> None:
        self._impls: dict[tuple[str, str, int], OpImpl] = {}
        self.pins = dict(pins or {})

    def register(
        self,
        op_type: str,
        since_version: int,
        function: Callable[..., Any],
        *,
        domain: str = ONNX_DOMAIN,
        quantized: type[QuantizedOp] | None = None,
        replace: bool = False,
        provider: Provider = LOCAL,
    ) -> OpImpl:
        """Register one implementation; returns the entry kept.

        Raises:
            DuplicateOpError: the key is taken by another provider and neither ``replace`` nor a pin
                settles which one wins.
            OpSignatureError: ``function``'s signature breaks the input/attribute contract.
        """
        domain = normalize_domain(domain)
        impl = OpImpl(domain, op_type, int(since_version), function, OpSignature.of(function), quantized, provider)
        old = self._impls.get(impl.key)
        if old is not None and not replace:
            pinned = self.pins.get((domain, op_type))
            if pinned == old.provider.distribution:
                return old
            if pinned != provider.distribution:
                raise DuplicateOpError(
                    f"{impl.display_name} (since-version {since_version}) is registered by both "
                    f"{old.provider} and {provider}. Uninstall one, or pin the one to use with "
                    f"CML_PIN_OPS='{impl.display_name}={old.provider.distribution}'"
                )
        self._impls[impl.key] = impl
        return impl

    def add(self, opset: OpSet, provider: Provider = LOCAL) -> None:
        """Register every definition of ``opset`` for each of its since-versions."""
        for d in opset.definitions:
            for version in d.since_versions:
                self.register(
                    d.op_type, version, d.function, domain=d.domain, quantized=d.quantized,
                    replace=d.replace, provider=provider,
                )

    def __iter__(self) -> Iterator[OpImpl]:
        return iter(sorted(self._impls.values(), key=lambda i: i.key))

    def __len__(self) -> int:
        return len(self._impls)

    def versions(self, domain: str, op_type: str) -> list[int]:
        """Since-versions registered for an op, ascending."""
        domain = normalize_domain(domain)
        return sorted(v for (d, o, v) in self._impls if d == domain and o == op_type)

    def op_types(self) -> set[tuple[str, str]]:
        return {(d, o) for (d, o, _) in self._impls}

    def find(self, domain: str, op_type: str, opset: int) -> OpImpl | None:
        """The implementation for a model at ``opset``, or ``None``.

        The highest registered since-version not above ``opset`` is chosen. For ONNX-standard ops
        the choice must also cover the semantics ONNX defines at that opset: when ONNX has a newer
        since-version (still not above ``opset``) that no plugin implements, nothing is returned.
        """
        domain = normalize_domain(domain)
        candidates = [v for v in self.versions(domain, op_type) if v <= opset]
        if not candidates:
            return None
        chosen = max(candidates)
        spec_version = onnx_since_version(domain, op_type, opset)
        if spec_version is not None and spec_version > chosen:
            return None
        return self._impls[(domain, op_type, chosen)]

    def resolve(self, domain: str, op_type: str, opset: int) -> OpImpl:
        """Like ``find`` but raises ``UnsupportedOpError`` explaining what is available."""
        impl = self.find(domain, op_type, opset)
        if impl is None:
            name = f"{domain}::{op_type}" if domain else op_type
            have = self.versions(domain, op_type)
            detail = f"registered since-versions: {have}" if have else "no installed plugin provides it"
            raise UnsupportedOpError(f"{name} at opset {opset} is not supported ({detail})",
                                     [(domain, op_type, opset, 0)])
        return impl


def onnx_since_version(domain: str, op_type: str, opset: int) -> int | None:
    """Since-version of the ONNX schema in force at ``opset``, or ``None`` when ONNX does not know the op."""
    import onnx.defs

    try:
        return int(onnx.defs.get_schema(op_type, opset, domain).since_version)
    except Exception:  # onnx raises SchemaError for unknown ops/domains and versions below the first
        return None
