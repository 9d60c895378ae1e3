"""Offline corpora that every Python install carries, for the ``gradus train`` demo and for tests.

* ``python-docs`` — prose: the interpreter's own help topics (``pydoc_data.topics``) and the docstrings
  of the standard library's modules, classes and functions (read with :mod:`ast`, never imported:
  importing every stdlib module has side effects, ``antigravity`` opens a browser).
* ``python-stdlib`` — code: the standard library's ``.py`` files (``sysconfig`` paths), test suites left out.
* ``arithmetic`` — math: generated GSM8K-style word problems with worked answers (``<<a*b=c>>``
  annotations and a ``#### answer`` line). Problem ``i`` is a pure function of ``i``, so the corpus is
  the same on every machine and any position can be reopened in O(1).

Each corpus is a list of records addressed by index; :class:`gradus.data.sources.BuiltinReader` reads it.
"""

from __future__ import annotations

import ast
import functools
import random
import sysconfig
from pathlib import Path

ARITHMETIC_PROBLEMS = 50_000
"""Documents in the ``arithmetic`` corpus (about 8 MB of text)."""

_ARITHMETIC_SEED = "gradus-arithmetic-v1"
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_dir() -> Path:
    """The folder holding the standard library's ``.py`` files."""
    return Path(sysconfig.get_paths()["stdlib"])


@functools.cache
def stdlib_files() -> tuple[Path, ...]:
    """The standard library's source files, sorted, without test suites and installed packages."""
    root = stdlib_dir()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if any(part in _SKIP_DIRS for part in rel[:-1]):
            continue
        files.append(path)
    return tuple(sorted(files, key=lambda p: p.relative_to(root).as_posix()))


def _signature(node: ast.AST) -> str:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        try:
            return f"({ast.unparse(node.args)})"
        except Exception:  # noqa: BLE001 - a signature is decoration; never fail the corpus on it
            return "()"
    return ""


