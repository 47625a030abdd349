"""tart: JAM telemetry backend.

The version is written once, in pyproject.toml; everything else (``--version``, ``/api/health``,
``tart_build_info``) reads it from the installed package's metadata through ``__version__``.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

try:
    __version__: str = _dist_version("tart-backend")
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """``--version``: ``<prog> <version>``, the same for every tart command."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
