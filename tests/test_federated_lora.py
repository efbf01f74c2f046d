"""The federated generator's client side on a tiny random pipeline: rounds from the global adapter, saved for
stock diffusers."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from regl.compute import Compute
from regl.data.datasets import ImageDataset
from regl.fl.adapter_aggregation import aggregate, products
from regl.generate.federated_lora import client_training, initial_adapter, local_round, save_adapter
from regl.generate.generator import Generator, load_pipeline
from regl.generate.settings import LoraSettings

CLASSES = ("sneaker", "bag", "coat")
TEMPLATE = "a photo of a {}"
SETTINGS = LoraSettings(rank=2, steps=3, batch_size=4, lr=1e-2, checkpoint_every=100)


@pytest.fixture(scope="module")
def base(three_class_base):
    return three_class_base


def _client(labels: list[int], shade: int) -> ImageDataset:
    x = np.full((len(labels), 28, 28, 1), shade, dtype=np.uint8)
    return ImageDataset(x, np.asarray(labels, dtype=np.int64), CLASSES)


def test_two_clients_rounds_move_the_adapter_and_ffa_keeps_every_a(base):
    start = initial_adapter(base, CLASSES, TEMPLATE, SETTINGS)
    assert all(not value.any() for name, value in start.items() if ".lora_B." in name)  # peft starts B at zero
    trainings = [
        client_training(base, _client(labels, shade), CLASSES, TEMPLATE, SETTINGS, Compute("cpu"), train_a=False)
        for labels, shade in (([0, 0, 0], 200), ([1, 1, 2], 90))
    ]
    adapter = start
    for round_ in range(2):
        sent = [local_round(training, adapter, steps=2, seed=round_ * 10 + i) for i, training in enumerate(trainings)]
        for trained, loss in sent:
            assert np.isfinite(loss)
            assert all((trained[name] == adapter[name]).all() for name in adapter if ".lora_A." in name)
        adapter = aggregate(adapter, [trained for trained, _ in sent], [3, 3], "ffa")
    assert any(np.abs(value).max() > 0 for value in products(adapter).values())
    assert all((adapter[name] == start[name]).all() for name in start if ".lora_A." in name)


@pytest.mark.parametrize("targets", ["attention", "all"])
def test_a_federated_adapter_loads_with_stock_load_lora_weights(base, tmp_path, targets):
    settings = replace(SETTINGS, targets=targets)
    training = client_training(base, _client([0, 1], 150), CLASSES, TEMPLATE, settings, Compute("cpu"), train_a=True)
    adapter, _ = local_round(training, initial_adapter(base, CLASSES, TEMPLATE, settings), steps=3, seed=1)
    adapted = {name.split(".lora_A.")[0] for name in adapter if ".lora_A." in name}
    assert any(name.endswith("resnets.0.conv1") for name in adapted) == (targets == "all")
    assert all(any(name.endswith(layer) for layer in ("to_q", "to_k", "to_v", "to_out.0")) for name in adapted) == (
        targets == "attention"
    )
    save_adapter(adapter, base, tmp_path / "federated", {"class_names": list(CLASSES), "rounds": 1})

    def a_bag(pipe) -> np.ndarray:
        import torch

        generator = torch.Generator().manual_seed(3)
        return pipe("a photo of a bag", num_inference_steps=2, generator=generator, output_type="np").images[0]

    stock = load_pipeline(base)
    stock.load_lora_weights(tmp_path / "federated")  # a plain diffusers call
    plain = load_pipeline(base)
    assert np.abs(a_bag(stock) - a_bag(plain)).max() > 1e-4
    trained = training.generator.pipe  # the adapter as it trained, in memory: the stock load draws the same
    np.testing.assert_allclose(a_bag(stock), a_bag(trained), atol=1e-4)
    ours = Generator(base, CLASSES, TEMPLATE, lora=tmp_path / "federated")  # and through regl, base checked
    assert ours.lora == tmp_path / "federated"


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_prompt_dropout_trains_that_share_of_steps_on_the_empty_prompt(base, monkeypatch, dropout):
    import regl.generate.lora as lora

    seen = []
    real_loss = lora.denoising_loss

    def recording_loss(unet, scheduler, latents, embeddings, rng, snr_gamma):
        seen.append(embeddings.detach().clone())
        return real_loss(unet, scheduler, latents, embeddings, rng, snr_gamma)

    monkeypatch.setattr(lora, "denoising_loss", recording_loss)
    settings = replace(SETTINGS, batch_size=32, cfg_dropout=dropout)
    training = client_training(base, _client([0, 1, 2], 120), CLASSES, TEMPLATE, settings, Compute("cpu"))
    empty = training.embeddings[-1]
    assert training.embeddings.shape[0] == 2 * len(CLASSES) + 1  # own prompts, the priors' prompts, ""
    local_round(training, initial_adapter(base, CLASSES, TEMPLATE, settings), steps=4, seed=2)
    rows = torch.cat(seen)
    share = float((rows == empty).flatten(1).all(dim=1).float().mean())
    assert share == 0.0 if dropout == 0 else 0.3 < share < 0.7  # 128 draws at 0.5


def test_each_client_trains_and_draws_under_its_own_look_token(base, tmp_path):
    from regl.errors import ReglError
    from regl.fill.client import ClientFill
    from regl.fill.keys import adapter_digest
    from regl.fill.settings import FillSettings
    from regl.fl.federated_generator import adapter_settings
    from regl.fl.settings import ExperimentSettings
    from regl.generate.diffusion_loss import encode_prompts
    from regl.generate.settings import client_look_token

    fill = FillSettings(mode="diffusion", lora="federated", lora_style_token="sks", store=str(tmp_path), base=str(base))
    run = ExperimentSettings(fill=fill)
    assert [adapter_settings(run, client).style_token for client in (0, 7)] == ["sks0", "sks7"]
    assert adapter_settings(run).style_token == "sks"  # the kept rounds' key names the word, not a client
    assert client_look_token("", 7) == ""
    with pytest.raises(ReglError, match="at most 32"):
        client_look_token("x" * 32, 7)

    # a round trains the client's own images under its token
    settings = replace(SETTINGS, style_token="sks1")
    training = client_training(base, _client([0, 1], 150), CLASSES, TEMPLATE, settings, Compute("cpu"))
    pipe = training.generator.pipe
    tokened = encode_prompts(pipe.tokenizer, pipe.text_encoder, [f"a photo of a {c} sks1" for c in CLASSES])
    torch.testing.assert_close(training.embeddings[: len(CLASSES)], tokened.float())
    assert not torch.allclose(training.embeddings[: len(CLASSES)], training.embeddings[len(CLASSES) : -1])

    # and the client's fill draws the classes it lacks under it, with the federation's adapter
    adapter = initial_adapter(base, CLASSES, TEMPLATE, SETTINGS)
    client = ClientFill("fashion-mnist", TEMPLATE, 2, 0, fill, adapter_digest=adapter_digest(adapter), adapter=adapter)
    assert client._federated_generator(_client([0], 100), base).prompt(1) == "a photo of a bag sks2"
