"""Adapter merge strategies (``adapters.merge.combination_type``), backed by PEFT's ``add_weighted_adapter``.

The table mirrors PEFT 0.21.2 ``LoraModel._check_add_weighted_adapter`` / ``add_weighted_adapter``:
linear, ties, dare_linear, dare_ties and magnitude_prune need all sources to share one rank (the merged
adapter keeps it); svd takes any ranks (new rank = svd_rank or the largest source rank); cat takes any
ranks (new rank = their sum). density is used by ties, dare_linear, dare_ties and magnitude_prune.
The merge itself is run by the core: one call to ``add_weighted_adapter`` with the section's keys whose schema
property names a PEFT argument (``x-peft``: ``density`` for the pruning strategies, the ``svd_*`` keys for svd).
"""
from fw.plugin import MergeStrategyPlugin, hookimpl

# name -> (summary, uses_density, requires_equal_ranks)
STRATEGIES = {
    "linear": ("Plain weighted sum of the LoRA A and B matrices", False, True),
    "svd": ("Weighted sum of the weight deltas, re-factored to low rank by SVD", False, False),
    "ties": ("TIES: trim, resolve sign conflicts, then merge (Yadav et al., NeurIPS 2023)", True, True),
    "dare_linear": ("DARE random pruning with rescaling + linear merge (Yu et al., ICML 2024)", True, True),
    "dare_ties": ("DARE random pruning + TIES merge", True, True),
    "magnitude_prune": ("Prune by delta magnitude, then merge linearly", True, True),
    "cat": ("Concatenate the LoRA matrices (exact; merged rank = sum of ranks)", False, False),
}


@hookimpl
def fw_merge_strategies():
    return [MergeStrategyPlugin(name=name, schema=f"fw.schemas:merges/{name}.json", summary=summary,
                                peft_combination_type=name, uses_density=uses_density,
                                requires_equal_ranks=requires_equal_ranks)
            for name, (summary, uses_density, requires_equal_ranks) in STRATEGIES.items()]
