"""Build of the C extensions (keeper/indexer/_scan.c, keeper/store/_packed.c); the rest of the metadata is
in pyproject.toml.

Both are optional: without a C compiler the install goes on and the indexer runs its Python paths
(keeper/indexer/scan.py, keeper/store/staged.py). ``make setup`` builds them in place: ``python setup.py
build_ext --inplace``.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(
            "keeper.indexer._scan",
            ["keeper/indexer/_scan.c"],
            optional=True,
            extra_compile_args=FLAGS,
        ),
        # SQLite's header only: its functions are looked up at run time in the library Python's sqlite3
        # module uses (see the file's comment), so nothing is linked
        Extension(
            "keeper.store._packed",
            ["keeper/store/_packed.c"],
            optional=True,
            extra_compile_args=FLAGS,
        ),
    ]
)
