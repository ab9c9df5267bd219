"""Layer 4, tracking: MLflow. ``writer`` records sweeps (a parent run, nested teacher and trial runs);
``store`` checks, redacts and opens tracking URIs; ``runstore`` reads any store back as a DataFrame.
Imports the core only (no Ray).
"""
