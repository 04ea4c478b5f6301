"""Helpers for the infrastructure tests: parse the Bicep templates with pycep and read what they say.

pycep turns a template into nested dicts. An identifier and a string literal both come back as a
plain string, so `expr()` renders expressions back to Bicep-like text (`identity.outputs.clientId`,
`guid(container.id, appPrincipalId, storageBlobDataContributor)`) for the tests to compare.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Iterator

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MODULES = INFRA / "modules"


@functools.lru_cache(maxsize=None)
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def template(name: str) -> dict[str, Any]:
    """`main` or the file name of a module without `.bicep`."""
    path = INFRA / "main.bicep" if name == "main" else MODULES / f"{name}.bicep"
    return parse(path)


def module_names() -> list[str]:
    return sorted(p.stem for p in MODULES.glob("*.bicep"))


def unwrap(config: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module, whether or not it is deployed under an `if`."""
    if set(config) == {"condition", "config"}:
        return config["config"]
    return config


def resources(tpl: dict[str, Any], type_: str | None = None) -> dict[str, dict[str, Any]]:
    """Symbol -> resource (with `body`, the unwrapped config), optionally of one type only."""
    out = {}
    for symbol, res in tpl.get("resources", {}).items():
        if type_ is None or res["type"].lower() == type_.lower():
            out[symbol] = {**res, "body": unwrap(res["config"])}
    return out


def one(tpl: dict[str, Any], type_: str) -> tuple[str, dict[str, Any]]:
    found = resources(tpl, type_)
    assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
    return next(iter(found.items()))


def all_resources() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(template name, symbol, resource) for every resource in every template."""
    for name in ["main", *module_names()]:
        for symbol, res in resources(template(name)).items():
            yield name, symbol, res


def variable(tpl: dict[str, Any], name: str) -> Any:
    return tpl["variables"][name]["value"]


def literal(tpl: dict[str, Any], value: Any) -> Any:
    """A literal, following one variable reference if `value` names a variable."""
    if isinstance(value, str) and value in tpl.get("variables", {}):
        return variable(tpl, value)
    return value


def expr(node: Any) -> str:
    """Render a pycep expression as compact Bicep-like text."""
    if isinstance(node, bool):
        return "true" if node else "false"
    if node is None:
        return "null"
    if isinstance(node, (int, float, str)):
        return str(node)
    if isinstance(node, list):
        return "[" + ", ".join(expr(v) for v in node) + "]"
    if isinstance(node, dict):
        if set(node) == {"operator"}:
            op = node["operator"]
            kind, operands = op["type"], op.get("operands", {})
            if kind == "property_accessor":
                return f"{expr(operands['operand_1'])}.{expr(operands['operand_2'])}"
            if kind == "index_accessor":
                return f"{expr(operands['operand_1'])}[{expr(operands['operand_2'])}]"
            if kind == "conditional":
                return (
                    f"{expr(operands['condition'])} ? {expr(operands['true_value'])} : "
                    f"{expr(operands['false_value'])}"
                )
            if kind == "not":
                return f"!({expr(operands['bool_value'])})"
            return f"{kind}(" + ", ".join(expr(v) for v in operands.values()) + ")"
        if set(node) == {"function"}:
            fn = node["function"]
            args = [expr(v) for v in fn.get("parameters", {}).values() if v is not None]
            return f"{fn['type']}(" + ", ".join(args) + ")"
        return "{" + ", ".join(f"{k}: {expr(v)}" for k, v in node.items()) + "}"
    raise TypeError(f"unexpected node {node!r}")


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def identifiers(node: Any) -> set[str]:
    """Every plain string in an expression tree: identifiers and literals alike."""
    out: set[str] = set()
    for n in walk(node):
        if isinstance(n, str):
            out.add(n)
            out.update(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", n))
    return out


def is_secure(tpl: dict[str, Any], param: str) -> bool:
    return any(d.get("type") == "secure" for d in tpl["parameters"][param].get("decorators", []))


def app_settings() -> dict[str, Any]:
    """Every {name, value} pair in the function app module, wherever it is built."""
    settings: dict[str, Any] = {}
    for n in walk(template("functionapp")):
        if isinstance(n, dict) and set(n) == {"name", "value"} and isinstance(n["name"], str):
            assert n["name"] not in settings, f"app setting {n['name']} is set twice"
            settings[n["name"]] = n["value"]
    return settings


def bicepparam() -> tuple[str, dict[str, str]]:
    """(the `using` target, param name -> expression text) of infra/main.bicepparam."""
    using, params = "", {}
    for line in (INFRA / "main.bicepparam").read_text().splitlines():
        line = line.strip()
        if m := re.fullmatch(r"using\s+'([^']+)'", line):
            using = m.group(1)
        elif m := re.fullmatch(r"param\s+(\w+)\s*=\s*(.+)", line):
            params[m.group(1)] = m.group(2)
    return using, params
