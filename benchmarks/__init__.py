"""fastnn benchmarks: per-op kernels (ops.py) and whole training steps (step.py).

Run everything with ``python -m benchmarks.run [--quick] [--device cpu|cuda|all]``;
results land in benchmarks/results/<device>.{json,csv,md,png}.
"""
