"""Package layout of llm4msr; its metadata and install requirements are in pyproject.toml.

The design card puts the sub-packages at the top level of the repository
(`pipeline/`, `trainer/`, `transform/`, `serving/`, `kubeflow/`, plus `experiments/`); they are
installed as `llm4msr.pipeline`, `llm4msr.trainer`, ... so that user code never
imports a generic top-level name such as `pipeline`.
"""
from setuptools import find_packages, setup

SUBPACKAGES = ["pipeline", "trainer", "transform", "serving", "kubeflow", "experiments"]


def _packages():
    packages = ["llm4msr"]
    package_dir = {"llm4msr": "llm4msr"}
    for top in SUBPACKAGES:
        packages.append(f"llm4msr.{top}")
        package_dir[f"llm4msr.{top}"] = top
        for sub in find_packages(where=top):
            packages.append(f"llm4msr.{top}.{sub}")
            package_dir[f"llm4msr.{top}.{sub}"] = f"{top}/{sub.replace('.', '/')}"
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"": ["*.txt", "*.json", "*.yaml", "*.pbtxt", "*.tmpl"]},
    include_package_data=True,
)
