"""Layer 5, deploy: what it takes to ship a student. Latency measurement (cached by architecture),
the Pareto choice under a latency budget, export and the model card. Imports core, jobs and tracking
(the run store); never Ray.
"""
