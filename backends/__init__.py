"""Backends: a shaped IR graph -> files. Installed as `resnext_compiler.backends`.

This folder is the top-level `backends/` of the repository; setuptools' `package-dir` maps it
to the import package `resnext_compiler.backends`. It holds:

- `base.py`: the `Backend` interface, `CompileOptions`, `SingleFileBackend` (`-o FILE|DIR`);
- `registry.py`: backends by name (entry-point group `resnext_compiler.backends`);
- `torch_module.py` (an in-memory `nn.Module`), `torch_source.py` (+ `templates/`, standalone
  PyTorch source);
- `onnx.py`, `onnx_graph.py`, `onnx_writer.py` (ONNX, written without torch),
  `onnx_quantize.py` (`--dtype int8`: calibrated static quantization) and `triton.py` (a Triton
  model repository around it);
- `dot.py` (a Graphviz picture).

Backends import the compiler core and nothing from `resnext_compiler.runtimes`.
"""
