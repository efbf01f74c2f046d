"""One federated experiment's settings: every run option declared once, on its field (regl/options.py).

Torch-free, so the `regl` command reads its options from here without importing torch.
`to_config()` is the flat kebab-case form of Flower's run config and ConfigRecord;
`[tool.flwr.app.config]` in pyproject.toml lists the same keys (tests/test_cli.py compares
the values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regl.data.partitions import PartitionSpec
from regl.errors import ReglError
from regl.fill.settings import FillSettings
from regl.fl.adapter_aggregation import PRIVATE_RULES
from regl.options import cast, check_ranges, config_fields, option
from regl.train.settings import LOSSES, TrainSettings

MODELS = ("", "cnn", "resnet18")
INITS = ("synthetic", "public")
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam")
AGGREGATE_WEIGHTS = ("examples", "class-balanced")
DP_CLIPPING = ("client", "server")


@dataclass(frozen=True)
class ExperimentSettings:
    dataset: str = option(
        "mnist-10k",  # shipped with the package: runs offline out of the box
        "mnist-10k (shipped), fashion-mnist, or a folder with one subfolder per class",
        group="data",
    )
    classes: str = option(
        "",
        "the federation's class list, comma-separated; empty: --dataset's (needs --test-data when given)",
        group="node-local data",
    )
    test_data: str = option(
        "",
        "the server's own test set (a folder or npz labelled by the run's classes); empty: --dataset's",
        group="node-local data",
    )
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    model: str = option(
        "", "classifier; empty: cnn for grayscale, resnet18 for RGB data", choices=MODELS, group="training"
    )
    num_rounds: int = option(20, "federated rounds", flag="--rounds", ge=1, group="training")
    clients_per_round: int = option(
        0,
        "clients sampled to train each round (and each round of the federated generator), seeded by --seed; a "
        "client makes its fill the first round it is sampled; 0: every client, every round",
        ge=0,
        group="training",
    )
    train: TrainSettings = field(default_factory=TrainSettings)
    seed: int = option(0, "partition, model and training seed", ge=-(2**63), le=2**63 - 1, group="data")
    out_dir: str = option(
        "", "where rounds.json, summary.json and accuracy.png go; empty: runs/<run name>", group="training"
    )
    fill: FillSettings = field(default_factory=FillSettings)
    # before round 1 the server trains the global model on balanced images (regl/fl/warm_start.py)
    warm_start_per_class: int = option(
        0,
        "images of every class the server trains on (--init synthetic: generated with the base at the fill's "
        "steps and guidance); 0: off",
        ge=0,
        group="warm start",
    )
    warm_start_epochs: int = option(20, "epochs over those images", ge=1, group="warm start")
    init: str = option(
        "synthetic",
        "what the warm start trains on: synthetic (the base's images, no public data needed) or public (the "
        "public pool's real images: transfer learning)",
        choices=INITS,
        group="warm start",
    )
    init_freeze: bool = option(
        False,
        "keep the warm-started feature extractor frozen: clients train the output layer only",
        group="warm start",
    )
    loss: str = option(
        "ce",
        "local loss: cross-entropy, focal (γ 2), class-balanced (β 0.9999), balanced-softmax, fedlc (τ 1), "
        "fedrs (α 0.5), ratio (Ratio Loss with the server's composition monitor)",
        choices=LOSSES,
        group="methods",
    )
    augment: bool = option(
        False,
        "random shifts, rotations ≤ 10°, brightness/contrast, and mirror flips where the classes allow them",
        group="methods",
    )
    strategy: str = option(
        "fedavg",
        "the server's strategy: fedavg, fedprox (clients add μ/2·‖w − w_global‖²), fedavgm (server momentum "
        "0.9), fedadam (server Adam, η 0.01)",
        choices=STRATEGIES,
        group="methods",
    )
    fedprox_mu: float = option(0.01, "FedProx's μ", ge=0, group="methods")
    aggregate_weight: str = option(
        "examples",
        "each client's weight in the average: its examples, or its mean share of each class's count",
        choices=AGGREGATE_WEIGHTS,
        group="methods",
    )
    dp_noise: float = option(
        0.0,
        "client-level DP: Gaussian noise multiplier z on the uniform mean of clipped updates; 0: off",
        ge=0,
        group="methods",
    )
    dp_clip: float = option(1.0, "L2 bound on each client's update", gt=0, group="methods")
    dp_clipping: str = option(
        "client",
        "who clips the updates: each client (Flower's fixedclipping_mod) or the server",
        choices=DP_CLIPPING,
        group="methods",
    )
    # one node's own images (its SuperNode's --node-config data-dir), instead of a cut of `dataset`;
    # never in the run config: each node sets its own
    data_dir: str = ""

    def to_config(self) -> dict[str, Any]:
        """Flat, kebab-case keys: the form of Flower's run config and ConfigRecord."""
        return {cf.key: cf.value_in(self) for cf in config_fields(ExperimentSettings)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ExperimentSettings:
        """Inverse of to_config; keys it does not know are ignored, missing ones default."""
        nested: dict[str, dict[str, Any]] = {"partition": {}, "train": {}, "fill": {}}
        top: dict[str, Any] = {}
        for cf in config_fields(cls):
            if cf.key in config:
                value = cast(cf, config[cf.key])
                (nested[cf.path[0]] if len(cf.path) == 2 else top)[cf.path[-1]] = value
        seed = top.get("seed", 0)
        return cls(
            **top,
            partition=PartitionSpec(**nested["partition"], seed=seed),
            train=TrainSettings(**nested["train"]),
            fill=FillSettings(**nested["fill"]),
        )

    def check(self) -> None:
        """Reject values out of their declared range and impossible combinations, naming the option."""
        self.fill.check()
        check_ranges(self)
        if self.clients_per_round > self.partition.num_clients:
            raise ReglError(
                f"--clients-per-round {self.clients_per_round} is more than the federation's "
                f"{self.partition.num_clients} clients (--clients)"
            )
        if self.dp_noise and self.aggregate_weight != "examples":
            raise ReglError("differential privacy averages the clients' updates uniformly: drop --aggregate-weight")
        if self.dp_noise and self.strategy in ("fedavgm", "fedadam"):
            raise ReglError(
                f"Flower adds the DP noise after {self.strategy}'s server step, which the client-level accounting "
                "does not cover: use --strategy fedavg or fedprox with --dp-noise"
            )
        if self.fill.adapter_dp_noise and self.fill.adapter_rule not in PRIVATE_RULES:
            raise ReglError(
                f"--fill-adapter-dp-noise {self.fill.adapter_dp_noise:g} noises the mean of the clients' clipped "
                f"adapter updates, which --fill-adapter-rule {self.fill.adapter_rule} re-factorises by SVD outside "
                f"the clip's bound: use --fill-adapter-rule {' or '.join(PRIVATE_RULES)}, or drop "
                "--fill-adapter-dp-noise"
            )
        generator = self.fill.lora.startswith("federated") and "diffusion" in self.fill.sources
        if self.dp_noise and generator and not self.fill.adapter_dp_noise:
            raise ReglError(
                "--dp-noise covers the classifier's updates, not the federated generator's adapter updates: add "
                "--fill-adapter-dp-noise (the adapter's own client-level DP, composed into the run's ε), drop "
                "--dp-noise or use --fill-lora client"
            )
        if self.dp_noise and self.init_freeze:
            raise ReglError("the DP noise lands on every weight, the frozen feature extractor too: drop --init-freeze")
        if self.loss == "ratio" and self.strategy in ("fedavgm", "fedadam"):
            raise ReglError(
                f"the Ratio Loss's monitor reads the round's averaged update, which {self.strategy}'s server step "
                "changes: use --strategy fedavg or fedprox with --loss ratio"
            )
        if self.dp_noise and self.loss == "ratio":
            raise ReglError(
                "the Ratio Loss's monitor reads each round's aggregate before the DP noise, and its Ra goes back "
                "to the clients: --loss ratio and --dp-noise cannot be combined"
            )
        if self.classes and not self.test_data:
            raise ReglError("--classes gives the federation its own class list: give the server's --test-data too")
        if self.init_freeze and not self.warm_start_per_class:
            raise ReglError("--init-freeze keeps the warm start's feature extractor: give --warm-start-per-class")

    @property
    def name(self) -> str:
        sampled = f"-sample{self.clients_per_round}" if self.clients_per_round else ""
        name = f"{self.dataset.rstrip('/').split('/')[-1]}-{self.partition.describe()}{sampled}-s{self.seed}"
        if self.warm_start_per_class:
            name += f"-warm{self.warm_start_per_class}" + ("-public" if self.init == "public" else "")
        for value, default in ((self.loss, "ce"), (self.strategy, "fedavg"), (self.aggregate_weight, "examples")):
            name += "" if value == default else f"-{value}"
        name += "-augment" if self.augment else ""
        name += f"-dp{self.dp_noise:g}" if self.dp_noise else ""
        return name if self.fill.mode == "none" else f"{name}-fill-{self.fill.mode}"
