"""MoE kernels: routing, the tile-aligned permutation, grouped matmul (Pallas TPU / GPU, XLA fallback), the routed
expert block, and expert-parallel dispatch. References with the same signatures: `kernels.reference.moe`."""
from kernels.moe.expert_parallel import ep_routed_ffn
from kernels.moe.ops import gmm, local_expert_ffn, moe_ffn, routed_ffn, tgmm
from kernels.moe.routing import Layout, gather_back, permute, plan, route, unpermute

__all__ = ["Layout", "ep_routed_ffn", "gather_back", "gmm", "local_expert_ffn", "moe_ffn", "permute", "plan", "route",
           "routed_ffn", "tgmm", "unpermute"]
