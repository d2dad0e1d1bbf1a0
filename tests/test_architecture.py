"""The module layering: no import circle, only main.py imports the training loop, and nothing
below experiment.py reads a config (static checks of the source, no imports)."""

from __future__ import annotations

import ast
import io
import pathlib
import tokenize

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "msc_seg"

# Modules that receive built objects and must not read a config.
CONFIG_FREE = [
    "losses",
    "models",
    "metrics.py",
    "inference.py",
    "data/transforms.py",
    "evaluate.py",
    "predict.py",
    "train_step.py",
    "train_state.py",
    "mesh.py",
    "optim.py",
    "visualize.py",
    "embedding_views.py",
]


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: pathlib.Path, *, top_level_only: bool) -> set[str]:
    """msc_seg modules `path` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("msc_seg")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("msc_seg"):
                continue
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
            # `from package import submodule` needs the submodule (the package is already
            # initialising when a sibling asks for it); `from module import name`, the module.
            found |= submodules or {node.module}
    return {m for m in found if m in modules}


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_level_import_circle():
    graph = {m: imports_of(p, top_level_only=True) for m, p in all_modules().items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, m, n]))
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_only_main_imports_the_training_loop():
    importers = sorted(
        m
        for m, p in all_modules().items()
        if "msc_seg.train" in imports_of(p, top_level_only=False) and m != "msc_seg.train"
    )
    assert importers == ["msc_seg.main"]


def config_reads(path: pathlib.Path) -> list[str]:
    """'file:line: code' of every `ConfigDict`, `config_lib`, `experiment` or `config.<field>`
    in the code of `path` (strings and comments are not code)."""
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        if t.type not in (tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.NEWLINE)
    ]
    hits = []
    for t, nxt in zip(tokens, tokens[1:], strict=False):
        if t.type != tokenize.NAME:
            continue
        if t.string in ("ConfigDict", "config_lib", "experiment") or (
            t.string == "config" and nxt.string == "."
        ):
            hits.append(f"{path.relative_to(PACKAGE)}:{t.start[0]}: {t.line.strip()}")
    return hits


def test_modules_below_experiment_read_no_config():
    offenders = []
    for entry in CONFIG_FREE:
        root = PACKAGE / entry
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            offenders += config_reads(path)
    assert not offenders, "\n".join(offenders)


def test_nothing_below_experiment_imports_it():
    below = [m for m in all_modules() if not m.startswith(("msc_seg.main", "msc_seg.train"))]
    users = sorted(
        m
        for m in below
        if m not in ("msc_seg.experiment", "msc_seg.modes")
        and "msc_seg.experiment" in imports_of(all_modules()[m], top_level_only=False)
    )
    assert users == []
