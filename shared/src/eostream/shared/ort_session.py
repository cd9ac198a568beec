"""How every eostream onnxruntime session is set up (ADR 0010), without importing onnxruntime.

The registry-bridge (gate checks), inference (serving) and the trainer (export checks) each open
sessions; they configure them here so a model is run the same way wherever it is judged.
Field notes: graph optimisations on (off halves throughput); one inter-op thread, and intra-op
threads bounded when a caller shares its cores (torch and onnxruntime fight over threads).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

CPU = "CPUExecutionProvider"
_Options = TypeVar("_Options")
#: onnxruntime graph rewrites every session leaves out (``disabled_optimizers``, see
#: :func:`session_arguments`). QDQPropagationTransformer moves a QuantizeLinear up across a
#: MaxPool: where an int8 model's stem stays fp32 (registry_bridge.quantize: ``stem="fp32"``, or
#: a network whose normalisation cannot be folded into its input's quantisation) that turns the
#: stem's fp32 NCHWc max-pool into a uint8 NCHW one that took 21 of 59 ms of the RGB
#: ``small_cnn`` at batch 64 (against 4 ms in fp32). The values are the same either way: a max
#: commutes with a monotone quantisation.
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


def configure(options: _Options, *, threads: int = 0) -> _Options:
    """Set up an ``onnxruntime.SessionOptions``: all graph optimisations; with ``threads`` > 0,
    that many intra-op threads and one inter-op thread (0: onnxruntime's defaults)."""
    opts: Any = options
    opts.graph_optimization_level = type(opts.graph_optimization_level).ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return options


def session_arguments() -> dict[str, Any]:
    """Keyword arguments of every ``onnxruntime.InferenceSession`` (beside the options)."""
    return {"disabled_optimizers": list(DISABLED_OPTIMIZERS)}


def choose_providers(wanted: Sequence[str], available: Iterable[str]) -> list[str]:
    """The wanted execution providers that are available, in the wanted order; else the CPU."""
    present = set(available)
    chosen = [p for p in wanted if p in present]
    return chosen or [CPU]
