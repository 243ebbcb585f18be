"""ganexp's Hydra launcher plugin: `hydra/launcher=stacked` (conf/hydra/launcher/stacked.yaml, ganexp/gan/stack.py)."""
