"""Build of the one C extension (keeper/indexer/_scan.c); the rest of the metadata is in pyproject.toml.

The extension is optional: without a C compiler the install goes on and the indexer runs its Python
path (keeper/indexer/scan.py). ``make setup`` builds it in place: ``python setup.py build_ext --inplace``.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "keeper.indexer._scan",
            ["keeper/indexer/_scan.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
