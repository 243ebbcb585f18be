"""ganexp's default Hydra launcher, `hydra/launcher=sequential` (conf/hydra/launcher/sequential.yaml)."""
