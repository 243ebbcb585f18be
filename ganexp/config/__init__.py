"""The config helpers every layer may use: the registry (config → code), the value checks, the key kinds."""
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # train.py's config folder (ganexp is installed in place)
