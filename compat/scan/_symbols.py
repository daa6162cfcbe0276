"""Per-file symbol table: scopes, name bindings, references and qualified-name resolution.

Scoping is static, as in Python itself: a name bound anywhere in a function is local to
the whole function, class bodies do not enclose the functions defined in them, and
``global``/``nonlocal`` move a binding to the module or an enclosing function. A name
with several bindings in its scope resolves to all of them (no flow analysis).
"""

from __future__ import annotations

import ast
import builtins
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from compat.scan._text import SourceText
from compat.upstream import (
    COMPAT_LEGACY_MODULE,
    INT32_SPELLINGS,
    LEGACY_CLASS,
    LEGACY_SUBMODULE,
    MODULE,
    OUTPUT_DTYPE_ALIASES,
    PACKAGE,
    REPLACEMENT_CLASS,
)

TARGET = LEGACY_CLASS
REPLACEMENT = REPLACEMENT_CLASS
FAMILY_ROOTS = (PACKAGE, COMPAT_LEGACY_MODULE.partition(".")[0])

_BUILTIN_NAMES = frozenset(dir(builtins))

# the legacy submodule's own name: ``import_module("torch_npu.contrib.module.linear_a8w8_quant")``
# is a use without the class name in it
LEGACY_MODULE_NAME = LEGACY_SUBMODULE.rpartition(".")[2]
LEGACY_MODULES = frozenset({LEGACY_SUBMODULE, COMPAT_LEGACY_MODULE})
# attribute chains that reach the class whatever their base (``x.contrib.module.LinearA8W8Quant``),
# with the torch_npu name each stands for
CHAIN_SUFFIXES: tuple[tuple[tuple[str, ...], str], ...] = tuple(
    ((*module.split(".")[1:], TARGET), f"{module}.{TARGET}")
    for module in (MODULE, LEGACY_SUBMODULE)
)

# strings LinearA8W8Quant took for output_dtype (looked up lowercased, as the adapter does)
# and the torch dtype each meant; the int32 spellings it always refused
LEGACY_DTYPE_STRINGS = OUTPUT_DTYPE_ALIASES
LEGACY_INT32_STRINGS = INT32_SPELLINGS

# a binding of the name ``torch`` (not a ``torch.x`` attribute use): blocks that may hold
# one are never skipped, since they decide how a fix may spell ``torch.int8``
_TORCH_BINDING = re.compile(
    r"(?<![\w.])(?<!from )torch\b(?!\s*\.)|\bimport\s[^\n;]*(?<![\w.])torch\."
)

ScopeKind = Literal["module", "class", "function", "comprehension"]
BindingKind = Literal["import", "assign", "other"]
Qualnames = frozenset[str | None]
_UNKNOWN: Qualnames = frozenset({None})


def family(qualname: str | None) -> str | None:
    """``"torch_npu"`` or ``"compat"`` when *qualname* lives in one of them, else None."""
    if qualname is None:
        return None
    root = qualname.split(".", 1)[0]
    return root if root in FAMILY_ROOTS else None


def mentions(text: str) -> bool:
    """Whether *text* may hold a use: it spells the class or the legacy submodule's name."""
    return TARGET in text or LEGACY_MODULE_NAME in text


def chain_symbol(node: ast.Attribute) -> str | None:
    """The torch_npu name an attribute chain ending in ``contrib.module[.linear_a8w8_quant]
    .LinearA8W8Quant`` reaches, whatever its base (a parameter, ``self.x``, a call); else None."""
    attrs: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute) and len(attrs) < 4:
        attrs.append(current.attr)
        current = current.value
    attrs.reverse()
    for suffix, symbol in CHAIN_SUFFIXES:
        if tuple(attrs[-len(suffix) :]) == suffix:
            return symbol
    return None


def _constant_string(expr: ast.expr | None) -> str | None:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    return None


def is_deprecated(qualname: str | None) -> bool:
    """Whether *qualname* names LinearA8W8Quant in torch_npu or compat."""
    return qualname is not None and qualname.endswith("." + TARGET) and family(qualname) is not None


