"""Runtimes: what runs a compiled model. Installed as `resnext_compiler.runtimes`.

This folder is the top-level `runtimes/` of the repository; setuptools' `package-dir` maps it
to the import package `resnext_compiler.runtimes`. It holds:

- `train/`: training and evaluation of the PyTorch module (`resnext-compile train`,
  `evaluate`, `plot`): data sets, the training loop, DDP, checkpoints, training curves;
- `serve/`: the ONNX model over HTTP with onnxruntime (`resnext-compile serve`); no torch;
- `evaluation.py`: `evaluate MODEL.onnx|REPO`, a compiled artifact measured with onnxruntime
  and its own input contract (no torch);
- `image_folders.py`: class folders of images, listed the same way for training, evaluation
  and int8 calibration.

Runtimes use the backends and the compiler core; nothing there imports a runtime.
"""
