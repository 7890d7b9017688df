"""Copies in a graded class: every graded function compared with the reference and with each other.

For every graded function (a solution cell, whose nbgrader grade id is the
function's name), every student's version is compared with

- the reference: the solution cell of ``solutions/<assignment>/*.ipynb``, and every
  function or method of the same name in the ``llm_course`` package (what the
  book prints with ``literalinclude``);
- every other student's version of the same function.

The comparison is MOSS-style winnowing (``copydetect``, Schleimer, Wilkerson and
Aiken 2003) on an AST-normalised text of each version:

1. :func:`normalise` parses the code, drops docstrings, and puts every run of
   independent simple statements (assignments, expression statements, imports)
   in one canonical order, then writes it back with ``ast.unparse``: comments,
   blank lines, line breaks, quotes and parentheses, docstrings and the order of
   independent statements no longer matter;
2. copydetect tokenises that text with Pygments and replaces every identifier by
   ``V`` (a function name by ``F``, a string by ``S``): renaming variables no
   longer matters;
3. the k-grams of that token text are hashed and winnowed; the share of one
   version's fingerprinted tokens that also appear in the other is its
   similarity. The exercise's own stub (the signature the student is given) is
   boilerplate: its fingerprints never count.

A pair is listed when its similarity (the larger of the two shares) reaches
:data:`THRESHOLD` and the matched text is at least :data:`MIN_MATCH` tokens long.
Both values come from measurements on planted copies and independent correct
solutions (``tests/test_similarity.py``). Functions whose reference is shorter
than :data:`MIN_TOKENS` tokens (``causal_mask`` is one line: every correct answer
looks alike) are not compared, and the report says so.

The report shows each pair's two versions side by side, original text, with the
matched lines marked: the evidence an instructor reads before deciding anything.
A high similarity is a reason to look, never a verdict.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from itertools import combinations
from pathlib import Path

import numpy as np

#: k-gram length (in filtered tokens: one character per identifier) and winnowing window.
#: copydetect's defaults (noise 25, guarantee 30) are made for whole files; graded functions
#: are 2 to 20 lines, so shorter k-grams: any match of GUARANTEE tokens is always found.
K = 12
GUARANTEE = 16
#: Listed from this similarity on. Measured (tests/test_similarity.py): every disguised copy of every
#: reference scores 1.00; independent correct solutions of nine exercises score at most 0.76 against
#: each other and the reference (median 0.10). 0.9 keeps a margin on both sides: a copy edited here
#: and there still shows, two honest textbook answers do not.
THRESHOLD = 0.9
#: ... when the matched text is at least this many tokens long (a copy of the shortest compared
#: function matches 39).
MIN_MATCH = 30
#: Functions whose reference is shorter than this (in tokens) are not compared: one- and two-line
#: bodies (causal_mask, sgd_step, merge_weight, pairwise_loss, one_hot_embedding: 29 to 43 tokens)
#: leave no room for two correct answers to differ.
MIN_TOKENS = 45

SOLUTION_MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)
STUB = re.compile(r"^[ \t]*(# YOUR CODE HERE|raise NotImplementedError\(\))[ \t]*$", re.MULTILINE)


# --------------------------------------------------------------------------- normalisation
def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _names(node: ast.AST) -> tuple[set[str], set[str]]:
    """(names a statement uses, names it may change): assignment targets, and the
    objects whose methods it calls or whose items/attributes it sets (``out.append``)."""
    used, changed = set(), set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            used.add(sub.id)
            if isinstance(sub.ctx, (ast.Store, ast.Del)):
                changed.add(sub.id)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            changed |= {(a.asname or a.name).split(".")[0] for a in sub.names}
        base = None
        if isinstance(sub, (ast.Attribute, ast.Subscript)) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            base = sub.value
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            base = sub.func.value
        while isinstance(base, (ast.Attribute, ast.Subscript)):
            base = base.value
        if isinstance(base, ast.Name):
            changed.add(base.id)
    return used, changed


SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Import, ast.ImportFrom, ast.Pass)


def _canonical_run(stmts: list[ast.stmt]) -> list[ast.stmt]:
    """The same statements, independent ones in one canonical order (a topological
    order of 'must stay before', smallest normalised text first)."""
    info = [_names(s) for s in stmts]
    keys = [_shape(s) for s in stmts]
    before = {j: {i for i in range(j) if info[i][1] & info[j][0] or info[j][1] & info[i][0]} for j in range(len(stmts))}
    order, left = [], set(range(len(stmts)))
    while left:
        ready = [j for j in left if not (before[j] & left)]
        pick = min(ready, key=lambda j: (keys[j], j))
        order.append(pick)
        left.remove(pick)
    return [stmts[j] for j in order]


def _shape(node: ast.AST) -> str:
    """The statement's syntax tree with every identifier blanked: a name-blind sort key."""
    node = copy.deepcopy(node)
    for sub in ast.walk(node):
        for attr in ("id", "attr", "arg"):
            if isinstance(getattr(sub, attr, None), str):
                setattr(sub, attr, "_")
    return ast.dump(node, annotate_fields=False)