class Scope:
    """One Python scope and the bindings made in it."""

    __slots__ = ("bindings", "globals", "kind", "node", "nonlocals", "parent", "stars")

    def __init__(self, kind: ScopeKind, node: ast.AST, parent: Scope | None) -> None:
        self.kind: ScopeKind = kind
        self.node = node
        self.parent = parent
        self.bindings: dict[str, list[Binding]] = {}
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()
        self.stars: list[str] = []  # modules imported with ``from M import *``

    def module(self) -> Scope:
        """The module scope this scope belongs to."""
        scope = self
        while scope.parent is not None:
            scope = scope.parent
        return scope

    def enclosing_function(self) -> Scope:
        """Nearest enclosing function scope (for ``nonlocal``), or the module scope."""
        scope = self.parent
        while scope is not None and scope.kind != "function":
            scope = scope.parent
        return scope if scope is not None else self.module()

    def walrus_target(self) -> Scope:
        """The scope that ``:=`` binds in: comprehensions bind in their container."""
        scope = self
        while scope.kind == "comprehension" and scope.parent is not None:
            scope = scope.parent
        return scope


@dataclass(eq=False)
class Binding:
    """One binding of a name: an import, a plain assignment, or anything else."""

    name: str
    kind: BindingKind
    node: ast.AST
    scope: Scope
    stmt: ast.stmt | None = None
    qualname: str | None = None  # imports: what the name refers to
    value: ast.expr | None = None  # assignments: the assigned expression
    value_scope: Scope | None = None
    block: list[ast.stmt] | None = None  # the statement list holding ``stmt``
    in_except: bool = False  # the statement is inside an ``except`` clause
    type_checking: bool = False  # only under ``if TYPE_CHECKING:``: never made at run time
    deferred: bool = False  # made through ``global``/``nonlocal`` from a nested function


RefRole = Literal[
    "func",
    "arg",
    "tuple_arg",
    "base",
    "value",
    "annotation",
    "match_class",
    "none_check",
    "del",
    "attr_base",
    "other",
]


@dataclass(eq=False)
class Ref:
    """A load of a name, or of an ``.LinearA8W8Quant`` attribute, and its syntactic role."""

    node: ast.Name | ast.Attribute
    scope: Scope
    role: RefRole
    parent: ast.AST | None = None
    index: int = -1  # position among the call's arguments for "arg"/"tuple_arg"
    string: ast.Constant | None = None  # the string annotation this name was parsed from


