"""The import rules that keep the layout readable (DESIGN.md): models know no methods, methods
know no runtime, and ray is imported in exactly one module, never re-exported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "longvid_dist"


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    pkg = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]
    return out


def _files(*dirs: Path):
    for d in dirs:
        yield from sorted(d.rglob("*.py"))


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for f in _files(PKG / folder):
        for m in _imports(f):
            if any(m == p or m.startswith(p + ".") for p in forbidden):
                bad.append(f"{f.relative_to(ROOT)} imports {m}")
    return bad


def test_models_import_no_methods_sampling_or_runtime():
    assert _violations("models", ("longvid_dist.methods", "longvid_dist.sampling", "longvid_dist.runtime")) == []


def test_methods_import_no_runtime_sampling_or_cli():
    forbidden = ("longvid_dist.runtime", "longvid_dist.sampling", "longvid_dist.cli", "longvid_dist.batch",
                 "longvid_dist.eval", "longvid_dist.api", "longvid_dist.probe")
    assert _violations("methods", forbidden) == []


def test_runtime_imports_no_sampling():
    assert _violations("runtime", ("longvid_dist.sampling",)) == []


def test_ray_is_imported_in_one_runtime_module_and_never_re_exported():
    importers = sorted(str(f.relative_to(ROOT)) for f in _files(PKG, ROOT / "jobs", ROOT / "benchmarks")
                       if any(m == "ray" or m.startswith("ray.") for m in _imports(f)))
    assert importers == ["longvid_dist/runtime/ray_executor.py"]
    reexports = [str(f.relative_to(ROOT)) for f in _files(PKG, ROOT / "jobs", ROOT / "benchmarks")
                 if "longvid_dist.runtime.ray_executor.ray" in _imports(f)]
    assert reexports == []


def test_the_checker_sees_a_violation(tmp_path):
    """The rule above can fail: a models/ file importing methods/ is reported."""
    f = PKG / "models" / "_layout_probe_tmp.py"
    f.write_text("from ..methods import windows\n")
    try:
        assert _violations("models", ("longvid_dist.methods",)) == \
            ["longvid_dist/models/_layout_probe_tmp.py imports longvid_dist.methods",
             "longvid_dist/models/_layout_probe_tmp.py imports longvid_dist.methods.windows"]
    finally:
        f.unlink()
