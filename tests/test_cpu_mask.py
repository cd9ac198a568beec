"""benchmarks/cpu: the CPUID mask that lets the AVX2 goals of issue 22 be measured on an AVX-512
host. Under it onnxruntime must really run its AVX2 kernels: a uint8 x int8 product whose pairs
overflow int16 comes out saturated (AVX2 sums u8 x s8 pairs in int16: ``vpmaddubsw``) where
the host's VNNI kernels give the exact sum."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
from numpy._core._multiarray_umath import __cpu_features__ as seen

a = helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64])
b = helper.make_tensor_value_info("b", TensorProto.INT8, [64, 16])
y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 16])
graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g", [a, b], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
out = sess.run(None, {"a": np.full((1, 64), 255, np.uint8), "b": np.full((64, 16), 127, np.int8)})
print(json.dumps({"features": {k: bool(seen.get(k)) for k in ("AVX2", "AVX512F", "AVX512VNNI")},
                  "first": int(out[0][0, 0])}))
"""
EXACT = 255 * 127 * 64  # 2,072,640
SATURATED = 32767 * 32  # each of the 32 pairs 255*127*2 = 64,770 clipped to int16's 32,767


def cpu_mask() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cpu_mask", ROOT / "benchmarks" / "cpu" / "cpu_mask.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_child(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_onnxruntime_runs_its_avx2_kernels_under_the_mask(tmp_path: Path) -> None:
    mask = cpu_mask()
    flags = mask.cpu_flags()
    if not {"cpuid_fault", "avx512f", "avx512_vnni"} <= flags:
        pytest.skip("needs an AVX-512 VNNI host with CPUID faulting (the mask is moot elsewhere)")
    library = mask.library(cache=tmp_path)
    assert library.exists()
    assert mask.library(cache=tmp_path) == library  # built once

    host = run_child(dict(os.environ))
    masked = run_child({**os.environ, "LD_PRELOAD": str(library), mask.MARKER: "avx2"})

    assert host == {
        "features": {"AVX2": True, "AVX512F": True, "AVX512VNNI": True},
        "first": EXACT,
    }
    assert masked == {
        "features": {"AVX2": True, "AVX512F": False, "AVX512VNNI": False},
        "first": SATURATED,
    }


def test_host_mode_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    mask = cpu_mask()
    monkeypatch.delenv(mask.MARKER, raising=False)
    mask.rerun_under("host")  # returns: no exec
    assert mask.describe() == "host"
    with pytest.raises(mask.MaskError, match="unknown CPU mode"):
        mask.rerun_under("sse2")
