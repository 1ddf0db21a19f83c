"""drbdproxy: an open DRBD Proxy on Twisted."""

import re

from setuptools import find_packages, setup


def version() -> str:
    """drbdproxy.__version__, read without importing the package (its dependencies may be absent)."""
    with open("drbdproxy/__init__.py", encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="drbdproxy",
    version=version(),
    description="An open-source DRBD Proxy: buffers, compresses and relays DRBD over a WAN",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    # twisted.plugins is a namespace Twisted owns: ship our plugin file into it, never an
    # __init__.py of our own.
    packages=find_packages(include=["drbdproxy", "drbdproxy.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["drbdproxy_plugin.py"]},
    # The demo's drbd.conf, for drbd-proxy-demo run outside the source tree.
    data_files=[("share/drbdproxy/demo", ["etc/demo/drbd.conf"])],
    install_requires=[
        "twisted[tls,conch]>=23.8",
        "automat",
        "zope.interface",
        "lz4>=4",
        "crc32c>=2.4",  # DATA frame checksums, hardware-accelerated
        "zstandard",
        "prometheus_client>=0.20",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "hypothesis", "pyflakes", "mypy", "mypy-zope"],
        "bench": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "drbd-sim = drbdproxy.sim.cli:main",
            "drbd-proxy-demo = drbdproxy.demo:main",
            "drbd-proxy-ctl = drbdproxy.control.ctl:main",
            "drbd-proxy = drbdproxy.launcher:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Topic :: System :: Networking",
        "Programming Language :: Python :: 3",
    ],
)
