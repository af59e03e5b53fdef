"""Attention kernels for long context: the flash block kernel (single device) and ring attention (sequence axis)."""
from kernels.attention import load_balance
from kernels.attention.flash import flash_attention
from kernels.attention.ring import ring_attention

__all__ = ["flash_attention", "ring_attention", "load_balance"]
