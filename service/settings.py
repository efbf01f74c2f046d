"""Service settings: `REGL_*` environment variables, overridden by `regl serve` options."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from regl.compute import DEVICES, DTYPES
from regl.data.partitions import PartitionSpec
from regl.errors import ReglError
from regl.generate.generator import DEFAULT_BASE
from regl.generate.settings import CLASSES_OF, TORCH_THREADS

PARTITION = PartitionSpec()  # a simulated client's share is cut as `regl fl` cuts it


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGL_", extra="forbid")

    base: Path = DEFAULT_BASE
    lora: Path | None = None
    data: str = ""  # the client's images: a folder (one subfolder per class) or a built-in dataset
    dataset: str = CLASSES_OF  # class names, prompt template and image shape when there is no data
    # a federation node's own `data`: its run's class list, comma-separated (regl/data/node_data.py);
    # the service then fine-tunes, fills and trains on the node's training split only
    classes: str = ""
    client: int = -1  # with a built-in `data`: this client's share of the partition below
    clients: int = PARTITION.num_clients
    partition: str = PARTITION.kind
    classes_per_client: int = PARTITION.classes_per_client
    beta: float = PARTITION.beta
    imbalance_ratio: float = PARTITION.imbalance_ratio
    domain: str = PARTITION.domain  # the client's images in its own look (regl/data/domains.py)
    look: str = PARTITION.look  # the whole federation's shared look (regl/data/looks.py)
    partition_seed: int = PARTITION.seed
    host: str = "127.0.0.1"
    port: int = 8000
    token: SecretStr | None = None
    threads: int = Field(TORCH_THREADS, ge=1)
    device: Literal[DEVICES] = "auto"  # regl/compute.py decides what auto means
    dtype: Literal[DTYPES] = "auto"
    max_images_per_request: int = Field(64, ge=1)
    max_batch: int = Field(64, ge=1)
    batch_wait_ms: float = Field(20.0, ge=0)
    max_queue: int = Field(128, ge=1)
    request_timeout_s: float = Field(300.0, gt=0)
    max_finetune_steps: int = Field(5000, ge=1)  # LoRA steps of one fine-tune or fill job
    store: Path = Path(".regl-cache/service")

    @field_validator("token", mode="before")
    @classmethod
    def empty_token_is_none(cls, value):
        """REGL_TOKEN= (empty) means no token, not a token nobody can send."""
        return None if value == "" else value

    @model_validator(mode="after")
    def classes_need_data(self) -> ServiceSettings:
        if self.classes and not self.data:
            raise ValueError("classes names a federation node's class list: give the node's --data too")
        return self

    def partition_spec(self) -> PartitionSpec:
        """The partition a built-in `data` is cut by: the one `regl fl` cuts with the same fields."""
        return PartitionSpec(
            kind=self.partition,
            num_clients=self.clients,
            classes_per_client=self.classes_per_client,
            beta=self.beta,
            imbalance_ratio=self.imbalance_ratio,
            domain=self.domain,
            look=self.look,
            seed=self.partition_seed,
        )

    @staticmethod
    def partition_fields(spec: PartitionSpec) -> dict[str, object]:
        """The fields that make `partition_spec()` give `spec`."""
        return {
            "clients": spec.num_clients,
            "partition": spec.kind,
            "classes_per_client": spec.classes_per_client,
            "beta": spec.beta,
            "imbalance_ratio": spec.imbalance_ratio,
            "domain": spec.domain,
            "look": spec.look,
            "partition_seed": spec.seed,
        }

    def environment(self) -> dict[str, str]:
        """The REGL_* variables that give a child `regl serve` these settings: how `regl deploy` starts a node's.

        Only the fields set on this object; the token stays out, and the child inherits REGL_TOKEN.
        """
        return {
            f"REGL_{name.upper()}": str(getattr(self, name))
            for name in self.model_fields_set
            if name != "token" and getattr(self, name) is not None
        }

    def check_exposure(self) -> None:
        """A service that answers beyond this machine must ask for a token."""
        if not self.token and not is_loopback(self.host):
            raise ReglError(f"refusing to listen on {self.host} without a token: set REGL_TOKEN, or bind 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
