"""The package's folders are its layers (docs/layout.md): each module imports only from its own
folder's lower neighbours, never up — data knows no pyinfra, a fact never adds an operation, an
operation never reaches into a deploy step."""

import ast

from tests.harness.paths import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "tasks" / "containerd_deploy"
# Lowest first. The package's own __init__ (resource(), the lazy export) is below them all; the
# entry points above them all.
LAYERS = ("data", "controller", "remote", "facts", "plan", "operations", "deploy")
ENTRY_POINTS = {"rollout", "update_checksums", "conformance", "cloud_init"}


def layer_of(module: str) -> int:
    """The rank of `containerd_deploy.<part>...`: -1 for the package itself, len(LAYERS) for an entry point."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    assert parts[1] in ENTRY_POINTS, f"{module} is in no layer: add its folder to docs/layout.md and LAYERS"
    return len(LAYERS)


def imports_of(path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import; the layers are read from absolute ones"
            if node.module and node.module.split(".")[0] == "containerd_deploy":
                # `from containerd_deploy.facts import node` imports the module facts.node.
                found += [
                    f"{node.module}.{alias.name}"
                    if PACKAGE_DIR.joinpath(*node.module.split(".")[1:], alias.name).exists()
                    or PACKAGE_DIR.joinpath(*node.module.split(".")[1:], alias.name + ".py").exists()
                    else node.module
                    for alias in node.names
                ]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "containerd_deploy"]
    return found


def test_imports_go_one_way_down_the_layers():
    upward = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR)
        if relative.parts[0] == "conformance":
            continue  # the suite runs on the controller against nodes; it may use any layer
        own = "containerd_deploy." + ".".join(relative.with_suffix("").parts)
        # The package's own __init__ exports the deploy (lazily): the one import from the top.
        rank = len(LAYERS) if own == "containerd_deploy.__init__" else layer_of(own.removesuffix(".__init__"))
        for module in imports_of(path):
            target = layer_of(module)
            same_folder = module.split(".")[:2] == own.split(".")[:2]
            if target > rank or (target == rank and not same_folder and rank < len(LAYERS)):
                upward.append(f"{relative} imports {module}")
    assert upward == []


def test_the_layers_check_sees_an_upward_import(tmp_path):
    facts = tmp_path / "facts.py"
    facts.write_text(
        "from containerd_deploy.operations.files import file_content\nfrom containerd_deploy import deploy\n"
    )
    assert [layer_of(module) for module in imports_of(facts)] == [
        LAYERS.index("operations"),
        LAYERS.index("deploy"),
    ]
    assert layer_of(imports_of(facts)[0]) > layer_of("containerd_deploy.facts.node")
    assert layer_of("containerd_deploy") < layer_of("containerd_deploy.data.settings")
    assert layer_of("containerd_deploy.rollout") == len(LAYERS)


# Below the facts, nothing asks a node or adds an operation: pyinfra's errors are all they use.
WITHOUT_PYINFRA = ("data", "controller", "remote", "plan")


def test_the_lower_layers_use_nothing_of_pyinfra_but_its_errors():
    found = []
    for layer in WITHOUT_PYINFRA:
        for path in sorted((PACKAGE_DIR / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                found += [
                    f"{path.relative_to(PACKAGE_DIR)}: {name}"
                    for name in names
                    if name.split(".")[0] == "pyinfra" and name != "pyinfra.api.exceptions"
                ]
    assert found == []
