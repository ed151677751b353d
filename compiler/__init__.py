"""The DCP compiler driver: compile a teacher to a compact graph, save/load it, export ONNX.

    res = compiler.compile(model, example_inputs, ratio=0.5)
    compiler.save(res, "out/"); m = compiler.load("out/")
    compiler.export_onnx(m, "model.onnx", example_inputs, dynamic=True)
"""
from __future__ import annotations

import importlib

from passes.errors import DCPError

# Public name -> module that defines it (imported on first use, keeps `import compiler` light).
_EXPORTS = {
    "compile": "pipeline", "CompileResult": "pipeline", "save": "pipeline",
    "load": "artifact", "save_module": "artifact", "read_plan": "artifact",
    "export_onnx": "onnx_export", "load_model": "models",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'compiler' has no attribute '{name}'")


__all__ = ["DCPError", *_EXPORTS]
