"""Layer 6, platform: Ray. The Ray Train function, the Tune + Optuna search space, and sweeps (spec,
preparation of teachers, +BT files and latencies, the trial function, the Tune driver, the summary).
Imports every layer below it; nothing below imports Ray.
"""
