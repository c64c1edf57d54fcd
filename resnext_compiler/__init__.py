"""resnext-compile: a declarative graph-spec compiler for the ResNeXt family.

Python API (light imports; torch only where a function needs it):

    from resnext_compiler import load_spec, compile_spec
    graph = compile_spec(load_spec("specs/resnext50_32x4d.yaml"))   # validated, shaped IR
    from resnext_compiler.backends.torch_module import build_module
    model = build_module(graph)                                       # torch.nn.Module
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "compile_spec", "load_spec"]


def load_spec(path):  # noqa: ANN001, ANN201 - thin re-export, typed in spec.py
    from resnext_compiler.spec import load_spec as _load

    return _load(path)


def compile_spec(spec):  # noqa: ANN001, ANN201 - thin re-export, typed in pipeline.py
    from resnext_compiler.pipeline import compile_spec as _compile

    return _compile(spec)
