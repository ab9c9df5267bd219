"""Layer 2, augmentation: back-translated (+BT) training rows, generated once per subset and cached.

Imports the core only. A new translation backend lands here as a module of its own, next to the Hugging
Face seq2seq one (hf.py).
"""
from .backtranslate import AugmentResult, backtranslate, bt_cache_path, bt_file_for_config, judge  # noqa: F401
from .cache import BTSettings, meta_path  # noqa: F401
from .hf import save_tiny_translation_model  # noqa: F401
