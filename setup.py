"""Packaging glue that pyproject.toml cannot express: the design keeps the folders `pipelines/`
and `transforms/`, but the installed tool must own one import name, `practice_sync`, rather than
generic top-level names that other packages on the index also use. Everything else is in
pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        "practice_sync",
        *(f"practice_sync.{name}" for name in find_packages("pipelines")),
        "practice_sync.transforms",
    ],
    package_dir={"practice_sync": "pipelines", "practice_sync.transforms": "transforms"},
)