class _Canonical(ast.NodeTransformer):
    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            kept = [s for s in body if not _is_docstring(s)] or [ast.Pass()]
            out, run = [], []
            for stmt in kept + [None]:
                if isinstance(stmt, SIMPLE):
                    run.append(stmt)
                    continue
                out += _canonical_run(run) if len(run) > 1 else run
                run = []
                if stmt is not None:
                    out.append(stmt)
            setattr(node, name, out)
        return node


@lru_cache(maxsize=4096)
def normalise(source: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """(normalised text, for each of its lines the (first, last) original line it comes from).

    Code that does not parse (or nests too deep to walk) is compared as written (lines map to themselves)."""
    try:
        return _normalise(source)
    except (SyntaxError, ValueError, RecursionError):
        lines = source.splitlines()
        return source, tuple((i, i) for i in range(1, len(lines) + 1))


def _normalise(source: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    canonical = _Canonical().visit(ast.parse(source))
    text = ast.unparse(canonical)
    n_lines = len(text.splitlines())
    origin = [(0, 0)] * n_lines
    # Walk the written-back tree beside the canonical one (same shape): each statement's new
    # lines come from its original lines. Inner statements come later and override.
    reparsed = ast.parse(text)
    for new, old in zip(ast.walk(reparsed), ast.walk(canonical)):
        if not isinstance(new, ast.stmt) or not hasattr(old, "lineno"):
            continue
        span_old = (old.lineno, old.end_lineno or old.lineno)
        for offset, line in enumerate(range(new.lineno, (new.end_lineno or new.lineno) + 1)):
            first = min(span_old[0] + offset, span_old[1])
            origin[line - 1] = (first, first if line < (new.end_lineno or new.lineno) else span_old[1])
    return text, tuple(origin)


# --------------------------------------------------------------------------- fingerprints
@dataclass
class Version:
    """One version of a graded function: a student's, or a reference."""

    owner: str  # student id, or "reference: ..." for a reference
    assignment: str
    function: str
    source: str
    is_reference: bool = False
    text: str = field(init=False, repr=False)
    origin: tuple = field(init=False, repr=False)  # see normalise
    fingerprint: object = field(init=False, repr=False)

    def prepare(self, boilerplate: np.ndarray) -> "Version":
        self.text, self.origin = normalise(self.source)
        self.fingerprint = Fingerprint(self.text, boilerplate)
        return self

    @property
    def tokens(self) -> int:
        return len(self.fingerprint.filtered_code)


class Fingerprint:
    """copydetect's ``CodeFingerprint`` of a text, with a hash that is the same in every run.

    copydetect hashes k-grams with Python's ``hash``, salted per process: winnowing
    would then keep other fingerprints at each run and the similarities would move by
    a few hundredths. Here the k-grams are hashed with BLAKE2b; the rest (Pygments
    filtering, winnowing, boilerplate, overlap, coverage) is copydetect's own code,
    and :func:`copydetect.compare_files` compares two of these."""

    def __init__(self, text: str, boilerplate: np.ndarray | None = None):
        from copydetect import utils

        self.k = K
        self.raw_code = text
        self.filtered_code, self.offsets = _filter(text)
        hashes = np.array([_stable_hash(self.filtered_code[i:i + K]) for i in range(len(self.filtered_code) - K + 1)], dtype=np.int64)
        selected, idx = utils.winnow(hashes, GUARANTEE - K + 1, remove_duplicates=False) if len(hashes) else (hashes, np.array([], dtype=int))
        if boilerplate is not None and len(boilerplate) and len(selected):
            keep = ~np.isin(selected, boilerplate)
            selected, idx = selected[keep], idx[keep]
        self.hashes = set(selected.tolist())
        self.hash_idx: dict = {}
        for value, i in zip(selected.tolist(), idx.tolist()):
            self.hash_idx.setdefault(value, []).append(i)
        self.token_coverage = utils.get_token_coverage(self.hash_idx, K, len(self.filtered_code))


@lru_cache(maxsize=4096)
def _filter(text: str) -> tuple[str, np.ndarray]:
    from copydetect import utils

    return utils.filter_code(text, "code.py", "python")


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def boilerplate_of(stub: str | None) -> np.ndarray:
    """The k-gram hashes of the code every student is given (the stub of the exercise cell): all of them."""
    if not stub:
        return np.array([], dtype=np.int64)
    filtered = Fingerprint(normalise(stub)[0]).filtered_code
    return np.array([_stable_hash(filtered[i:i + K]) for i in range(len(filtered) - K + 1)], dtype=np.int64)


@dataclass
class Pair:
    a: Version
    b: Version
    similarity: float  # the larger of the two shares
    shares: tuple[float, float]  # of a's, of b's fingerprinted tokens found in the other
    matched_tokens: int
    lines_a: list[int]  # original lines of a that match
    lines_b: list[int]

    @property
    def listed(self) -> bool:
        return self.similarity >= THRESHOLD and self.matched_tokens >= MIN_MATCH

    def as_json(self) -> dict:
        return {
            "assignment": self.a.assignment,
            "function": self.a.function,
            "a": self.a.owner,
            "b": self.b.owner,
            "b_is_reference": self.b.is_reference,
            "similarity": round(self.similarity, 3),
            "shares": [round(s, 3) for s in self.shares],
            "matched_tokens": self.matched_tokens,
            "lines_a": self.lines_a,
            "lines_b": self.lines_b,
        }


def _matched_lines(version: Version, slices: np.ndarray) -> list[int]:
    """Original line numbers covered by copydetect's matched character slices of the normalised text."""
    starts = np.cumsum([0] + [len(line) + 1 for line in version.text.splitlines()])
    lines: set[int] = set()
    for start, end in zip(*slices):
        first = int(np.searchsorted(starts, start, side="right")) - 1
        last = int(np.searchsorted(starts, max(end - 1, start), side="right")) - 1
        for i in range(first, min(last, len(version.origin) - 1) + 1):
            lo, hi = version.origin[i]
            lines.update(range(lo, hi + 1))
    lines.discard(0)
    return sorted(lines)


def compare(a: Version, b: Version, cache: dict | None = None) -> Pair:
    """The similarity of two versions. `cache` (normalised texts -> copydetect's result) saves the
    work for versions that normalise alike, common in a class."""
    from copydetect import compare_files

    key = (a.text, b.text)
    if cache is None or key not in cache:
        result = compare_files(a.fingerprint, b.fingerprint)
        if cache is None:
            cache = {}
        cache[key] = result
    overlap, shares, slices = cache[key]
    if not overlap:
        return Pair(a, b, 0.0, (0.0, 0.0), 0, [], [])
    shares = (min(float(shares[0]), 1.0), min(float(shares[1]), 1.0))
    return Pair(a, b, max(shares), shares, int(overlap), _matched_lines(a, slices[0]), _matched_lines(b, slices[1]))


def long_enough(source: str) -> bool:
    """Whether a function is compared at all (its reference has at least MIN_TOKENS tokens)."""
    return len(Fingerprint(normalise(source)[0]).filtered_code) >= MIN_TOKENS


def similarity(source_a: str, source_b: str, stub: str | None = None) -> Pair:
    """Compare two versions of one function (the building block, also for the tests)."""
    plate = boilerplate_of(stub)
    return compare(Version("a", "", "", source_a).prepare(plate), Version("b", "", "", source_b).prepare(plate))


# --------------------------------------------------------------------------- a class
def _solution_cells(path: Path) -> dict[str, str]:
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - not a notebook: reported as ungraded elsewhere
        return {}
    return {
        c.metadata["nbgrader"]["grade_id"]: SOLUTION_MARKERS.sub("", c.source)
        for c in nb.cells
        if c.cell_type == "code" and c.get("metadata", {}).get("nbgrader", {}).get("solution")
        and c.metadata["nbgrader"].get("grade_id")
    }


def package_references(function: str) -> list[tuple[str, str]]:
    """('llm_course.module.[Class.]name', source) of every function or method `function` in llm_course
    (the reference code the book prints), read from the files, without importing the package."""
    spec = find_spec("llm_course")
    if spec is None or not spec.origin:
        return []
    found = []
    root = Path(spec.origin).parent
    for path in sorted(root.glob("*.py")):
        source = path.read_text()
        if function not in source:
            continue
        tree = ast.parse(source)
        for node in tree.body:
            candidates = [(node, node.name)] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
            if isinstance(node, ast.ClassDef):
                candidates = [(m, f"{node.name}.{m.name}") for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for fn, qualname in candidates:
                if fn.name == function:
                    found.append((f"llm_course.{path.stem}.{qualname}", ast.get_source_segment(source, fn)))
    return found


def collect(course: Path, assignments: list[str]) -> dict[tuple[str, str], dict]:
    """(assignment, function) -> {"students": [Version], "references": [Version], "stub": str}."""
    course = Path(course)
    out: dict = {}
    for name in assignments:
        stubs: dict[str, str] = {}
        for path in sorted((course / "exercises" / name).glob("*.ipynb")):
            stubs.update(_solution_cells(path))
        for path in sorted((course / "solutions" / name).glob("*.ipynb")):
            for fn, source in _solution_cells(path).items():
                entry = out.setdefault((name, fn), {"students": [], "references": [], "stub": stubs.get(fn)})
                entry["references"].append(Version(f"reference: solutions/{name}", name, fn, source, True))
        for (assignment, fn), entry in list(out.items()):
            if assignment != name:
                continue
            for qualname, source in package_references(fn):
                entry["references"].append(Version(f"reference: {qualname}", name, fn, source, True))
        for path in sorted((course / "submitted").glob(f"*/{name}/*.ipynb")):
            student = path.parts[-3]
            for fn, source in _solution_cells(path).items():
                if (name, fn) in out and STUB.sub("", source).strip() != STUB.sub("", out[(name, fn)]["stub"] or "").strip():
                    out[(name, fn)]["students"].append(Version(student, name, fn, source))
    return out


def find_copies(versions: dict[tuple[str, str], dict]) -> dict:
    """Compare every pair; returns {"pairs": [Pair listed], "compared": n, "skipped": [(assignment, fn, tokens)], "all": [Pair]}."""
    listed, everything, skipped, compared = [], [], [], 0
    for (assignment, fn), entry in versions.items():
        plate = boilerplate_of(entry["stub"])
        refs = [v.prepare(plate) for v in entry["references"]]
        students = [v.prepare(plate) for v in entry["students"]]
        size = min((r.tokens for r in refs), default=0)  # the shortest reference: the solution cell
        if size < MIN_TOKENS:
            skipped.append((assignment, fn, size))
            continue
        pairs = [(s, r) for s in students for r in refs] + list(combinations(students, 2))
        cache: dict = {}
        for a, b in pairs:
            pair = compare(a, b, cache)
            compared += 1
            everything.append(pair)
            if pair.listed:
                listed.append(pair)
    # One line per (student, function) for the reference: its best-matching reference.
    best: dict = {}
    for p in listed:
        key = (p.a.assignment, p.a.function, p.a.owner, p.b.owner if not p.b.is_reference else "reference")
        if key not in best or p.similarity > best[key].similarity:
            best[key] = p
    listed = sorted(best.values(), key=lambda p: (p.a.assignment, p.a.function, not p.b.is_reference, -p.similarity, p.a.owner))
    return {"pairs": listed, "compared": compared, "skipped": skipped, "all": everything}


# --------------------------------------------------------------------------- the report
def side_by_side(pair: Pair, width: int = 58, max_lines: int = 40) -> list[str]:
    """The two versions in two columns; '>' marks the lines that match."""
    left, right = pair.a.source.splitlines(), pair.b.source.splitlines()
    marks_a, marks_b = set(pair.lines_a), set(pair.lines_b)

    def cell(lines: list[str], marks: set[int], i: int) -> str:
        if i >= len(lines):
            return " " * (width + 2)
        text = lines[i].replace("\t", "    ")
        text = text if len(text) <= width else text[: width - 1] + "…"
        return f"{'>' if i + 1 in marks else ' '} {text:<{width}}"

    rows = [f"  {pair.a.owner[:width]:<{width}} |   {pair.b.owner[:width]}"]
    rows += [f"{cell(left, marks_a, i)} | {cell(right, marks_b, i)}".rstrip() for i in range(min(max(len(left), len(right)), max_lines))]
    return ["```text", *rows, "```"]


def groups(pairs: list[Pair]) -> list[dict]:
    """Listed pairs joined into groups of versions that share code, per function (every reference
    counts as one member, "reference"): {"assignment", "function", "members", "evidence": [Pair]}.
    Each member but the first gets one piece of evidence: its most similar pair inside the group,
    with the reference when it has one."""
    def node(v: Version) -> str:
        return "reference" if v.is_reference else v.owner

    by_function: dict = {}
    for p in pairs:
        by_function.setdefault((p.a.assignment, p.a.function), []).append(p)
    out = []
    for (assignment, function), found in sorted(by_function.items()):
        parent: dict = {}

        def root(x: str) -> str:
            while parent.setdefault(x, x) != x:
                x = parent[x]
            return x

        for p in found:
            parent[root(node(p.a))] = root(node(p.b))
        members: dict = {}
        for x in list(parent):
            members.setdefault(root(x), set()).add(x)
        for group in members.values():
            names = sorted(group, key=lambda m: (m != "reference", m))
            evidence = []
            for member in names[1:]:
                own = [p for p in found if member in (node(p.a), node(p.b)) and {node(p.a), node(p.b)} <= group]
                evidence.append(max(own, key=lambda p: ("reference" in (node(p.a), node(p.b)), p.similarity)))
            out.append({"assignment": assignment, "function": function, "members": names, "evidence": evidence})
    return out


#: At most this many side-by-side views per group in report.md (similarity.json has every pair).
EVIDENCE_PER_GROUP = 3


def report_section(course: Path, assignments: list[str], out: Path) -> list[str]:
    """The markdown section of report.md; writes out/similarity.json."""
    result = find_copies(collect(course, assignments))
    pairs = result["pairs"]
    found = groups(pairs)
    (Path(out) / "similarity.json").write_text(json.dumps({
        "method": f"copydetect winnowing (k={K}, window={GUARANTEE - K + 1}) on AST-normalised code",
        "threshold": THRESHOLD, "min_match_tokens": MIN_MATCH, "min_reference_tokens": MIN_TOKENS,
        "pairs_compared": result["compared"],
        "not_compared": [{"assignment": a, "function": f, "reference_tokens": n} for a, f, n in result["skipped"]],
        "pairs": [p.as_json() for p in pairs],
        "groups": [{k: g[k] for k in ("assignment", "function", "members")} for g in found],
    }, indent=1))
    lines = ["", "## Similar code (possible copies)", "",
             f"Every graded function compared with the reference (the solution notebook and the `llm_course` code "
             f"the book prints) and with every other student's version: {result['compared']} pairs, "
             f"{len(pairs)} at or above a similarity of {THRESHOLD:.2f}, in {len(found)} groups (every pair: "
             "`similarity.json`). Renamed variables, comments, docstrings, layout and the order of independent "
             "statements do not count. A similar pair is a reason to read the code, not a verdict: below, `>` marks "
             "the matching lines."]
    if result["skipped"]:
        lines += ["", "Too short to tell copies from independent answers (not compared): "
                  + ", ".join(f"`{a}/{f}`" for a, f, _ in result["skipped"]) + "."]
    if not pairs:
        return lines + ["", "none"]
    lines += ["", "| assignment | function | versions that share code | similarity |", "|---|---|---|---|"]
    for g in found:
        low, high = (f"{f(p.similarity for p in g['evidence']):.2f}" for f in (min, max))
        lines.append(f"| {g['assignment']} | {g['function']} | {', '.join(g['members'])} | "
                     f"{low}{'' if low == high else f' to {high}'} |")
    for g in found:
        for p in g["evidence"][:EVIDENCE_PER_GROUP]:
            lines += ["", f"### {p.a.assignment} / `{p.a.function}`: {p.a.owner} and {p.b.owner} ({p.similarity:.2f})", ""]
            lines += side_by_side(p)
        if len(g["evidence"]) > EVIDENCE_PER_GROUP:
            lines += ["", f"... and {len(g['evidence']) - EVIDENCE_PER_GROUP} more in this group (`similarity.json`)."]
    return lines
