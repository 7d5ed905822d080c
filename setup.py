"""llm4msr: LLM-enhanced multi-scenario recommendation (LLM4MSR) as a TFX product.

The design card puts the sub-packages at the top level of the repository
(`pipeline/`, `trainer/`, `transform/`, `serving/`, `kubeflow/`, plus `experiments/`); they are
installed as `llm4msr.pipeline`, `llm4msr.trainer`, ... so that user code never
imports a generic top-level name such as `pipeline`.
"""
import pathlib

from setuptools import find_packages, setup

ROOT = pathlib.Path(__file__).parent
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


def _requirements():
    lines = (ROOT / "requirements.in").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


PACKAGES, PACKAGE_DIR = _packages()

setup(
    name="llm4msr",
    version="0.1.0",
    description="LLM-enhanced multi-scenario recommendation on TensorFlow and TFX",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.11",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"": ["*.txt", "*.json", "*.yaml", "*.pbtxt", "*.tmpl"]},
    include_package_data=True,
    install_requires=_requirements(),
    entry_points={"console_scripts": ["llm4msr = llm4msr.cli:main"]},
)
