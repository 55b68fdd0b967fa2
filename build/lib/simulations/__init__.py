"""Run fedlean: composition (app/), runtimes, deployment and tools around the strategies.

Importing the package stores the config schemas in Hydra's ConfigStore, so any Hydra
composition of :data:`CONF_DIR` (the CLI, the ServerApp, ``hydra.compose`` in a
notebook or test) sees them.
"""

from pathlib import Path

#: The Hydra config tree shipped with the package (``simulations/conf``).
CONF_DIR = Path(__file__).resolve().parent / "conf"

from simulations.app.config import register_schemas  # noqa: E402  (needs nothing above but Path)

register_schemas()
