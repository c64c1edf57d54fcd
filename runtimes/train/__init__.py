"""Training runtime: `resnext-compile train`, `evaluate` and the pieces they share.

spec + CLI flags -> `config.TrainConfig` -> `runner` (run directory, torchrun launch) ->
`loop.Trainer` (one rank: SGD/Nesterov, schedule, AMP, DDP, checkpoints) over image sets
from `datasets` (digits, CIFAR, image folders, synthetic). Recipes follow the seed,
facebookresearch/ResNeXt (`main.lua`, `train.lua`, `datasets/`).
"""
