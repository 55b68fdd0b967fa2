"""A long-running ClientApp process for a SuperNode started with ``--isolation process``.

``flower-supernode`` in its default ``subprocess`` isolation starts ``flower-superexec``,
which starts one ``flwr-clientapp`` process per message: Python, Flower, torch and the
ClientApp are imported and the device's data loaded for every train and evaluate
message. With ``--isolation process`` the SuperNode starts nothing and waits for
tasks on its Runtime API; this module serves them from one process that stays up,
so imports, data and the model template are loaded once per device::

    flower-supernode --isolation process --port 9094 --superlink HOST:PORT --node-config ...
    python -m simulations.deploy clientapp --runtime-api-address 127.0.0.1:9094

The ClientApp served is fedlean's (``simulations.app.client_app``) as installed on the
device, not the code in the run's FAB: install the same fedlean version on the server
and on every device. The Flower side (acquire a task, pull its message, push the
reply and context) is :func:`fl_strategies.flwr_compat.serve_clientapp_tasks`.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

#: Seconds between polls of the SuperNode for a task while idle.
DEFAULT_POLL_INTERVAL = 0.02


def serve(
    runtime_api_address: str,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    root_certificates: str | Path | None = None,
    max_tasks: int | None = None,
) -> int:
    """Serve the SuperNode's ClientApp tasks with fedlean's ClientApp until SIGTERM/SIGINT.

    Parameters
    ----------
    runtime_api_address : str
        ``host:port`` of the SuperNode's Runtime API (its ``--port``, default 9094).
    poll_interval : float (default: 0.02)
        Seconds between task polls while idle (Flower's SuperExec: 1 s).
    root_certificates : str | Path | None (default: None)
        CA file when the SuperNode's Runtime API uses TLS (``--ssl-certfile``).
    max_tasks : int | None (default: None)
        Stop after this many tasks (``None``: serve forever).

    Returns
    -------
    int
        Number of tasks served.

    """
    if not poll_interval > 0:
        raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
    from fl_strategies.flwr_compat import serve_clientapp_tasks
    from simulations.app.client_app import app

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    certificates = Path(root_certificates).read_bytes() if root_certificates else None
    print(f"fedlean ClientApp worker: serving {runtime_api_address}", file=sys.stderr, flush=True)
    return serve_clientapp_tasks(
        runtime_api_address,
        app,
        insecure=certificates is None,
        root_certificates=certificates,
        poll_interval=poll_interval,
        max_tasks=max_tasks,
    )
