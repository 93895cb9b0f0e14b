"""sparse: 2:4 sparse training (masks, SR-STE, AST, CAST, export) on top of lowprec.

Not built yet: this package is the subject of the 2:4 sparse-training issue. It depends
on lowprec (kernels, backends, module walker), never the other way round.
"""

__all__: list = []
