"""The runtime: each member's KV cache, streams, forward plans and CUDA graphs."""
from .member import Member, on_device
from .streams import Runtime, Stream

__all__ = ["Member", "Runtime", "Stream", "on_device"]
