"""The TF-Serving-compatible REST shim in front of TorchServe (create_app builds it)."""

from shim.app import create_app

__all__ = ["create_app"]
