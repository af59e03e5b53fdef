"""MoE kernels: routing, the tile-aligned permutation, grouped matmul (Pallas TPU / GPU, XLA fallback), the routed
expert block, and expert-parallel dispatch. References with the same signatures: `kernels.reference.moe`."""
from kernels.moe.ops import gmm, moe_ffn, routed_ffn, tgmm
from kernels.moe.routing import Layout, gather_back, permute, plan, route, unpermute

__all__ = ["Layout", "gather_back", "gmm", "moe_ffn", "permute", "plan", "route", "routed_ffn", "tgmm", "unpermute"]
