"""Layer 2, augmentation: back-translated (+BT) training rows, generated once per subset and cached.

Imports the core only. A new translation backend lands here next to the Hugging Face seq2seq one.
"""
from .backtranslate import (AugmentResult, BTSettings, backtranslate, bt_cache_path, bt_file_for_config,  # noqa: F401
                            judge, meta_path, save_tiny_translation_model)
