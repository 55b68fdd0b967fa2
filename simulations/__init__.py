from pathlib import Path

#: The Hydra config tree shipped with the package (``simulations/conf``).
CONF_DIR = Path(__file__).resolve().parent / "conf"
