"""One federated experiment's settings: the single place their defaults are written.

Torch-free, so the `regl` command reads its option defaults from here without importing
torch. `to_config()` is the flat kebab-case form of Flower's run config and ConfigRecord;
`[tool.flwr.app.config]` in pyproject.toml lists the same keys (tests/test_cli.py compares
the values).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from regl.data.partitions import PartitionSpec
from regl.errors import ReglError
from regl.fill.settings import FillSettings
from regl.train.settings import TrainSettings

INITS = ("synthetic", "public")
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam")
AGGREGATE_WEIGHTS = ("examples", "class-balanced")
DP_CLIPPING = ("client", "server")


@dataclass(frozen=True)
class ExperimentSettings:
    dataset: str = "mnist-10k"  # shipped with the package: runs offline out of the box
    classes: str = ""  # the federation's class list, comma-separated; empty: the dataset's
    test_data: str = ""  # the server's own test set (folder or npz, by `classes`); empty: the dataset's test split
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    model: str = ""  # empty: the default for the data's channel count
    num_rounds: int = 20
    train: TrainSettings = field(default_factory=TrainSettings)
    seed: int = 0
    out_dir: str = ""
    fill: FillSettings = field(default_factory=FillSettings)
    # before round 1 the server trains the global model on this many images of every class
    # (regl/fl/warm_start.py): base-generated (init synthetic) or from the public pool (init public); 0: off
    warm_start_per_class: int = 0
    warm_start_epochs: int = 20
    init: str = "synthetic"
    init_freeze: bool = False  # after the warm start, clients train the output layer only
    loss: str = "ce"  # the clients' local loss (regl/train/losses.py)
    augment: bool = False  # random shifts, small rotations, brightness/contrast (regl/train/augment.py)
    strategy: str = "fedavg"  # fedavg, fedprox, fedavgm, fedadam (clients/strategy.py)
    fedprox_mu: float = 0.01  # FedProx's proximal weight μ
    aggregate_weight: str = "examples"  # or class-balanced (clients/strategy.py)
    dp_noise: float = 0.0  # Gaussian noise multiplier on the aggregate; 0: no differential privacy
    dp_clip: float = 1.0  # the L2 bound on each client's update
    dp_clipping: str = "client"  # where updates are clipped: client (fixedclipping_mod) or server
    # one node's own images (its SuperNode's --node-config data-dir), instead of a cut of `dataset`;
    # never in the run config: each node sets its own
    data_dir: str = ""

    def to_config(self) -> dict[str, Any]:
        """Flat, kebab-case keys: the form of Flower's run config and ConfigRecord."""
        flat = {k: v for k, v in asdict(self).items() if k not in ("partition", "train", "fill", "data_dir")}
        flat.update({f"partition-{k}": v for k, v in asdict(self.partition).items() if k != "seed"})
        flat.update({f"train-{k}": v for k, v in asdict(self.train).items()})
        flat.update({("fill" if k == "mode" else f"fill-{k}"): v for k, v in asdict(self.fill).items()})
        return {k.replace("_", "-"): v for k, v in flat.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ExperimentSettings:
        """Inverse of to_config; keys it does not know are ignored, missing ones default."""
        flat = {k.replace("-", "_"): v for k, v in config.items()}
        seed = int(flat.get("seed", 0))
        partition = PartitionSpec(**_typed(PartitionSpec(), flat, "partition_"), seed=seed)
        train_settings = TrainSettings(**_typed(TrainSettings(), flat, "train_"))
        fill = FillSettings(**_typed(FillSettings(), {"fill_mode": flat.get("fill", "none"), **flat}, "fill_"))
        return cls(**_typed(cls(), flat, ""), partition=partition, train=train_settings, fill=fill)

    def check(self) -> None:
        """Reject unknown method names and impossible combinations, naming the option."""
        from regl.train.losses import check_loss

        check_loss(self.loss)
        choices = {
            "init": (self.init, INITS),
            "strategy": (self.strategy, STRATEGIES),
            "aggregate-weight": (self.aggregate_weight, AGGREGATE_WEIGHTS),
            "dp-clipping": (self.dp_clipping, DP_CLIPPING),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ReglError(f"unknown --{key} {value!r}; use one of {', '.join(allowed)}")
        if not (self.fedprox_mu >= 0 and self.dp_noise >= 0 and self.dp_clip > 0):  # NaN fails too
            raise ReglError(
                f"--fedprox-mu and --dp-noise must be ≥ 0 and --dp-clip > 0, got {self.fedprox_mu}, "
                f"{self.dp_noise} and {self.dp_clip}"
            )
        if self.dp_noise and self.aggregate_weight != "examples":
            raise ReglError("differential privacy averages the clients' updates uniformly: drop --aggregate-weight")
        if self.dp_noise and self.strategy in ("fedavgm", "fedadam"):
            raise ReglError(
                f"Flower adds the DP noise after {self.strategy}'s server step, which the client-level accounting "
                "does not cover: use --strategy fedavg or fedprox with --dp-noise"
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
        name = f"{self.dataset.rstrip('/').split('/')[-1]}-{self.partition.describe()}-s{self.seed}"
        if self.warm_start_per_class:
            name += f"-warm{self.warm_start_per_class}" + ("-public" if self.init == "public" else "")
        for value, default in ((self.loss, "ce"), (self.strategy, "fedavg"), (self.aggregate_weight, "examples")):
            name += "" if value == default else f"-{value}"
        name += "-augment" if self.augment else ""
        name += f"-dp{self.dp_noise:g}" if self.dp_noise else ""
        return name if self.fill.mode == "none" else f"{name}-fill-{self.fill.mode}"


def _typed(defaults: Any, flat: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Values of `flat` for the fields of `defaults`, cast to each default's type."""
    out = {}
    for f in fields(defaults):
        if prefix + f.name in flat and f.name != "seed" and not is_dataclass(getattr(defaults, f.name)):
            kind = type(getattr(defaults, f.name))
            value = flat[prefix + f.name]
            is_text_flag = kind is bool and isinstance(value, str)
            out[f.name] = value.lower() in ("1", "true", "yes") if is_text_flag else kind(value)
    if not prefix and "seed" in flat:
        out["seed"] = int(flat["seed"])
    return out
