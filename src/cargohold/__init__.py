"""cargohold — never lose the state of your Docker containers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cargohold")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
