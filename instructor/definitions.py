"""Keep only the definitions of a student's code cell, for grading.

A graded notebook's student cells should define functions; whatever else they do
at the top level runs outside any check, where no one watches it (it could install
an IPython input transformer that rewrites the test cells, a trace function, ...).
For grading, :func:`definitions_only` keeps the statements that only *define*:

- ``import`` and ``from ... import`` (absolute);
- ``def`` (sync or async) whose decorators are a few well-known pure ones
  (:data:`SAFE_DECORATORS`), whose default values and annotations are constant
  expressions (:func:`is_constant`);
- ``class`` whose bases are names, with no keywords (no metaclass), whose body
  holds only such definitions and constant assignments, and that does not define a
  hook Python calls by itself (``__init_subclass__``, ``__set_name__``, ``__del__`` ...);
- assignments of constant expressions to names (``EPS = 1e-6``, ``DTYPE = torch.float32``);
- docstrings and ``pass``.

Every other top-level statement is dropped and listed, with its line, so the
feedback can say what grading ignored. Dropped lines become blank lines: line
numbers in tracebacks stay those of the student's cell.
"""

from __future__ import annotations

import ast

#: Decorators that only wrap: their names may not be rebound by the student's cells.
SAFE_DECORATORS = {
    "staticmethod", "classmethod", "property", "functools.cache", "functools.lru_cache", "cache", "lru_cache",
    "torch.no_grad", "torch.inference_mode", "torch.enable_grad", "dataclass", "dataclasses.dataclass",
    "functools.wraps", "abstractmethod", "abc.abstractmethod",
}
#: Methods Python calls on its own when a class is defined, or when an object dies.
IMPLICIT_HOOKS = {"__init_subclass__", "__set_name__", "__class_getitem__", "__mro_entries__", "__prepare__", "__del__"}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def is_constant(node: ast.AST | None) -> bool:
    """A literal, a name or dotted name, or operators, containers and subscripts of those: nothing is called."""
    if node is None:
        return True
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.Name, ast.Attribute)):
        return _dotted(node) is not None
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(is_constant(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(is_constant(k) and is_constant(v) for k, v in zip(node.keys, node.values))
    if isinstance(node, ast.UnaryOp):
        return is_constant(node.operand)
    if isinstance(node, ast.BinOp):
        return is_constant(node.left) and is_constant(node.right)
    if isinstance(node, ast.Subscript):
        return is_constant(node.value) and is_constant(node.slice)
    if isinstance(node, ast.Slice):
        return all(is_constant(p) for p in (node.lower, node.upper, node.step))
    return False


def _decorator_ok(node: ast.AST, student_names: set[str]) -> bool:
    call = node if isinstance(node, ast.Call) else None
    target = call.func if call else node
    name = _dotted(target)
    if name is None or name not in SAFE_DECORATORS or name.split(".")[0] in student_names:
        return False
    return call is None or (all(is_constant(a) for a in call.args) and all(is_constant(k.value) for k in call.keywords))


def _signature_ok(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    annotations = [a.annotation for a in every if a is not None] + [node.returns]
    return all(is_constant(d) for d in [*args.defaults, *args.kw_defaults]) and all(is_constant(a) for a in annotations)


def _why_not(node: ast.stmt, student_names: set[str], in_class: bool = False) -> str | None:
    """None if `node` only defines; else why it is dropped."""
    if isinstance(node, ast.Import):
        return None
    if isinstance(node, ast.ImportFrom):
        return "a relative import" if node.level else None
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if in_class and node.name in IMPLICIT_HOOKS:
            return f"{node.name} is called by Python on its own"
        if not all(_decorator_ok(d, student_names) for d in node.decorator_list):
            return "a decorator that is not a plain wrapper (staticmethod, functools.cache, torch.no_grad ...)"
        if not _signature_ok(node):
            return "default values or annotations that are not constants"
        return None
    if isinstance(node, ast.ClassDef):
        if node.keywords or not all(_dotted(b) for b in node.bases):
            return "class bases or keywords that are not plain names"
        if not all(_decorator_ok(d, student_names) for d in node.decorator_list):
            return "a class decorator that is not a plain wrapper"
        for inner in node.body:
            why = _why_not(inner, student_names, in_class=True)
            if why:
                return f"its body: {why}"
        return None
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not all(isinstance(t, ast.Name) for t in targets):
            return "an assignment to something other than a name"
        annotation_ok = is_constant(node.annotation) if isinstance(node, ast.AnnAssign) else True
        return None if is_constant(node.value) and annotation_ok else "an assignment of a value that must be computed"
    if isinstance(node, ast.Pass) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
        return None
    return "a statement that runs code"


def _bound_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def definitions_only(source: str, student_names: set[str] | None = None) -> tuple[str, list[str]]:
    """(`source` with only its definitions, ["line 3: print(x) (a statement that runs code)", ...]).

    `student_names` are the names every student cell of the notebook binds (see
    :func:`names_bound`): a decorator by one of those names is the student's own
    function, which would run at definition time. A cell that does not parse is
    returned unchanged (it fails when run, as written).
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source, []
    student_names = student_names if student_names is not None else _bound_names(tree)
    lines = source.splitlines(keepends=True)
    dropped: list[str] = []
    drop_lines: set[int] = set()
    kept_lines: set[int] = set()
    for node in tree.body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        span = set(range(start, (node.end_lineno or node.lineno) + 1))
        why = _why_not(node, student_names)
        if why is None:
            kept_lines |= span
            continue
        text = ast.get_source_segment(source, node) or ""
        first = text.strip().splitlines()[0] if text.strip() else type(node).__name__
        dropped.append(f"line {start}: {first[:80]} ({why})")
        drop_lines |= span
    if not dropped:
        return source, []
    if drop_lines & kept_lines:  # statements sharing a line (`import os; os.system(...)`): rebuild
        kept = [n for n in tree.body if _why_not(n, student_names) is None]
        return ast.unparse(ast.Module(body=kept, type_ignores=[])) + "\n", dropped
    out = ["\n" if i + 1 in drop_lines else line for i, line in enumerate(lines)]
    return "".join(out), dropped


def names_bound(sources: list[str]) -> set[str]:
    """Every top-level name the given cells bind (defs, classes, imports, assignments)."""
    names: set[str] = set()
    for source in sources:
        try:
            names |= _bound_names(ast.parse(source))
        except SyntaxError:
            continue
    return names
