"""The tree shows the architecture: a lower wing never imports a higher one.

runner <- spec <- drafting <- rpc <- services (gateway, draft_service, target_service); the faces
(engine, client, launcher, cli, bench) sit on top. `assets`, `config` and the generated `v1` are
leaves anyone may import."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
LEAVES = {"minedraft.assets", "minedraft.config", "minedraft.v1", "minedraft"}
# wing -> the wings it may import (besides itself and the leaves)
ALLOWED = {
    "minedraft.runner": set(),
    "minedraft.spec": {"minedraft.runner"},
    "minedraft.drafting": {"minedraft.runner", "minedraft.spec"},
    "minedraft.rpc": {"minedraft.runner", "minedraft.spec", "minedraft.drafting"},
    "minedraft.training": set(),  # the tiny pair's trainer stands alone
}
SERVICES = ("gateway", "draft_service", "target_service")
BELOW_SERVICES = set(ALLOWED) | {"minedraft.rpc"}


def _wing(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "minedraft" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def _imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            if node.module == "minedraft":  # `from minedraft import x`: x is the module
                out |= {f"minedraft.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in ("minedraft", *SERVICES)}


def _leaf(module: str) -> bool:
    return any(module == leaf or module.startswith(leaf + ".") for leaf in LEAVES)


def test_lower_wings_never_import_higher_ones():
    bad = []
    for wing, allowed in ALLOWED.items():
        for path in (ROOT / wing.replace(".", "/")).rglob("*.py"):
            for module in _imports(path):
                target = _wing(module)
                if target != wing and target not in allowed and not _leaf(module):
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "imports pointing up the layers:\n" + "\n".join(bad)


def test_services_use_the_wings_not_each_other_nor_the_faces():
    bad = []
    for service in SERVICES:
        for path in (ROOT / service).rglob("*.py"):
            for module in _imports(path):
                target = _wing(module)
                if target in SERVICES and target != service:
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
                elif target.startswith("minedraft") and target not in BELOW_SERVICES and not _leaf(module):
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "services importing sideways or up:\n" + "\n".join(bad)


def test_the_checker_sees_a_bad_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from minedraft.spec.scheduler import Scheduler\nimport gateway.server\n")
    assert _imports(bad) == {"minedraft.spec.scheduler", "gateway.server"}
    assert _wing("minedraft.spec.scheduler") not in ALLOWED["minedraft.runner"]
