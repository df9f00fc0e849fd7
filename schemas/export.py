"""What ``hub export`` is asked to produce: format, dtype, quantization. No torch, no I/O."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from schemas.errors import InvalidArgument
from schemas.formats import DEVICES, DTYPES, FORMATS, GGUF_QUANTS, K_QUANTS, MERGING_FORMATS

ExportFormat = Literal["safetensors", "gguf", "gguf-lora", "fp8", "vllm-bundle"]


class ExportSpec(BaseModel):
    """A validated export request.

    Example:
        >>> ExportSpec.of("gguf", quant="Q8_0").quant
        'q8_0'
    """

    model_config = ConfigDict(frozen=True)

    format: ExportFormat = "safetensors"
    dtype: Literal["bf16", "fp16", "fp32"] | None = None
    """Output dtype of merged weights (default: the base's own dtype)."""
    quant: str | None = None
    """GGUF tensor type: f16, bf16, q8_0, q4_0, or a K-quant such as q4_k_m (gguf only)."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """Where the merge runs (the formats that merge only; unset means ``auto``: CUDA when
    available)."""

    @classmethod
    def of(
        cls,
        format: str = "safetensors",
        dtype: str | None = None,
        quant: str | None = None,
        device: str | None = None,
    ) -> ExportSpec:
        """Check the combination first, with one-line messages that name the option.

        Raises:
            InvalidArgument: an unknown value or a combination that does not apply.
        """
        if format not in FORMATS:
            raise InvalidArgument(
                f"unknown --format {format!r}: choose one of {', '.join(FORMATS)}"
            )
        if dtype is not None and dtype not in DTYPES:
            raise InvalidArgument(f"unknown --dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        if dtype is not None and format in ("gguf", "gguf-lora", "vllm-bundle"):
            raise InvalidArgument(
                f"--dtype does not apply to --format {format} (use --quant for gguf)"
            )
        if quant is not None:
            quant = quant.lower()
            if format not in ("gguf", "gguf-lora"):
                raise InvalidArgument(f"--quant applies to --format gguf, not {format}")
            allowed = GGUF_QUANTS + K_QUANTS if format == "gguf" else ("f16", "bf16", "f32")
            if quant not in allowed:
                raise InvalidArgument(
                    f"unknown --quant {quant!r} for {format}: choose one of {', '.join(allowed)}"
                )
        if device is not None and device not in DEVICES:
            raise InvalidArgument(
                f"unknown --device {device!r}: choose one of {', '.join(DEVICES)}"
            )
        if device == "auto":
            device = None  # the default, also where nothing is merged
        if device is not None and format not in MERGING_FORMATS:
            raise InvalidArgument(
                f"--device {device} does not apply to --format {format}: it merges nothing (the"
                f" adapters are written as they are); --device applies to"
                f" {', '.join(MERGING_FORMATS)}"
            )
        return cls.model_validate(
            {"format": format, "dtype": dtype, "quant": quant, "device": device}
        )
