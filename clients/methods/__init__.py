"""Client sides of the methods, by method name."""

from __future__ import annotations

from .base import ClientJob, ClientMethod, load_arrays, model_arrays
from .fedprox import FedProxClient

CLIENT_METHODS: dict[str, type[ClientMethod]] = {
    "fedavg": ClientMethod,
    "fedprox": FedProxClient,
}


def get_client_method(name: str) -> type[ClientMethod]:
    """The client-side class of a method; ValueError names the known ones."""
    try:
        return CLIENT_METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r} on the client; known: {sorted(CLIENT_METHODS)}"
        ) from None


__all__ = ["CLIENT_METHODS", "ClientJob", "ClientMethod", "get_client_method",
           "load_arrays", "model_arrays"]
