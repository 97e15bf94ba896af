"""The package's import graph: no cycles; distillation never imports training.

Read from the source with `ast` (every import statement, function-level
ones included), so a cycle hidden by a local import is found too.
"""
import ast
import pathlib

import pytest

PACKAGE = "mtkd_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def module_names(root=ROOT):
  """{dotted module name: path} of every .py file of the package."""
  out = {}
  for path in root.rglob("*.py"):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _resolve(name, modules):
  """`name` if it is a module of the package, else None."""
  return name if name in modules else None


def imports_of(module, path, modules):
  """The package modules that `module` imports anywhere in its source.

  `from a.b import c` counts as importing a.b.c when that is a module, else
  a.b; relative imports are resolved against the module's package.
  """
  is_package = path.name == "__init__.py"
  package = module if is_package else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        found.add(_resolve(alias.name, modules))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:
        found.add(_resolve(f"{base}.{alias.name}", modules) or
                  _resolve(base, modules))
  found.discard(None)
  found.discard(module)
  return found


def import_graph(root=ROOT):
  modules = module_names(root)
  return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycle(graph):
  """One import cycle as [a, b, ..., a], or None (depth-first search)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_find_cycle_finds_a_cycle_hidden_in_a_function(tmp_path):
  pkg = tmp_path / PACKAGE
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "sub" / "a.py").write_text("from mtkd_jax.sub import b\n")
  (pkg / "sub" / "b.py").write_text(
      "def f():\n  from . import c\n")
  (pkg / "sub" / "c.py").write_text("import mtkd_jax.sub.a\n")
  graph = import_graph(pkg)
  assert graph[f"{PACKAGE}.sub.b"] == {f"{PACKAGE}.sub.c"}
  assert find_cycle(graph) == [f"{PACKAGE}.sub.a", f"{PACKAGE}.sub.b",
                               f"{PACKAGE}.sub.c", f"{PACKAGE}.sub.a"]
  (pkg / "sub" / "c.py").write_text("x = 1\n")
  assert find_cycle(import_graph(pkg)) is None


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert f"{PACKAGE}.train.step" in graph  # the walk found the package
  cycle = find_cycle(graph)
  assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("importer,forbidden", [
    (f"{PACKAGE}.distill", f"{PACKAGE}.train"),
])
def test_distillation_never_imports_training(importer, forbidden):
  bad = sorted(f"{m} imports {i}" for m, deps in import_graph().items()
               if m == importer or m.startswith(importer + ".")
               for i in deps if i == forbidden or i.startswith(forbidden + "."))
  assert not bad, bad


def test_training_reads_distillation_through_its_plugin_only():
  allowed = {f"{PACKAGE}.distill.plugin"}
  bad = sorted(f"{m} imports {i}" for m, deps in import_graph().items()
               if m.startswith(f"{PACKAGE}.train.")
               for i in deps if i.startswith(f"{PACKAGE}.distill")
               and i not in allowed)
  assert not bad, bad
