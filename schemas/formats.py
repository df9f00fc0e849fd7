"""Export option values, kept free of pydantic so the CLI can build its choices fast."""

from __future__ import annotations

FORMATS: tuple[str, ...] = ("safetensors", "gguf", "gguf-lora", "fp8", "vllm-bundle")
DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32")
GGUF_QUANTS: tuple[str, ...] = ("f16", "bf16", "q8_0", "q4_0")
"""Written by the ``gguf`` package itself."""
K_QUANTS: tuple[str, ...] = ("q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
"""Through llama.cpp's quantizer (llama-cpp-python), when it is installed."""
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""Where merge math runs (``hub compose``, ``hub export``); ``auto`` is CUDA when available
(``compose.evaluate.device_for`` resolves it)."""
MERGING_FORMATS: tuple[str, ...] = ("safetensors", "gguf", "fp8")
"""The export formats that merge adapters into the base's weights (the others ship them)."""
