"""GaLore: gradient low-rank projection optimizers (docs/galore.md)."""

from .fused import galore_update_
from .layerwise import LayerwiseOptimizer
from .optim import (GaLoreAdafactor, GaLoreAdamW, galore_param_groups, optimizer_state_bytes,
                    optimizer_state_formula)
from .projector import GaLoreProjector, ProjectorConfig, randomized_svd, subspace_similarity, thin_svd

__all__ = ["GaLoreAdamW", "GaLoreAdafactor", "GaLoreProjector", "ProjectorConfig", "LayerwiseOptimizer",
           "galore_param_groups", "optimizer_state_formula", "optimizer_state_bytes", "galore_update_", "randomized_svd", "thin_svd",
           "subspace_similarity"]
