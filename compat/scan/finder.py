"""Find uses of the deprecated ``LinearA8W8Quant`` in one module, from its syntax tree alone.

Nothing of the scanned code is imported. A name or attribute is a use when it resolves,
through imports, module attributes and plain assignments, to ``LinearA8W8Quant`` in
``torch_npu`` or ``compat`` (see :func:`compat.scan._symbols.is_deprecated`). Comments,
strings and classes of the same name from elsewhere are therefore never reported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Literal

from compat.scan._symbols import (
    TARGET,
    Binding,
    Ref,
    Scope,
    SymbolTable,
    build,
    chain_symbol,
    family,
    is_deprecated,
)
from compat.scan._text import SourceText

Kind = Literal["import", "call", "subclass", "isinstance", "alias", "dynamic", "reference"]

# one stable code per kind; the order is the order of the documentation
CODES: dict[str, str] = {
    "import": "LQC001",
    "call": "LQC002",
    "subclass": "LQC003",
    "isinstance": "LQC004",
    "alias": "LQC005",
    "dynamic": "LQC006",
    "reference": "LQC007",
    "syntax-error": "LQC901",
    "unreadable": "LQC902",
}

SUBCLASS_REASON = "subclasses must be migrated by hand (LinearQuant takes bias/offset as keywords)"
DYNAMIC_REASON = "the class is looked up by name at run time; rewrite it by hand"
VALUE_REASON = "the class is passed on as a value, so the arguments it gets are not visible"
TARGET_REASON = "the class is assigned to something other than a single plain name"


@dataclass(eq=False)
class Site:
    """One use of the deprecated class in the source."""

    kind: Kind
    node: ast.AST  # where it is reported
    symbol: str  # qualified name of what is used
    message: str
    scope: Scope
    ref: Ref | None = None
    binding: Binding | None = None  # import: the import; alias: the aliasing name
    call: ast.Call | None = None  # call: the constructor (or functools.partial) call
    partial: bool = False
    reason: str | None = None  # why it cannot be fixed, whatever else happens


@dataclass
class Analysis:
    """A module's symbol table and the deprecated uses in it, in source order."""

    table: SymbolTable
    sites: list[Site]


def find(tree: ast.Module, source: SourceText | None = None) -> Analysis:
    """Every use of the deprecated class in *tree* (*source*: its text, to skip faster)."""
    table = build(tree, source)
    sites: list[Site] = []
    for _, binding in table.imports:
        if is_deprecated(binding.qualname):
            symbol = binding.qualname or TARGET
            message = f"import of deprecated {symbol}; import LinearQuant instead"
            sites.append(
                Site("import", binding.node, symbol, message, binding.scope, binding=binding)
            )
    for ref in table.refs:
        resolved = table.resolve(ref.node, ref.scope)
        deprecated = sorted(q for q in resolved if q is not None and is_deprecated(q))
        if not deprecated and isinstance(ref.node, ast.Attribute):
            chained = chain_symbol(ref.node)  # x.contrib.module.LinearA8W8Quant, any x
            deprecated = [chained] if chained is not None else []
        if deprecated:
            sites.append(_classify(table, ref, deprecated[0]))
    for call, scope in table.getattr_calls:
        site = _dynamic(table, call, scope)
        if site is not None:
            sites.append(site)
    for call, scope in table.module_calls:
        site = _module_call(table, call, scope)
        if site is not None:
            sites.append(site)
    sites.sort(key=lambda s: (getattr(s.node, "lineno", 0), getattr(s.node, "col_offset", 0)))
    return Analysis(table, sites)


def _spell(node: ast.AST) -> str:
    return ast.unparse(node)


