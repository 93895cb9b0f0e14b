"""sparse: 2:4 (and 4:8 pair-wise) sparse training (masks, SR-STE, AST, CAST, export) on top of lowprec.

    model = lowprec.convert_model(model, sparse.CASTConfig())      # or ASTConfig, SRSTEConfig
    opt = sparse.AdamS(sparse.cast_param_groups(model), lr=1e-4, total_steps=T)
    dense_24 = sparse.export(model, opt)

It depends on lowprec (kernels, backends, module walker), never the other way round.
"""

from . import kernels  # noqa: F401  (registers the fused masked-Adam op)
from .ast import ASTAdamW
from .autograd import masked_weight
from .cast import AdamS, cast_masks, cast_param_groups
from .configs import ASTConfig, CASTConfig, SparseFP4Config, SRSTEConfig
from .distill import ast_distillation_loss, cast_distillation_loss, distillation_loss, kl_teacher_student
from .export import (Compressed24Linear, Compressed48PairwiseLinear, SparseWithLowRank, compress_model, decompress_model, export,
                     semi_structured_limits, sparse_linears, to_semi_structured)
from .masks import (collect_input_norms, flip_rate, fraction_nm, is_nm, is_pairwise_48, magnitude_mask, nm_mask,
                    pack_mask, pairwise_48_mask, scores_for, sparsity_mask, transposable_24_mask,
                    transposable_pairwise_48_mask, transposable_patterns, unpack_mask)
from .nn import CASTLinear, SparseLinear, slorb_init, slorb_projection
from .train import SparseTrainer

__all__ = [
    "ASTAdamW", "AdamS", "cast_masks", "cast_param_groups", "masked_weight",
    "ASTConfig", "CASTConfig", "SparseFP4Config", "SRSTEConfig",
    "ast_distillation_loss", "cast_distillation_loss", "distillation_loss", "kl_teacher_student",
    "Compressed24Linear", "Compressed48PairwiseLinear", "SparseWithLowRank", "compress_model", "decompress_model", "export",
    "semi_structured_limits", "sparse_linears", "to_semi_structured",
    "collect_input_norms", "flip_rate", "fraction_nm", "is_nm", "is_pairwise_48", "magnitude_mask", "nm_mask",
    "pack_mask", "pairwise_48_mask", "scores_for", "sparsity_mask", "transposable_24_mask",
    "transposable_pairwise_48_mask", "transposable_patterns", "unpack_mask",
    "CASTLinear", "SparseLinear", "slorb_init", "slorb_projection", "SparseTrainer",
]
