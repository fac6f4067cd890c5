"""The op registry: (domain, op type, since-version) -> implementation, with who provided it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DuplicateOpError, OpSignatureError, UnsupportedOpError
from .signature import OpSignature, Preparer, Validator

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
    #: load-time check of a node's attributes and static input shapes (see ``signature.Validator``)
    validate: Validator | None = None
    #: load-time preparation of a node's kernel (see ``signature.Preparer``)
    prepare: Preparer | None = None
    #: the implementation's form that may write its result over its first input (see ``OpSet.op``)
    inplace: Callable[..., Any] | None = None
    #: a unary op's gate form: its input times its result, written over its input (see ``OpSet.op``)
    gated: Callable[..., Any] | None = None

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
    validate: Validator | None = None
    prepare: Preparer | None = None
    inplace: Callable[..., Any] | None = None
    gated: Callable[..., Any] | None = None


@dataclass
class OpSet:
    """A plugin's collection of op definitions, filled with the ``op`` decorator.

    Example::

        ops = OpSet()

        @ops.op("Relu", since=(6, 13, 14), quantized=ElementwiseOp)
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
        validate: Validator | None = None,
        prepare: Preparer | None = None,
        inplace: Callable[..., Any] | None = None,
        gated: Callable[..., Any] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator declaring ``function`` as the numpy implementation of ``op_type``.

        ``validate`` is an optional load-time check of each node (see ``signature.Validator``);
        ``prepare`` an optional load-time preparation of each node's kernel (see ``signature.Preparer``).
        ``inplace`` is an optional form of ``function`` (same signature, same result) that may write
        its result over its first input: the interpreter calls it instead when that input is an
        array no one else holds and no later node reads. It may return a new array when it cannot
        (a result of another shape or dtype).
        ``gated``, for a unary element-wise op ``f``, is an optional form (same signature) computing
        ``x * f(x)`` written over ``x``: the interpreter runs it for a node whose result only a ``Mul``
        by the node's own input reads (Sigmoid then Mul is SiLU), on ``x`` when no one else holds it,
        else on a copy. Like ``inplace``, it may return a new array when it cannot.
        """
        versions = (since,) if isinstance(since, int) else tuple(since)

        def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
            self.definitions.append(
                OpDefinition(op_type, versions, function, normalize_domain(domain), quantized, replace, validate,
                             prepare, inplace, gated)
            )
            return function

        return decorate

    def attach(self, function: Callable[..., Any], *, prepare: Preparer | None = None,
               inplace: Callable[..., Any] | None = None, gated: Callable[..., Any] | None = None) -> None:
        """Give the ops already declared with ``function`` a ``prepare``, ``inplace`` or ``gated`` form (as
        ``op`` would), from another module of the same plugin.

        Raises:
            ValueError: no op of this set is implemented by ``function``.
        """
        found = [d for d in self.definitions if d.function is function]
        if not found:
            raise ValueError(f"no op of this set is implemented by {getattr(function, '__qualname__', function)!r}")
        for definition in found:
            if prepare is not None:
                definition.prepare = prepare
            if inplace is not None:
                definition.inplace = inplace
            if gated is not None:
                definition.gated = gated


@dataclass(frozen=True)
class _Offer:
    """One registration of a key, kept until the registry decides between providers."""

    impl: OpImpl
    replace: bool


class OpRegistry:
    """Every op implementation known to this process.

    Plugins fill it through ``register`` (usually via ``add``); the core resolves node ops with
    ``resolve``. Every registration is kept as an offer for its (domain, op type, since-version);
    when several providers offer the same key, one is chosen, in this order:

    1. the provider the user pinned for that op (``pins``: (domain, op type) -> distribution name);
    2. the single offer made with ``replace=True`` (an explicit replacement);
    3. otherwise nothing settles it and ``DuplicateOpError`` names every provider.

    A registry made with ``deferred=True`` (what the plugin loader uses) decides nothing until
    ``settle()``, after every plugin has registered, so the order plugins register in never matters.
    Otherwise each ``register`` call decides at once, and ``replace=True`` drops earlier offers.
    """

    def __init__(self, pins: dict[tuple[str, str], str] | None = None, *, deferred: bool = False) -> None:
        self._impls: dict[tuple[str, str, int], OpImpl] = {}
        self._offers: dict[tuple[str, str, int], list[_Offer]] = {}
        self.pins = dict(pins or {})
        self.deferred = deferred

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
        validate: Validator | None = None,
        prepare: Preparer | None = None,
        inplace: Callable[..., Any] | None = None,
        gated: Callable[..., Any] | None = None,
    ) -> OpImpl:
        """Register one implementation.

        Returns:
            The entry kept for the key; in a deferred registry, the new entry (``settle`` decides).

        Raises:
            DuplicateOpError: (not deferred) the key is offered by several providers and neither a
                pin nor ``replace`` settles which one wins; the registry is left unchanged.
            OpSignatureError: ``function``'s signature breaks the input/attribute contract, or
                ``inplace``'s or ``gated``'s differs from it.
        """
        domain = normalize_domain(domain)
        for form, kind in ((inplace, "in-place"), (gated, "gated")):
            if form is not None and OpSignature.of(form) != OpSignature.of(function):
                raise OpSignatureError(f"{getattr(form, '__qualname__', form)}: the {kind} form of {op_type} must take "
                                       f"the inputs and attributes of {getattr(function, '__qualname__', function)}")
        impl = OpImpl(domain, op_type, int(since_version), function, OpSignature.of(function), quantized, provider,
                      validate, prepare, inplace, gated)
        offer = _Offer(impl, replace)
        if self.deferred:
            self._offers.setdefault(impl.key, []).append(offer)
            return impl
        earlier = self._offers.get(impl.key, [])
        offers = [offer] if replace else [*earlier, offer]
        chosen = self._choose(offers)
        if chosen is None:
            raise DuplicateOpError(self._duplicates_message({(domain, op_type): [offers]}))
        self._offers[impl.key] = offers
        self._impls[impl.key] = chosen
        return chosen

    def take_offers(self, other: OpRegistry) -> None:
        """Add every registration made to ``other`` (for instance one plugin's staging registry)."""
        for key, offers in other._offers.items():
            self._offers.setdefault(key, []).extend(offers)
        if not self.deferred:
            self.settle()

    def settle(self) -> None:
        """Decide every key from all its offers; the registry is no longer deferred afterwards.

        Raises:
            DuplicateOpError: some ops are offered by several providers and neither a pin nor
                ``replace`` decides; the message lists each such op with all its providers and the
                ``CML_PIN_OPS`` line that would settle them.
        """
        self.deferred = False
        unsettled: dict[tuple[str, str], list[list[_Offer]]] = {}
        for key, offers in sorted(self._offers.items()):
            chosen = self._choose(offers)
            if chosen is None:
                unsettled.setdefault(key[:2], []).append(offers)
            else:
                self._impls[key] = chosen
        if unsettled:
            raise DuplicateOpError(self._duplicates_message(unsettled))

    def providers(self, domain: str, op_type: str) -> list[str]:
        """Distributions that offered any since-version of an op (chosen or not), sorted."""
        domain = normalize_domain(domain)
        return sorted({o.impl.provider.distribution
                       for (d, t, _), offers in self._offers.items() if (d, t) == (domain, op_type)
                       for o in offers})

    def _choose(self, offers: list[_Offer]) -> OpImpl | None:
        """The offer that wins by pin, then by ``replace``; ``None`` when that leaves several."""
        first = offers[0].impl
        pinned = self.pins.get((first.domain, first.op_type))
        candidates = [o for o in offers if o.impl.provider.distribution == pinned] or offers
        if len(candidates) > 1:
            candidates = [o for o in candidates if o.replace] or candidates
        return candidates[0].impl if len(candidates) == 1 else None

    def _duplicates_message(self, unsettled: dict[tuple[str, str], list[list[_Offer]]]) -> str:
        lines, pins = [], []
        for (domain, op_type), groups in sorted(unsettled.items()):
            name = f"{domain}::{op_type}" if domain else op_type
            versions = ", ".join(str(offers[0].impl.since_version) for offers in groups)
            since = f"since-version{'s' if len(groups) > 1 else ''} {versions}"
            providers = sorted({str(o.impl.provider) for offers in groups for o in offers})
            distributions = sorted({o.impl.provider.distribution for offers in groups for o in offers})
            if len(providers) == 1:
                lines.append(f"{name} ({since}) is registered more than once by {providers[0]}; "
                             f"pass replace=True to the registration that should win")
                continue
            line = f"{name} ({since}) is registered by {', '.join(providers[:-1])} and {providers[-1]}"
            pinned = self.pins.get((domain, op_type))
            if pinned is not None and pinned not in distributions:
                line += f"; CML_PIN_OPS pins it to {pinned}, which does not provide it"
            lines.append(line)
            pins.append(f"{name}={distributions[0]}")
        message = ". ".join(lines) + "."
        if pins:
            message += (f" Uninstall all providers but one, or choose one with CML_PIN_OPS='{','.join(pins)}'"
                        " (any of the distributions named can be pinned).")
        return message

    def add(self, opset: OpSet, provider: Provider = LOCAL) -> None:
        """Register every definition of ``opset`` for each of its since-versions."""
        for d in opset.definitions:
            for version in d.since_versions:
                self.register(
                    d.op_type, version, d.function, domain=d.domain, quantized=d.quantized,
                    replace=d.replace, provider=provider, validate=d.validate, prepare=d.prepare,
                    inplace=d.inplace, gated=d.gated,
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
