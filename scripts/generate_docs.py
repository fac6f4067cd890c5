"""Write docs/ops.md and the install-hint table of known_plugins.py from the op registry (never by
hand). ``--check`` fails if either is stale.

    python scripts/generate_docs.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx.defs
from cml_core.cli import _table, op_rows
from cml_core.plugins import get_registry

DOCS = Path(__file__).resolve().parent.parent / "docs"
FIRST_PARTY = {"cml-ops-std", "cml-ops-activations"}


def _history() -> dict[str, list[int]]:
    """ai.onnx op type -> every since-version ONNX defines for it."""
    history: dict[str, list[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain == "":
            history.setdefault(schema.name, []).append(int(schema.since_version))
    return {op: sorted(set(versions)) for op, versions in history.items()}


def coverage_rows() -> list[dict[str, str]]:
    """Per standard op we register: every since-version ONNX defines, and which ones we register."""
    registry = get_registry()
    history = _history()
    rows = []
    ours = {(i.domain, i.op_type) for i in registry if i.provider.distribution in FIRST_PARTY}
    for domain, op_type in sorted(ours):
        if domain:
            continue
        needed = history.get(op_type, [])
        have = registry.versions(domain, op_type)
        missing = [v for v in needed if v not in have]
        rows.append({"op": op_type, "ONNX since-versions": ", ".join(map(str, needed)),
                     "registered": ", ".join(map(str, have)),
                     "not covered": ", ".join(map(str, missing)) or "-"})
    return rows


def coverage_line() -> tuple[str, list[str]]:
    """The "N of M ai.onnx ops" line and the ai.onnx ops no first-party plugin provides."""
    registry = get_registry()
    ours = {i.op_type for i in registry if i.provider.distribution in FIRST_PARTY and i.domain in ("", "ai.onnx")}
    every = set(_history())
    missing = sorted(every - ours)
    return f"{len(every & ours)} of {len(every)} ai.onnx ops.", missing


def render() -> str:
    line, missing = coverage_line()
    return "\n".join([
        "# Supported ops",
        "",
        "Generated from the registry of the first-party plugins by `scripts/generate_docs.py`; do not edit.",
        "",
        f"Coverage: {line} Not provided: {', '.join(missing) or 'none'}.",
        "",
        "`quantized` names the quantized family: `ElementwiseOp` ops join the next table lookup (also",
        "when several encrypted inputs are functions of the same integers, as in `x * Sigmoid(x)`; from",
        "different integers they become one multi-input lookup); `LayoutOp` ops move integers;",
        "`Quantized*` ops are integer linear algebra; `ConstantOnlyOp` ops run on constants only and",
        "refuse encrypted inputs at quantize time.",
        "",
        _table(op_rows(set(HINTED)), markdown=True),
        "",
        "## ONNX versions",
        "",
        "A model at opset N uses, for each op, the highest registered since-version not above N; a",
        "model is refused when ONNX defines a newer since-version at N than the plugins register.",
        "Every since-version is listed, back to the op's first (opset 1 for the oldest ops).",
        "",
        _table(coverage_rows(), markdown=True),
        "",
    ])


KNOWN = Path(__file__).resolve().parent.parent / "cml_core" / "src" / "cml_core" / "known_plugins.py"


#: every first-party distribution, for the install-hint tables
HINTED = ("cml-ops-std", "cml-ops-activations", "cml-ops-qonnx", "cml-ops-ml")


def render_known_plugins() -> str:
    """known_plugins.py with its two tables rebuilt from what the first-party plugins register: standard-domain
    ops by op type, other domains' ops by domain."""
    import textwrap

    registry = get_registry()
    text = KNOWN.read_text()
    start, end = text.index("DOMAIN_PLUGINS: dict"), text.index("\n\n\ndef install_hint")
    body = "DOMAIN_PLUGINS: dict[str, dict[str, frozenset[str]]] = {\n"
    for dist in sorted(HINTED):
        domains: dict[str, set[str]] = {}
        for i in registry:
            if i.provider.distribution == dist and i.domain not in ("", "ai.onnx"):
                domains.setdefault(i.domain, set()).add(i.op_type)
        if not domains:
            continue
        body += f'    "{dist}": {{\n'
        for domain in sorted(domains):
            lines = textwrap.wrap(" ".join(sorted(domains[domain])), 90)
            body += f'        "{domain}": frozenset(\n'
            body += "".join(f'            "{line} "\n' for line in lines[:-1])
            body += f'            "{lines[-1]}".split()\n        ),\n'
        body += "    },\n"
    body += "}\n\nKNOWN_PLUGINS: dict[str, frozenset[str]] = {\n"
    for dist in sorted(HINTED, reverse=True):
        ops = sorted({i.op_type for i in registry if i.provider.distribution == dist and i.domain in ("", "ai.onnx")})
        if not ops:
            continue
        lines = textwrap.wrap(" ".join(ops), 100)
        body += f'    "{dist}": frozenset(\n'
        body += "".join(f'        "{line} "\n' for line in lines[:-1])
        body += f'        "{lines[-1]}".split()\n    ),\n'
    return text[:start] + body + "}" + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail if docs/ops.md is not up to date")
    args = parser.parse_args()
    stale = 0
    for target, text in ((DOCS / "ops.md", render()), (KNOWN, render_known_plugins())):
        if args.check:
            if not target.exists() or target.read_text() != text:
                print(f"{target} is stale: run python scripts/generate_docs.py", file=sys.stderr)
                stale = 1
            continue
        target.write_text(text)
        print(f"wrote {target}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
