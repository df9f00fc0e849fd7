"""Deploy: export a base model with adapters merged in (safetensors, GGUF, FP8), a GGUF LoRA,
or a multi-LoRA bundle for vLLM. Streaming: one tensor in memory at a time.

Example:
    >>> from compose.deploy import export_model
    >>> export_model(["out/sql-lora"], "models/llama", "deploy/llama-sql",
    ...              format="gguf", quant="q8_0")                          # doctest: +SKIP
"""

from compose.deploy.api import AdapterSource, ExportResult, export_model

__all__ = ["AdapterSource", "ExportResult", "export_model"]
