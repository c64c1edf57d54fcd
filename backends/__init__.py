"""Backends: a shaped IR graph -> files. Installed as `resnext_compiler.backends`.

This folder is the top-level `backends/` of the repository; setuptools' `package-dir` maps it
to the import package `resnext_compiler.backends`. `base.py` holds the `Backend` interface,
`CompileOptions` and `SingleFileBackend` (`-o FILE|DIR`); `registry.py` finds backends by name
in the entry-point group `resnext_compiler.backends`, which is the only list of them
(`resnext-compile compile --help` shows it). A backend is one file plus one entry point; the
other modules here are the helpers backends share (the ONNX graph and writer, int8
quantization, the torch module and templates).

Backends import the compiler core and nothing from `resnext_compiler.runtimes`.
"""
