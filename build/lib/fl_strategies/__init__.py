"""Server side of fedlean: strategies (one module per method), payload codec, wire bytes."""

from .base import FedleanStrategy, ParsedReply, ReplyError
from .fedavg import FedAvg
from .fedprox import FedProx

__all__ = ["FedAvg", "FedProx", "FedleanStrategy", "ParsedReply", "ReplyError"]