@dataclass
class SymbolTable:
    """Everything the finder needs to know about one module."""

    module: Scope
    scopes: list[Scope] = field(default_factory=list)
    by_node: dict[int, Binding] = field(default_factory=dict)  # id(target node) -> binding
    by_value: dict[int, Binding] = field(default_factory=dict)  # id(assigned value) -> binding
    refs: list[Ref] = field(default_factory=list)
    getattr_calls: list[tuple[ast.Call, Scope]] = field(default_factory=list)
    module_calls: list[tuple[ast.Call, Scope]] = field(default_factory=list)
    imports: list[tuple[ast.ImportFrom, Binding]] = field(default_factory=list)
    all_names: set[str] = field(default_factory=set)
    _memo: dict[tuple[int, str], Qualnames] = field(default_factory=dict)

    # -- lookup -------------------------------------------------------------------------

    def defining_scope(self, scope: Scope, name: str) -> Scope | None:
        """The scope whose binding of *name* is visible from *scope*, or None."""
        current: Scope | None = scope
        while current is not None:
            if current.kind == "class" and current is not scope:
                current = current.parent  # class bodies do not enclose nested scopes
                continue
            if name in current.globals:
                module = current.module()
                return module if name in module.bindings else None
            if name in current.bindings:
                return current
            current = current.parent
        return None

    def resolve_name(self, scope: Scope, name: str) -> Qualnames:
        """Qualified names *name* may stand for in *scope* (None: unknown object)."""
        owner = self.defining_scope(scope, name)
        key = (id(owner) if owner is not None else id(self.module), name)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        self._memo[key] = _UNKNOWN  # breaks cycles such as ``a = b; b = a``
        result: set[str | None] = set()
        if owner is None:
            result.update(self._unbound(name))
        else:
            for binding in owner.bindings[name]:
                result.update(self.resolve_binding(binding))
        frozen = frozenset(result) if result else _UNKNOWN
        self._memo[key] = frozen
        return frozen

    def resolve_binding(self, binding: Binding) -> Qualnames:
        """Qualified names a single binding may stand for."""
        if binding.kind == "import":
            return frozenset({binding.qualname})
        if binding.kind == "assign" and binding.value is not None:
            value_scope = binding.value_scope or binding.scope
            return self.resolve(binding.value, value_scope)
        return _UNKNOWN

    def _unbound(self, name: str) -> Qualnames:
        for module_name in self.module.stars:
            if family(module_name) is not None and name in (TARGET, REPLACEMENT):
                return frozenset({f"{module_name}.{name}"})
        if name in _BUILTIN_NAMES:  # a star import could shadow it; too rare to give up
            return frozenset({f"builtins.{name}"})
        return _UNKNOWN

    def resolve(self, expr: ast.expr, scope: Scope) -> Qualnames:
        """Qualified names *expr* may evaluate to (None stands for unknown)."""
        if isinstance(expr, ast.Name):
            return self.resolve_name(scope, expr.id)
        if isinstance(expr, ast.Attribute):
            bases = self.resolve(expr.value, scope)
            return frozenset(None if base is None else f"{base}.{expr.attr}" for base in bases)
        if isinstance(expr, ast.Subscript):  # sys.modules["torch_npu"]
            key = _constant_string(expr.slice)
            if key is not None and "sys.modules" in self.resolve(expr.value, scope):
                return frozenset({key})
            return _UNKNOWN
        if isinstance(expr, ast.Call) and expr.args:
            name = _constant_string(expr.args[0])
            if name is None:
                return _UNKNOWN
            func = self.resolve(expr.func, scope)
            if len(expr.args) == 1 and func & {"importlib.import_module", "sys.modules.get"}:
                return frozenset({name})
            if "builtins.__import__" in func:
                # __import__("a.b") returns the top package "a", unless a fromlist is given
                fromlist = len(expr.args) >= 4 or any(k.arg == "fromlist" for k in expr.keywords)
                return frozenset({name if fromlist else name.partition(".")[0]})
        return _UNKNOWN


def build(tree: ast.Module, source: SourceText | None = None) -> SymbolTable:
    """Collect scopes, bindings and candidate references of *tree*.

    With the module's *source*, compound statements whose text mentions none of the names
    that matter (see :func:`relevant_names`) are skipped: they can hold neither a use
    nor a binding that changes what a use resolves to.
    """
    module = Scope("module", tree, None)
    table = SymbolTable(module, [module])
    collector = _Collector(table)
    if source is not None and ":=" not in source.text:
        collector.set_filter(source, relevant_names(tree))
    collector.run(tree, module)
    return table


