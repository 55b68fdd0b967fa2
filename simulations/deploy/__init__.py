"""Deployment: credentials, device data, ``flwr`` CLI files and a local federation.

See ``docs/deploy.md``; ``python -m simulations.deploy --help`` lists the commands.
"""

from .credentials import NodeKeys, TlsFiles, generate_supernode_keys, generate_tls_certs
from .device_data import export_partition
from .federation import (
    LOCAL_CONNECTION,
    REPO_ROOT,
    DeploymentError,
    LocalFederation,
    Proc,
    descendants,
    free_port,
)
from .flwr_cli import format_node_config, format_run_config, write_connection

__all__ = [
    "LOCAL_CONNECTION",
    "REPO_ROOT",
    "DeploymentError",
    "LocalFederation",
    "NodeKeys",
    "Proc",
    "TlsFiles",
    "descendants",
    "export_partition",
    "format_node_config",
    "format_run_config",
    "free_port",
    "generate_supernode_keys",
    "generate_tls_certs",
    "write_connection",
]
