"""ganexp: config-driven GAN experiments on PyTorch Lightning and Hydra."""
import warnings

__version__ = "0.1.0"

# Upstream warnings a user can do nothing about, silenced narrowly (message, category and module):
# Lightning 2.6's pytree helper still builds torch's deprecated LeafSpec on every logged dict.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
                        module=r"pytorch_lightning\.utilities\._pytree")
