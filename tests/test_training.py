import numpy as np
import torch

from regl.data.datasets import load_split
from regl.data.partitions import PartitionSpec
from regl.fl.experiment import ExperimentSettings
from regl.train.loop import TrainSettings, evaluate, train
from regl.train.models import ResNet18, build_model


def test_model_output_shapes():
    assert build_model("cnn", 1, 10, 28)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert ResNet18(3, 7)(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_training_learns_mnist():
    split = load_split("mnist-10k")
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 28)
    before = evaluate(model, split.test)["accuracy"]
    sample = np.random.default_rng(0).choice(len(split.private), 3000, replace=False)
    train(model, split.private.subset(sample), TrainSettings(epochs=2, lr=0.05), seed=0)
    after = evaluate(model, split.test)
    assert before < 0.2
    assert after["accuracy"] > 0.8
    assert 0.9 < after["auc"] <= 1.0
    assert len(after["per_class_accuracy"]) == 10


def test_settings_round_trip_through_flat_config():
    settings = ExperimentSettings(
        dataset="fashion-mnist",
        partition=PartitionSpec("dirichlet", 4, beta=0.05, seed=7),
        num_rounds=3,
        train=TrainSettings(epochs=2, lr=0.05),
        seed=7,
        out_dir="runs/x",
    )
    config = settings.to_config()
    assert all("_" not in key for key in config)
    assert ExperimentSettings.from_config(config) == settings