def _classify(table: SymbolTable, ref: Ref, symbol: str) -> Site:
    spelled = _spell(ref.node)
    parent = ref.parent
    if ref.role == "func" and isinstance(parent, ast.Call):
        message = f"{spelled}(...) constructs deprecated {symbol}; use LinearQuant"
        return Site("call", ref.node, symbol, message, ref.scope, ref, call=parent)
    if ref.role in ("arg", "tuple_arg") and isinstance(parent, ast.Call):
        callee = table.resolve(parent.func, ref.scope)
        if ref.role == "arg" and ref.index == 0 and "functools.partial" in callee:
            message = f"functools.partial({spelled}, ...) of deprecated {symbol}; use LinearQuant"
            return Site(
                "call", ref.node, symbol, message, ref.scope, ref, call=parent, partial=True
            )
        check = callee & {"builtins.isinstance", "builtins.issubclass"}
        if ref.index == 1 and check:
            name = sorted(q for q in check if q is not None)[0].split(".")[-1]
            message = f"{name}() check against deprecated {symbol}; check LinearQuant"
            return Site("isinstance", ref.node, symbol, message, ref.scope, ref)
    if ref.role == "match_class":  # ``case LinearA8W8Quant():`` is an isinstance check
        message = f"case {spelled}() pattern checks against deprecated {symbol}; match LinearQuant"
        return Site("isinstance", ref.node, symbol, message, ref.scope, ref)
    if ref.role == "base" and isinstance(parent, ast.ClassDef):
        message = f"class {parent.name} subclasses deprecated {symbol}"
        return Site("subclass", ref.node, symbol, message, ref.scope, ref, reason=SUBCLASS_REASON)
    if ref.role == "value":
        return _alias(table, ref, symbol, spelled)
    message = f"{spelled} refers to deprecated {symbol}"
    reason = None if ref.role in ("annotation", "none_check", "del") else VALUE_REASON
    return Site("reference", ref.node, symbol, message, ref.scope, ref, reason=reason)


def _alias(table: SymbolTable, ref: Ref, symbol: str, spelled: str) -> Site:
    parent = ref.parent
    targets: list[ast.expr] = []
    if isinstance(parent, ast.Assign):
        targets = parent.targets
    elif isinstance(parent, ast.AnnAssign | ast.NamedExpr):
        targets = [parent.target]
    target = targets[0] if len(targets) == 1 else None
    binding = table.by_node.get(id(target)) if isinstance(target, ast.Name) else None
    shown = ", ".join(_spell(t) for t in targets) or "?"
    message = f"{shown} = {spelled} aliases deprecated {symbol}"
    reason = None if binding is not None else TARGET_REASON
    return Site("alias", ref.node, symbol, message, ref.scope, ref, binding=binding, reason=reason)


def _names_target(table: SymbolTable, name: ast.Name, scope: Scope) -> bool:
    """Whether *name* is a constant holding the class name: bound once, to that string."""
    owner = table.defining_scope(scope, name.id)
    if owner is None:
        return False
    bindings = owner.bindings[name.id]
    value = bindings[0].value if len(bindings) == 1 and bindings[0].kind == "assign" else None
    return isinstance(value, ast.Constant) and value.value == TARGET


def _dynamic(table: SymbolTable, call: ast.Call, scope: Scope) -> Site | None:
    if "builtins.getattr" not in table.resolve(call.func, scope) or len(call.args) > 3:
        return None
    attribute = call.args[1]
    if isinstance(attribute, ast.Name) and not _names_target(table, attribute, scope):
        return None
    bases = table.resolve(call.args[0], scope)
    known = sorted(q for q in bases if q is not None and family(q) is not None)
    if known:
        symbol = f"{known[0]}.{TARGET}"
    elif None in bases:
        symbol = TARGET  # an object we cannot follow: it may be torch_npu's module
    else:
        return None
    message = f'getattr(..., "{TARGET}") looks up deprecated {symbol} dynamically'
    return Site("dynamic", call, symbol, message, scope, reason=DYNAMIC_REASON)


def _module_call(table: SymbolTable, call: ast.Call, scope: Scope) -> Site | None:
    """``importlib.import_module("torch_npu.contrib.module.linear_a8w8_quant")`` and the like."""
    func = table.resolve(call.func, scope)
    if not func & {"importlib.import_module", "builtins.__import__"}:
        return None
    module = call.args[0]
    assert isinstance(module, ast.Constant) and isinstance(module.value, str)
    symbol = f"{module.value}.{TARGET}"
    message = f"{_spell(call)} imports the module of deprecated {symbol} by name"
    return Site("dynamic", call, symbol, message, scope, reason=DYNAMIC_REASON)
