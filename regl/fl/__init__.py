"""Federated experiments: settings and per-client work, the benchmark arms, the centralized
reference, the offline sandbox and the run report, all free of Flower code; and the two
runners of the Flower apps (`regl.clients`), `simulation.py` (`regl fl`, Flower's
simulation engine) and `deployment.py` (`regl deploy`: SuperLink, SuperNodes, one
`regl serve` per node), the only modules here that import Flower or start its processes,
imported lazily by the CLI."""
