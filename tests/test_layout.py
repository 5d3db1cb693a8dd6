"""The tree shows the architecture (issue 19): layers import only lower layers, no module
imports one that imports it back, every package says what it is, the README's Layout matches
the tree, and the product never special-cases the tests' planted model."""
import ast
import os
import re

import ucore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UCORE = os.path.join(ROOT, "ucore")
# The order stated in ucore/__init__.py's docstring (lowest first).
LAYERS = ["jobs", "interventions", "models", "data", "train", "corr", "analyses", "report",
          "analyze", "sweep", "pipeline", "cli"]


def _modules():
  for root, _, files in os.walk(UCORE):
    for f in sorted(files):
      if f.endswith(".py"):
        path = os.path.join(root, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _imports(path):
  """Every ucore module a file imports, at top level or inside a function."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ucore":
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out.add(full if os.path.exists(os.path.join(ROOT, *full.split(".")) + ".py")
                or os.path.isdir(os.path.join(ROOT, *full.split("."))) else node.module)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.split(".")[0] == "ucore")
  return out


def _layer(module):
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def test_layers_import_only_lower_layers():
  mods = dict(_modules())
  assert {_layer(m) for m in mods} - {None} <= set(LAYERS), "a package missing from LAYERS"
  upward = []
  for mod, path in mods.items():
    for target in _imports(path):
      a, b = _layer(mod), _layer(target)
      if a and b and LAYERS.index(b) > LAYERS.index(a):
        upward.append(f"{mod} -> {target}")
  assert not upward, upward


def test_no_import_cycles():
  graph = {m: {t for t in _imports(p) if t != m} for m, p in _modules()}
  seen, stack, cycles = {}, [], []

  def visit(m):
    seen[m] = "open"
    stack.append(m)
    for t in graph.get(m, ()):
      if seen.get(t) == "open":
        cycles.append(stack[stack.index(t):] + [t])
      elif t not in seen:
        visit(t)
    stack.pop()
    seen[m] = "done"
  for m in sorted(graph):
    if m not in seen:
      visit(m)
  # A package's __init__ importing its own submodules is not a cycle of the architecture.
  cycles = [c for c in cycles if not any(c[i + 1].startswith(c[i] + ".") for i in range(len(c) - 1))]
  assert not cycles, cycles


def test_every_package_states_its_job_and_the_readme_lists_it():
  readme = open(os.path.join(ROOT, "README.md")).read()
  layout = readme[readme.index("## Layout"):]
  for entry in sorted(os.listdir(UCORE)):
    path = os.path.join(UCORE, entry)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "__init__.py")):
      doc = ast.get_docstring(ast.parse(open(os.path.join(path, "__init__.py")).read()))
      assert doc and len(doc) > 40, f"ucore/{entry}/__init__.py has no docstring"
      assert f"ucore/{entry}/" in layout, f"README Layout does not list ucore/{entry}/"
    elif entry.endswith(".py") and entry != "__init__.py":
      assert f"ucore/{entry}" in layout, f"README Layout does not list ucore/{entry}"
  assert ucore.__doc__ and all(layer in ucore.__doc__ for layer in LAYERS if layer != "sweep"
                               or os.path.exists(os.path.join(UCORE, "sweep.py")))


def test_no_alias_modules_and_no_planted_in_product_code():
  for mod, path in _modules():
    src = open(path).read()
    # (ucore.corr.synthetic's planted *correlation* family is a product feature: dry runs.)
    assert not re.search(r"[\"']planted[\"']|tests\.planted|planted_model", src), (
        f"{mod} special-cases the tests' planted model")
    body = [n for n in ast.parse(src).body
            if not (isinstance(n, ast.Expr) and isinstance(getattr(n, "value", None), ast.Constant))]
    only_imports = body and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)
    assert not (only_imports and not path.endswith("__init__.py")), f"{mod} is an alias module"
  for f in os.listdir(os.path.join(ROOT, "configs")):
    src = open(os.path.join(ROOT, "configs", f)).read()
    assert not re.search(r"[\"']planted[\"']", src), f