_COMPOUND = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.With,
    ast.AsyncWith,
    ast.Try,
    ast.Match,
)


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement in *body*, nested ones included (expressions are not entered)."""
    stack = list(reversed(body))
    while stack:
        stmt = stack.pop()
        yield stmt
        if isinstance(stmt, _COMPOUND) or type(stmt).__name__ == "TryStar":
            nested: list[ast.stmt] = []
            for name in ("body", "orelse", "finalbody"):
                nested.extend(getattr(stmt, name, []))
            for handler in getattr(stmt, "handlers", []):
                nested.extend(handler.body)
            for case in getattr(stmt, "cases", []):
                nested.extend(case.body)
            stack.extend(reversed(nested))


def _root(expr: ast.expr) -> ast.expr:
    while isinstance(expr, ast.Attribute | ast.Call):
        expr = expr.value if isinstance(expr, ast.Attribute) else expr.func
    return expr


def relevant_names(tree: ast.Module) -> frozenset[str]:
    """Names that may stand for LinearA8W8Quant or a module it is reached through.

    The two class names, every name an import from torch_npu or compat binds, every
    name ``importlib.import_module`` of such a module is assigned to, and, repeatedly,
    every name assigned from an expression rooted at one of these names. Also the names a
    module-level statement assigns a legacy dtype string to (a fix may follow them, so
    every binding of them must be seen).
    """
    names = {TARGET, REPLACEMENT}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and _is_dtype_string(stmt.value):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    assigns: list[tuple[list[str], ast.expr]] = []
    for stmt in _statements(tree.body):
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if family(alias.name) is not None:
                    names.add(alias.asname or alias.name.split(".", 1)[0])
        elif isinstance(stmt, ast.ImportFrom):
            if stmt.level == 0 and family(stmt.module) is not None:
                names.update(a.asname or a.name for a in stmt.names)
        elif isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            plain = [t.id for t in targets if isinstance(t, ast.Name)]
            if plain:
                assigns.append((plain, stmt.value))
    changed = True
    while changed:
        changed = False
        for bound, value in assigns:
            roots = [_root(value)]
            if isinstance(value, ast.Call):  # functools.partial(LinearA8W8Quant, ...)
                roots.extend(_root(arg) for arg in value.args)
            module_call = (
                isinstance(value, ast.Call)
                and len(value.args) > 0
                and isinstance(value.args[0], ast.Constant)
                and family(str(value.args[0].value)) is not None
            )
            if any(isinstance(r, ast.Name) and r.id in names for r in roots) or module_call:
                if not names.issuperset(bound):
                    names.update(bound)
                    changed = True
    return frozenset(names)


def _is_dtype_string(value: ast.expr | None) -> bool:
    """Whether *value* is a string literal naming a legacy output dtype (any case)."""
    if not isinstance(value, ast.Constant) or not isinstance(value.value, str):
        return False
    lowered = value.value.lower()
    return lowered in LEGACY_DTYPE_STRINGS or lowered in LEGACY_INT32_STRINGS


def _is_type_checking(expr: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``<module>.TYPE_CHECKING`` (false at run time)."""
    if isinstance(expr, ast.Name):
        return expr.id == "TYPE_CHECKING"
    return isinstance(expr, ast.Attribute) and expr.attr == "TYPE_CHECKING"


def type_checking_branch(test: ast.expr) -> Literal["body", "orelse", None]:
    """Which branch of ``if test:`` only type checkers see (``TYPE_CHECKING`` tests)."""
    if _is_type_checking(test):
        return "body"
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return "body" if any(_is_type_checking(value) for value in test.values) else None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return "orelse" if _is_type_checking(test.operand) else None
    return None


def _is_none_check(node: ast.Compare) -> bool:
    """``x is None`` / ``x is not None``: renaming ``x`` cannot change the result."""
    operands = (node.left, *node.comparators)
    return (
        len(operands) == 2
        and isinstance(node.ops[0], ast.Is | ast.IsNot)
        and any(isinstance(o, ast.Constant) and o.value is None for o in operands)
    )


