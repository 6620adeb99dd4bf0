"""rtem's service: the graph, reasoners, executors, store, audit log, CLI, HTTP API and console."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rtem")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
