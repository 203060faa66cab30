"""Install chat_sync: ``pip install .`` for the server and client, ``pip install -e '.[test]'`` to
test, ``pip install -e '.[course]'`` to open the course's notebooks."""
import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"',
                    Path(__file__).with_name("chat_sync").joinpath("__init__.py").read_text()
                    ).group(1)

# What running the notebooks takes, headless (the tests) or in a browser (a student).
NOTEBOOKS = [
    "nbformat",      # read and validate the notebooks
    "nbclient",      # run them headless in a kernel, as tests
    "ipykernel",     # the python3 kernel nbclient and Jupyter start
    "matplotlib",    # the notebooks' plots (Agg backend, no display)
]

setup(
    name="chat_sync",
    version=VERSION,
    description="A small real chat server over TCP and UDP, and a course kit for building one",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["chat_sync", "chat_sync.*"]),
    package_data={
        "chat_sync.dissector": ["chatsync.lua"],   # chat-sync dissector's file
        "chat_sync": ["confusables.txt"],          # protocol.skeleton's data (UTS #39)
    },
    python_requires=">=3.11",
    install_requires=["pyyaml"],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            *NOTEBOOKS,
            "mypy",          # tests/test_types.py: the package stays --strict clean
            "types-PyYAML",  # yaml's type stubs, for that check
            "trustme",       # tests/test_tls.py: a throwaway CA and certificates, made per run
            "hypothesis",    # tests/test_properties.py: properties of the cores on made-up input
            "redis",         # tests/test_bus.py: servers of a cluster on a real redis-server
        ],
        "course": [
            "notebook",      # `jupyter notebook`: open notebooks/ in a browser
            *NOTEBOOKS,
            "redis",         # notebook 10 runs two servers on a Redis bus
        ],
        # Several servers as one chat (bus_url): redis-py, the client everyone
        # uses, speaks Redis for the bus's two threads. Not needed on its own.
        "bus": ["redis"],
    },
    entry_points={"console_scripts": ["chat-sync=chat_sync.cli:main"]},
)