class _Collector:
    """Walks a module once, recording bindings and the loads the finder may care about."""

    def __init__(self, table: SymbolTable) -> None:
        self.table = table
        self.text: SourceText | None = None
        self.names_re: re.Pattern[str] | None = None
        self.type_checking = 0  # depth of ``if TYPE_CHECKING:`` branches being walked

    def set_filter(self, source: SourceText, names: frozenset[str]) -> None:
        """Skip compound statements whose text mentions none of *names*."""
        self.text = source
        words = "|".join(re.escape(name) for name in sorted(names))
        self.names_re = re.compile(rf"(?<![\w.])(?:{words})\b|\.{TARGET}\b|{LEGACY_MODULE_NAME}")

    def irrelevant(self, node: ast.stmt, scope: Scope) -> bool:
        """Whether *node* is a compound statement that cannot matter (see :func:`build`)."""
        if self.names_re is None or self.text is None or not isinstance(node, _COMPOUND):
            return False
        first: int = node.lineno
        for decorator in getattr(node, "decorator_list", []):
            first = min(first, decorator.lineno)
        last: int = getattr(node, "end_lineno", None) or node.lineno
        starts = self.text.line_starts
        end = starts[last] if last < len(starts) else len(self.text.text)
        segment = self.text.text[starts[first - 1] : end]
        if "torch" in segment and (scope.parent is None or _TORCH_BINDING.search(segment)):
            return False  # torch bindings decide how fixes spell torch.int8
        return self.names_re.search(segment) is None

    def run(self, tree: ast.Module, module: Scope) -> None:
        self.stmts(tree.body, module, in_except=False)

    # -- bindings -----------------------------------------------------------------------

    def bind(self, scope: Scope, name: str, binding: Binding) -> None:
        if name in scope.globals and scope.parent is not None:
            scope = scope.module()
            binding.deferred = True
        elif name in scope.nonlocals:
            scope = scope.enclosing_function()
            binding.deferred = True
        binding.scope = scope
        binding.type_checking = self.type_checking > 0
        scope.bindings.setdefault(name, []).append(binding)
        self.table.by_node[id(binding.node)] = binding
        if binding.value is not None:
            self.table.by_value[id(binding.value)] = binding

    def scope(self, kind: ScopeKind, node: ast.AST, parent: Scope) -> Scope:
        new = Scope(kind, node, parent)
        self.table.scopes.append(new)
        return new

    def bind_other(self, scope: Scope, name: str, node: ast.AST) -> None:
        self.bind(scope, name, Binding(name, "other", node, scope))

    def bind_target(self, target: ast.expr, scope: Scope) -> None:
        """Bind the names in an assignment target that is not a plain name."""
        if isinstance(target, ast.Name):
            self.bind_other(scope, target.id, target)
        elif isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                self.bind_target(elt, scope)
        elif isinstance(target, ast.Starred):
            self.bind_target(target.value, scope)
        else:  # attribute or subscript target: its parts are loads
            self.expr(target, scope)

    def bind_arguments(self, args: ast.arguments, scope: Scope) -> None:
        for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs):
            self.bind_other(scope, arg.arg, arg)
        for extra in (args.vararg, args.kwarg):
            if extra is not None:
                self.bind_other(scope, extra.arg, extra)

    def annotations(self, args: ast.arguments, scope: Scope) -> None:
        every = (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg)
        for arg in every:
            if arg is not None and arg.annotation is not None:
                self.expr(arg.annotation, scope, "annotation")

    # -- statements ---------------------------------------------------------------------

    def stmts(self, body: list[ast.stmt], scope: Scope, *, in_except: bool) -> None:
        for stmt in body:
            if not self.irrelevant(stmt, scope):
                self.stmt(stmt, scope, body, in_except)

    def stmt(self, node: ast.stmt, scope: Scope, block: list[ast.stmt], in_except: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self.function(node, scope, block, in_except)
        elif isinstance(node, ast.ClassDef):
            self.classdef(node, scope, block, in_except)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".", 1)[0]
                qualname = alias.name if alias.asname else local
                binding = self._import(local, alias, node, scope, qualname, block)
                binding.in_except = in_except
                self.bind(scope, local, binding)
        elif isinstance(node, ast.ImportFrom):
            self.import_from(node, scope, block, in_except)
        elif isinstance(node, ast.Assign):
            self.expr(node.value, scope, "value", node)
            for target in node.targets:
                if isinstance(target, ast.Name):
                    binding = Binding(
                        target.id, "assign", target, scope, node, None, node.value, scope, block
                    )
                    binding.in_except = in_except
                    self.bind(scope, target.id, binding)
                else:
                    self.bind_target(target, scope)
            self.record_all(node, scope)
        elif isinstance(node, ast.AnnAssign):
            self.expr(node.annotation, scope, "annotation")
            if node.value is not None:
                self.expr(node.value, scope, "value", node)
            if isinstance(node.target, ast.Name):
                kind: BindingKind = "assign" if node.value is not None else "other"
                binding = Binding(
                    node.target.id, kind, node.target, scope, node, None, node.value, scope, block
                )
                binding.in_except = in_except
                self.bind(scope, node.target.id, binding)
            else:
                self.expr(node.target, scope)
            self.record_all(node, scope)
        elif isinstance(node, ast.AugAssign):
            self.expr(node.value, scope)
            self.bind_target(node.target, scope)
            self.record_all(node, scope)
        elif isinstance(node, ast.For | ast.AsyncFor):
            self.expr(node.iter, scope)
            self.bind_target(node.target, scope)
            self.stmts(node.body, scope, in_except=in_except)
            self.stmts(node.orelse, scope, in_except=in_except)
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                self.expr(item.context_expr, scope)
                if item.optional_vars is not None:
                    self.bind_target(item.optional_vars, scope)
            self.stmts(node.body, scope, in_except=in_except)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            self.try_(node, scope, in_except)
        elif isinstance(node, ast.Match):
            self.expr(node.subject, scope)
            for case in node.cases:
                self.pattern(case.pattern, scope)
                if case.guard is not None:
                    self.expr(case.guard, scope)
                self.stmts(case.body, scope, in_except=in_except)
        elif isinstance(node, ast.Global):
            scope.globals.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            scope.nonlocals.update(node.names)
        elif isinstance(node, ast.If | ast.While):
            self.expr(node.test, scope)
            hidden = type_checking_branch(node.test) if isinstance(node, ast.If) else None
            for branch, body in (("body", node.body), ("orelse", node.orelse)):
                self.type_checking += branch == hidden
                self.stmts(body, scope, in_except=in_except)
                self.type_checking -= branch == hidden
        else:  # Expr, Return, Raise, Assert, Delete, Pass, TypeAlias, ...
            if isinstance(node, ast.Expr) and scope.parent is None:
                self.record_all_call(node.value)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                        self.bind_other(scope, child.id, child)
                    else:
                        self.expr(child, scope)

    def _import(
        self,
        local: str,
        alias: ast.alias,
        stmt: ast.stmt,
        scope: Scope,
        qualname: str | None,
        block: list[ast.stmt],
    ) -> Binding:
        kind: BindingKind = "import" if qualname is not None else "other"
        return Binding(local, kind, alias, scope, stmt, qualname, block=block)

    def import_from(
        self, node: ast.ImportFrom, scope: Scope, block: list[ast.stmt], in_except: bool
    ) -> None:
        module = node.module if node.level == 0 else None
        for alias in node.names:
            if alias.name == "*":
                # relative star imports are kept as ".name": they never belong to a family
                scope.stars.append(module if module is not None else f".{node.module or ''}")
                continue
            local = alias.asname or alias.name
            qualname = f"{module}.{alias.name}" if module is not None else None
            binding = self._import(local, alias, node, scope, qualname, block)
            binding.in_except = in_except
            self.bind(scope, local, binding)
            self.table.imports.append((node, binding))

    def function(
        self,
        node: ast.FunctionDef | ast.AsyncFunctionDef,
        scope: Scope,
        block: list[ast.stmt],
        in_except: bool,
    ) -> None:
        for decorator in node.decorator_list:
            self.expr(decorator, scope)
        for default in (*node.args.defaults, *node.args.kw_defaults):
            if default is not None:
                self.expr(default, scope)
        self.annotations(node.args, scope)
        if node.returns is not None:
            self.expr(node.returns, scope, "annotation")
        self.bind(scope, node.name, Binding(node.name, "other", node, scope, node, block=block))
        inner = self.scope("function", node, scope)
        self.bind_arguments(node.args, inner)
        self.stmts(node.body, inner, in_except=False)

    def classdef(
        self, node: ast.ClassDef, scope: Scope, block: list[ast.stmt], in_except: bool
    ) -> None:
        for decorator in node.decorator_list:
            self.expr(decorator, scope)
        for base in node.bases:
            self.expr(base, scope, "base", node)
        for keyword in node.keywords:
            self.expr(keyword.value, scope)
        self.bind(scope, node.name, Binding(node.name, "other", node, scope, node, block=block))
        self.stmts(node.body, self.scope("class", node, scope), in_except=False)

    def try_(self, node: ast.stmt, scope: Scope, in_except: bool) -> None:
        body: list[ast.stmt] = getattr(node, "body", [])
        handlers: list[ast.ExceptHandler] = getattr(node, "handlers", [])
        self.stmts(body, scope, in_except=in_except)
        for handler in handlers:
            if handler.type is not None:
                self.expr(handler.type, scope)
            if handler.name is not None:
                self.bind_other(scope, handler.name, handler)
            self.stmts(handler.body, scope, in_except=True)
        self.stmts(getattr(node, "orelse", []), scope, in_except=in_except)
        self.stmts(getattr(node, "finalbody", []), scope, in_except=in_except)

    def pattern(self, node: ast.pattern, scope: Scope) -> None:
        for child in ast.walk(node):
            name = getattr(child, "name", None) or getattr(child, "rest", None)
            if isinstance(name, str):
                self.bind_other(scope, name, child)
            if isinstance(child, ast.MatchValue):
                self.expr(child.value, scope)
            elif isinstance(child, ast.MatchClass):  # an isinstance check of the subject
                self.expr(child.cls, scope, "match_class", child)

    def record_all(self, node: ast.Assign | ast.AnnAssign | ast.AugAssign, scope: Scope) -> None:
        """Remember the names listed in a module-level ``__all__``."""
        if scope.parent is not None or node.value is None:
            return
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return
        for child in ast.walk(node.value):
            if isinstance(child, ast.Constant) and isinstance(child.value, str):
                self.table.all_names.add(child.value)

    def record_all_call(self, value: ast.expr) -> None:
        """Remember names added by ``__all__.append/extend/insert(...)`` at module level."""
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr in ("append", "extend", "insert")
            and isinstance(value.func.value, ast.Name)
            and value.func.value.id == "__all__"
        ):
            for arg in value.args:
                for child in ast.walk(arg):
                    if isinstance(child, ast.Constant) and isinstance(child.value, str):
                        self.table.all_names.add(child.value)

    # -- expressions --------------------------------------------------------------------

    def expr(
        self,
        node: ast.expr,
        scope: Scope,
        role: RefRole = "other",
        parent: ast.AST | None = None,
        index: int = -1,
    ) -> None:
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.table.refs.append(Ref(node, scope, role, parent, index))
            elif isinstance(node.ctx, ast.Del):
                self.table.refs.append(Ref(node, scope, "del", parent, index))
        elif isinstance(node, ast.Attribute):
            if node.attr == TARGET and isinstance(node.ctx, ast.Load):
                self.table.refs.append(Ref(node, scope, role, parent, index))
            self.expr(node.value, scope, "attr_base", node)
        elif isinstance(node, ast.Call):
            self.call(node, scope, role)
        elif isinstance(node, ast.Lambda):
            for default in (*node.args.defaults, *node.args.kw_defaults):
                if default is not None:
                    self.expr(default, scope)
            inner = self.scope("function", node, scope)
            self.bind_arguments(node.args, inner)
            self.expr(node.body, inner)
        elif isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            self.comprehension(node, scope)
        elif isinstance(node, ast.Compare) and _is_none_check(node):
            for operand in (node.left, *node.comparators):
                self.expr(operand, scope, "none_check", node)
        elif role == "annotation" and isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                self.string_annotation(node, scope)
        elif role == "annotation" and isinstance(node, ast.Subscript):
            self.annotation_subscript(node, scope)
        elif isinstance(node, ast.NamedExpr):
            self.expr(node.value, scope, "value", node)
            target_scope = scope.walrus_target()
            binding = Binding(
                node.target.id, "assign", node.target, target_scope, None, None, node.value, scope
            )
            self.bind(target_scope, node.target.id, binding)
        else:
            inner_role: RefRole = "annotation" if role == "annotation" else "other"
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, scope, inner_role)
                elif isinstance(child, ast.keyword):
                    self.expr(child.value, scope)

    def annotation_subscript(self, node: ast.Subscript, scope: Scope) -> None:
        """``X[...]`` in an annotation; strings in ``Literal[...]`` are values, not types."""
        self.expr(node.value, scope, "annotation")
        callee = node.value
        name = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", None)
        if name == "Literal":
            self.expr(node.slice, scope)
        elif name == "Annotated" and isinstance(node.slice, ast.Tuple) and node.slice.elts:
            first, *metadata = node.slice.elts
            self.expr(first, scope, "annotation")
            for item in metadata:
                self.expr(item, scope)
        else:
            self.expr(node.slice, scope, "annotation")

    def string_annotation(self, node: ast.Constant, scope: Scope) -> None:
        """Names in a string (forward-reference) annotation are uses like any other.

        The string is parsed as an expression; its nodes get positions in the file when
        the literal is a plain one-line string (quotes around exactly the value), else the
        position of the whole literal. Refs keep the literal so the fixer can check that.
        """
        value = node.value
        assert isinstance(value, str)
        stripped = value.strip()
        if not stripped or len(stripped) > 10_000:
            return
        try:
            parsed = parse_expression(stripped)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return  # not an expression: not a forward reference either
        _place(parsed, node, value, len(value) - len(value.lstrip()))
        first = len(self.table.refs)
        self.expr(parsed, scope, "annotation")
        for ref in self.table.refs[first:]:
            if ref.string is None:
                ref.string = node

    def call(self, node: ast.Call, scope: Scope, role: RefRole = "other") -> None:
        self.expr(node.func, scope, "func", node)
        if role != "attr_base" and node.args and _constant_string(node.args[0]) in LEGACY_MODULES:
            self.table.module_calls.append((node, scope))  # import_module("...linear_a8w8_quant")
        for index, arg in enumerate(node.args):
            if isinstance(arg, ast.Tuple):
                for elt in arg.elts:
                    self.expr(elt, scope, "tuple_arg", node, index)
            else:
                self.expr(arg, scope, "arg", node, index)
        for keyword in node.keywords:
            self.expr(keyword.value, scope)
        if len(node.args) >= 2 and (
            (isinstance(node.args[1], ast.Constant) and node.args[1].value == TARGET)
            # getattr(m, NAME): the finder checks that NAME is a constant of that value
            or (
                isinstance(node.args[1], ast.Name)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
            )
        ):
            self.table.getattr_calls.append((node, scope))

    def comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp, scope: Scope
    ) -> None:
        inner = self.scope("comprehension", node, scope)
        for position, generator in enumerate(node.generators):
            self.expr(generator.iter, scope if position == 0 else inner)
            self.bind_target(generator.target, inner)
            for condition in generator.ifs:
                self.expr(condition, inner)
        if isinstance(node, ast.DictComp):
            self.expr(node.key, inner)
            self.expr(node.value, inner)
        else:
            self.expr(node.elt, inner)


