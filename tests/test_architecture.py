"""The layout keeps its promises: no import cycle between dmedit's modules or between its packages
(grimp, the graph import-linter reads). The layer contracts of pyproject.toml are `lint-imports`,
which `make test` runs before pytest."""

from __future__ import annotations

import grimp

def import_cycles(*, graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Every group of modules of `package` that import each other round a cycle (strongly connected
    components of more than one module, or a module importing itself), each sorted, largest first."""
    modules = sorted(graph.find_descendants(package) | {package})
    edges = {module: sorted(m for m in graph.find_modules_directly_imported_by(module) if m in modules)
             for module in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(root: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit)
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(edges[target])))
                elif target in on_stack:
                    low[module] = min(low[module], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1 or module in edges[module]:
                    cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return sorted(cycles, key=len, reverse=True)


def test_the_cycle_finder_sees_a_planted_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"):
        graph.add_module(name)
    for importer, imported in (("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.a"), ("pkg.d", "pkg.a")):
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph=graph, package="pkg") == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_module_of_dmedit_is_part_of_an_import_cycle() -> None:
    graph = grimp.build_graph("dmedit")
    assert import_cycles(graph=graph, package="dmedit") == []


def test_no_package_of_dmedit_is_part_of_an_import_cycle() -> None:
    graph = grimp.build_graph("dmedit")
    for package in sorted(graph.find_children("dmedit")):
        if graph.find_children(package):
            graph.squash_module(package)
    assert import_cycles(graph=graph, package="dmedit") == []
