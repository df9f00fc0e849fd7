"""Where adapters live: inspection, the blob store, the SQLite index and the Registry API.

Heavy libraries (torch, transformers, peft) are never imported here.
"""

from hub.maintenance import GcReport, VerifyReport
from hub.registry import PushResult, Registry, default_home

__all__ = ["GcReport", "PushResult", "Registry", "VerifyReport", "default_home"]