def parse_expression(text: str) -> ast.expr:
    """Parse *text* as one expression, quietly (see :func:`compat.scan._text.parse_module`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(text, "<annotation>", mode="eval")
    return tree.body


def _place(parsed: ast.expr, literal: ast.Constant, value: str, lead: int) -> None:
    """Move the nodes of *parsed* (parsed from the string *literal*) to file positions.

    In a plain one-line literal the value starts after the quote(s): the literal is
    1 or 3 quote bytes longer on each side than the UTF-8 value. Otherwise (escapes,
    prefixes, implicit concatenation, several lines) every node gets the literal's span;
    the fixer checks the literal's text before it rewrites anything in it.
    """
    line: int = literal.lineno
    start: int = literal.col_offset
    end_line = getattr(literal, "end_lineno", None)
    end = getattr(literal, "end_col_offset", None)
    extra = -1
    if end_line == line and end is not None and "\n" not in value and "\r" not in value:
        extra = end - start - len(value.encode("utf-8"))
    for node in ast.walk(parsed):
        if not hasattr(node, "lineno"):
            continue
        child: Any = node
        if extra in (2, 6) and child.lineno == 1 and child.end_lineno == 1:
            shift = start + extra // 2 + lead
            child.lineno = child.end_lineno = line
            child.col_offset += shift
            child.end_col_offset = (child.end_col_offset or 0) + shift
        else:
            child.lineno, child.col_offset = line, start
            child.end_lineno, child.end_col_offset = end_line, end
