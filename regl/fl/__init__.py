"""Federated experiments without Flower code: settings and per-client work, the benchmark
arms, the centralized reference, the offline sandbox and the run report."""
