"""What a config is and how it becomes parts: the registry, the build, the value checks, the key kinds, validation."""
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # train.py's config folder (ganexp is installed in place)
