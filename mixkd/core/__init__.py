"""Layer 1, the core: what a MixKD run is made of. Config, GLUE tasks and data, models and student
cutting, mixup, loss terms, metrics and the training loop (trainer, checkpoints, events).

Imports PyTorch, transformers and datasets only: never Ray, MLflow or Optuna, and no other mixkd layer
(tests/test_architecture.py checks the import graph).
"""
