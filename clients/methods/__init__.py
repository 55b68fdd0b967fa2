"""Client sides of the methods, by method name."""

from __future__ import annotations

from .apf import APFClient
from .base import ClientJob, ClientMethod, load_arrays, model_arrays
from .fedgkt import FedGKTClient
from .fedprox import FedProxClient
from .fedsparsify import PRUNING_METHODS, FedSparsifyClient
from .gwpf import GWPFClient
from .swat import SwatClient
from .zerofl import ZeroFLClient

CLIENT_METHODS: dict[str, type[ClientMethod]] = {
    "fedavg": ClientMethod,
    "fedprox": FedProxClient,
    **dict.fromkeys(PRUNING_METHODS, FedSparsifyClient),
    "swat": SwatClient,
    "zerofl": ZeroFLClient,
    "gwpf": GWPFClient,
    "apf": APFClient,
    "fedgkt": FedGKTClient,
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
