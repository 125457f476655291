"""The docs site documents every public name (without building it: no mkdocs needed).

The API pages list their members explicitly (`::: eqvid.nn` with `members: [...]`),
so a name added to a package's public interface must also be added to a page; this
test names the ones that are missing. `mkdocs build --strict` (in `.ci/run`) checks
the rest: that every listed object exists, renders and is cross-referenced correctly.
"""

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# The packages whose public names the site must document.
PACKAGES = (
    "eqvid",
    "eqvid.nn",
    "eqvid.models",
    "eqvid.data",
    "eqvid.train",
    "eqvid.metrics",
    "eqvid.evaluate",
    "eqvid.kernels",
)


def module_file(module: str) -> pathlib.Path:
    path = REPO.joinpath(*module.split("."))  # eqvid/kernels links to kernels/
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def resolve(package: str, level: int, source: str | None) -> str:
    """The absolute name of a relative import `from {'.' * level}{source}` in `package`."""
    base = package.split(".")
    base = base[: len(base) - level + 1]
    return ".".join(base + ([source] if source else []))


def public_names(package: str) -> dict[str, str]:
    """`{name: module it is imported from}` for a package's public names: those in
    `__all__` when it has one, else its explicit re-exports (`from .x import A as A`)."""
    tree = ast.parse(module_file(package).read_text())
    imported: dict[str, str] = {}
    explicit: set[str] = set()
    exported: list[str] | None = None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            source = resolve(package, node.level, node.module)
            for alias in node.names:
                name = alias.asname or alias.name
                imported[name] = source
                if alias.asname == alias.name:
                    explicit.add(name)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            exported = list(ast.literal_eval(node.value))
    names = exported if exported is not None else sorted(explicit)
    # Subpackages imported as modules (`from . import nn as nn`) have pages of their own.
    return {
        n: imported[n]
        for n in names
        if n in imported and not module_file(f"{imported[n]}.{n}").exists()
    }


def aliases(module: str, name: str) -> set[str]:
    """Every path under which `module.name` may be documented: its own and, for a
    re-export, the paths of the object it re-exports."""
    paths = {f"{module}.{name}"}
    source = public_names(module).get(name) if module in PACKAGES else None
    if source is not None and source != module:
        paths.add(f"{source}.{name}")
        if source in PACKAGES:
            paths |= aliases(source, name)
    return paths


def documented() -> tuple[set[str], set[str]]:
    """`(objects, whole_modules)` named by the `::: path` blocks of the docs pages:
    objects documented one by one (a block's `members:` list, or a block naming an
    object), and modules rendered with all their public members."""
    objects: set[str] = set()
    modules: set[str] = set()
    for page in DOCS.rglob("*.md"):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.match(r":::\s+(\S+)", line)
            if match is None:
                continue
            path = match.group(1)
            options = []
            for follow in lines[i + 1 :]:
                if follow and not follow.startswith(" "):
                    break
                options.append(follow)
            block = "\n".join(options)
            members = re.search(r"^[ \t]+members:[ \t]*(\S*)[ \t]*$", block, re.MULTILINE)
            if members is None:
                objects.add(path)
                modules.add(path)
            elif members.group(1) == "false":
                objects.add(path)
            else:
                objects.add(path)
                listed = block[members.end() :]
                for item in re.finditer(r"^[ \t]+-[ \t]+(\w+)[ \t]*$", listed, re.MULTILINE):
                    objects.add(f"{path}.{item.group(1)}")
    return objects, modules


def test_every_public_name_is_documented():
    objects, modules = documented()
    missing = []
    for package in PACKAGES:
        for name in public_names(package):
            paths = aliases(package, name)
            rendered_with_module = any(p.rsplit(".", 1)[0] in modules for p in paths)
            if not paths & objects and not rendered_with_module:
                missing.append(f"{package}.{name}")
    assert not missing, (
        "Public names with no `::: ...` entry in docs/ (add each to its package's page "
        f"under docs/api/, or to its model family's or kernel's page): {missing}"
    )


def test_every_page_is_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")]
    assert pages, "no docs pages found"
    missing = [p for p in pages if f" {p}" not in nav]
    assert not missing, f"docs pages missing from `nav:` in mkdocs.yml: {missing}"