def _module_doc(path: Path) -> str | None:
    """One document per module: its docstring and those of its public classes, functions and methods."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None
    module = path.relative_to(stdlib_dir()).with_suffix("").as_posix().replace("/", ".")
    module = module.removesuffix(".__init__")
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(doc)
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if doc:
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            parts.append(f"{kind} {module}.{node.name}{_signature(node)}\n{doc}")
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                    sdoc = ast.get_docstring(sub)
                    if sdoc:
                        parts.append(f"method {module}.{node.name}.{sub.name}{_signature(sub)}\n{sdoc}")
    if not parts:
        return None
    return f"Module {module}\n\n" + "\n\n".join(parts) + "\n"


@functools.cache
def python_docs() -> tuple[str, ...]:
    """The ``python-docs`` corpus: help topics first (sorted by name), then one document per module."""
    docs: list[str] = []
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a stripped-down interpreter; the docstrings are still there
        topics = {}
    for name in sorted(topics):
        docs.append(f"{name}\n\n{topics[name].strip()}\n")
    for path in stdlib_files():
        doc = _module_doc(path)
        if doc:
            docs.append(doc)
    return tuple(docs)


# --------------------------------------------------------------------------------------- arithmetic
_PEOPLE = [
    ("Ava", "she", "her"), ("Ben", "he", "his"), ("Carla", "she", "her"), ("Diego", "he", "his"),
    ("Emma", "she", "her"), ("Farid", "he", "his"), ("Grace", "she", "her"), ("Hiro", "he", "his"),
    ("Ines", "she", "her"), ("Jamal", "he", "his"), ("Keiko", "she", "her"), ("Liam", "he", "his"),
    ("Maya", "she", "her"), ("Noah", "he", "his"), ("Olga", "she", "her"), ("Pedro", "he", "his"),
    ("Rosa", "she", "her"), ("Umar", "he", "his"), ("Vera", "she", "her"), ("Yusuf", "he", "his"),
]
_NAMES = [p[0] for p in _PEOPLE]
_PRONOUNS = {name: (he, his) for name, he, his in _PEOPLE}
_ITEMS = [
    ("notebook", "notebooks"), ("pencil", "pencils"), ("apple", "apples"), ("ticket", "tickets"),
    ("book", "books"), ("plant", "plants"), ("candle", "candles"), ("mug", "mugs"), ("kite", "kites"),
]
_THINGS = ["stickers", "marbles", "stamps", "shells", "cards", "coins", "buttons", "beads"]
_FOODS = ["cookies", "muffins", "cupcakes", "pretzels", "dumplings", "tarts"]
_VEHICLES = ["train", "bus", "truck", "car", "ferry", "cyclist"]


def _calc(a: int, op: str, b: int) -> tuple[str, int]:
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return f"{a} {op} {b} = <<{a}{op}{b}={value}>>{value}", value


def _shopping(r: random.Random) -> tuple[str, str]:
    name = r.choice(_NAMES)
    he, _ = _PRONOUNS[name]
    one, many = r.choice(_ITEMS)
    q, price = r.randint(2, 12), r.randint(2, 25)
    line1, cost = _calc(q, "*", price)
    bill = next(b for b in (20, 50, 100, 200, 500) if b > cost)
    line2, change = _calc(bill, "-", cost)
    question = (
        f"{name} buys {q} {many} at ${price} per {one} and pays with a ${bill} bill. "
        f"How much change does {he} get?"
    )
    answer = f"The {many} cost {line1} dollars.\nThe change is {line2} dollars.\n#### {change}"
    return question, answer


def _collection(r: random.Random) -> tuple[str, str]:
    name = r.choice(_NAMES)
    he, his = _PRONOUNS[name]
    thing = r.choice(_THINGS)
    start, per_day, days = r.randint(5, 60), r.randint(2, 15), r.randint(2, 9)
    line1, gained = _calc(per_day, "*", days)
    line2, total = _calc(start, "+", gained)
    give = r.randint(1, total - 1)
    line3, left = _calc(total, "-", give)
    question = (
        f"{name} has {start} {thing}. {he.capitalize()} gets {per_day} more every day for {days} days, "
        f"then gives {give} of them to a friend. How many {thing} does {name} have now?"
    )
    answer = (
        f"In {days} days {he} gets {line1} {thing}.\nThen {he} has {line2} {thing}.\n"
        f"After giving some away, {his} collection is {line3} {thing}.\n#### {left}"
    )
    return question, answer


def _travel(r: random.Random) -> tuple[str, str]:
    vehicle = r.choice(_VEHICLES)
    v1, t1, v2, t2 = r.randint(10, 80), r.randint(1, 6), r.randint(10, 80), r.randint(1, 6)
    line1, d1 = _calc(v1, "*", t1)
    line2, d2 = _calc(v2, "*", t2)
    line3, total = _calc(d1, "+", d2)
    question = (
        f"A {vehicle} travels at {v1} miles per hour for {t1} hours, then at {v2} miles per hour for "
        f"{t2} hours. How many miles does it travel in total?"
    )
    answer = (
        f"First it travels {line1} miles.\nThen it travels {line2} miles.\n"
        f"In total it travels {line3} miles.\n#### {total}"
    )
    return question, answer


def _sharing(r: random.Random) -> tuple[str, str]:
    name = r.choice(_NAMES)
    he, _ = _PRONOUNS[name]
    food = r.choice(_FOODS)
    friends, each, kept = r.randint(2, 9), r.randint(2, 12), r.randint(1, 10)
    total = friends * each + kept
    line1, shared = _calc(total, "-", kept)
    line2, per = _calc(shared, "/", friends)
    question = (
        f"{name} bakes {total} {food}. {he.capitalize()} keeps {kept} and shares the rest equally among "
        f"{friends} friends. How many {food} does each friend get?"
    )
    answer = f"{he.capitalize()} shares {line1} {food}.\nEach friend gets {line2} {food}.\n#### {per}"
    return question, answer


def _discount(r: random.Random) -> tuple[str, str]:
    one, _ = r.choice(_ITEMS)
    pct = r.choice([10, 20, 25, 50])
    price = r.randint(1, 40) * {10: 10, 20: 5, 25: 4, 50: 2}[pct]  # so the discount is whole dollars
    line1, off = _calc(price * pct, "/", 100)
    line2, final = _calc(price, "-", off)
    question = f"A {one} costs ${price}. It is on sale for {pct}% off. How much does it cost on sale?"
    answer = (
        f"The discount is {pct}% of {price}, which is {line1} dollars.\n"
        f"The sale price is {line2} dollars.\n#### {final}"
    )
    return question, answer


def _ages(r: random.Random) -> tuple[str, str]:
    name = r.choice(_NAMES)
    _, his = _PRONOUNS[name]
    age, k, years = r.randint(3, 15), r.randint(2, 4), r.randint(2, 20)
    line1, other = _calc(age, "*", k)
    line2, a1 = _calc(age, "+", years)
    line3, a2 = _calc(other, "+", years)
    line4, total = _calc(a1, "+", a2)
    question = (
        f"{name} is {age} years old. {his.capitalize()} aunt is {k} times as old. "
        f"In {years} years, what will the sum of their ages be?"
    )
    answer = (
        f"The aunt is {line1} years old.\nIn {years} years {name} will be {line2}.\n"
        f"The aunt will be {line3}.\nTogether that is {line4} years.\n#### {total}"
    )
    return question, answer


def _fence(r: random.Random) -> tuple[str, str]:
    w, length, cost = r.randint(3, 40), r.randint(3, 60), r.randint(2, 15)
    line1, half = _calc(w, "+", length)
    line2, perimeter = _calc(2, "*", half)
    line3, total = _calc(perimeter, "*", cost)
    question = (
        f"A garden is {w} meters wide and {length} meters long. Fencing costs ${cost} per meter. "
        f"How much does it cost to fence the whole garden?"
    )
    answer = (
        f"Half the perimeter is {line1} meters.\nThe perimeter is {line2} meters.\n"
        f"The fence costs {line3} dollars.\n#### {total}"
    )
    return question, answer


def _wages(r: random.Random) -> tuple[str, str]:
    name = r.choice(_NAMES)
    he, _ = _PRONOUNS[name]
    rate, hours, days, weeks = r.randint(8, 40), r.randint(2, 9), r.randint(2, 6), r.randint(2, 5)
    line1, per_day = _calc(rate, "*", hours)
    line2, per_week = _calc(per_day, "*", days)
    line3, total = _calc(per_week, "*", weeks)
    question = (
        f"{name} earns ${rate} an hour. {he.capitalize()} works {hours} hours a day, {days} days a week. "
        f"How much does {he} earn in {weeks} weeks?"
    )
    answer = (
        f"Each day {he} earns {line1} dollars.\nEach week {he} earns {line2} dollars.\n"
        f"In {weeks} weeks {he} earns {line3} dollars.\n#### {total}"
    )
    return question, answer


_TEMPLATES = (_shopping, _collection, _travel, _sharing, _discount, _ages, _fence, _wages)


def arithmetic_problem(index: int) -> str:
    """Problem ``index`` of the ``arithmetic`` corpus: question, worked answer, ``#### result``."""
    # Seeding with a string goes through SHA-512, so the corpus does not depend on PYTHONHASHSEED.
    r = random.Random(f"{_ARITHMETIC_SEED}:{index}")
    question, answer = _TEMPLATES[r.randrange(len(_TEMPLATES))](r)
    return f"{question}\n{answer}\n"


def builtin_size(kind: str) -> int:
    """Records in a builtin corpus."""
    if kind == "python-docs":
        return len(python_docs())
    if kind == "python-stdlib":
        return len(stdlib_files())
    if kind == "arithmetic":
        return ARITHMETIC_PROBLEMS
    raise ValueError(f"unknown builtin corpus {kind!r}")


def builtin_record(kind: str, index: int) -> str | bytes:
    """Record ``index`` of a builtin corpus: text, or raw bytes for source files (decoded by the reader,
    which replaces and counts invalid UTF-8)."""
    if kind == "python-docs":
        return python_docs()[index]
    if kind == "python-stdlib":
        return stdlib_files()[index].read_bytes()
    if kind == "arithmetic":
        return arithmetic_problem(index)
    raise ValueError(f"unknown builtin corpus {kind!r}")


def builtin_origin(kind: str) -> str:
    """Where a builtin corpus comes from, for messages."""
    if kind == "arithmetic":
        return f"generated arithmetic word problems ({ARITHMETIC_PROBLEMS} documents)"
    if kind == "python-stdlib":
        return f"Python standard library sources in {stdlib_dir()}"
    return f"Python help topics and standard-library docstrings ({stdlib_dir()})"
