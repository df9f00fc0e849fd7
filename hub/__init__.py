"""Where adapters live: inspection, the blob store, the SQLite index and the Registry API.

Heavy libraries (torch, transformers, peft) are never imported here.
"""

from hub.registry import GcReport, PushResult, Registry, VerifyReport, default_home

__all__ = ["GcReport", "PushResult", "Registry", "VerifyReport", "default_home"]
