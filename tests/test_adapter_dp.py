"""Client-level DP on the federated generator's adapter: its accounting, composed with the classifier's, and the
settings that allow or refuse it."""

import numpy as np
import pytest

from regl.cli.federated import method_lines
from regl.errors import ReglError
from regl.fill.keys import settings_key
from regl.fill.settings import FillSettings
from regl.fl.privacy import DELTA, client_level_epsilon, composed_epsilon, privacy_report
from regl.fl.settings import ExperimentSettings

FEDERATED = FillSettings(mode="diffusion", lora="federated")


def _by_hand(releases: list[tuple[float, int]], delta: float = DELTA) -> float:
    """RDP of the Gaussian mechanism at order a is a/(2z²) a round, summed over every round of every release;
    then Balle et al.'s conversion to (ε, δ), minimised over opacus's orders."""
    from opacus.accountants import RDPAccountant

    return min(
        sum(rounds * a / (2 * z * z) for z, rounds in releases)
        + np.log((a - 1) / a)
        - (np.log(delta) + np.log(a)) / (a - 1)
        for a in RDPAccountant.DEFAULT_ALPHAS
    )


def test_the_composed_epsilon_is_the_joint_historys_and_exceeds_each_alone():
    from opacus.accountants import RDPAccountant

    generator, classifier = (1.0, 10), (0.8, 20)
    joint = composed_epsilon([generator, classifier])
    accountant = RDPAccountant()
    accountant.history = [(1.0, 1.0, 10), (0.8, 1.0, 20)]
    assert joint == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-12)
    assert joint == pytest.approx(_by_hand([generator, classifier]), rel=1e-6)
    assert joint > client_level_epsilon(*generator) + 0.1 and joint > client_level_epsilon(*classifier) + 0.1
    assert joint < client_level_epsilon(*generator) + client_level_epsilon(*classifier)  # RDP beats adding ε
    # two releases at one noise are one release of all their rounds
    assert composed_epsilon([(1.0, 10), (1.0, 20)]) == pytest.approx(client_level_epsilon(1.0, 30), rel=1e-9)


def test_the_classifiers_report_composes_the_generators_and_keeps_its_own():
    generator = privacy_report(1.2, 0.5, "server", 10)
    assert generator["epsilon"] == pytest.approx(client_level_epsilon(1.2, 10)) and generator["delta"] == DELTA
    assert "generator" not in generator and "epsilon_alone" not in generator
    run = privacy_report(0.9, 1.0, "client", 20, generator)
    assert run["epsilon"] == pytest.approx(composed_epsilon([(1.2, 10), (0.9, 20)]))
    assert run["epsilon_alone"] == pytest.approx(client_level_epsilon(0.9, 20))
    assert run["epsilon_alone"] < run["epsilon"]
    assert (run["noise_multiplier"], run["clip"], run["rounds"], run["generator"]) == (0.9, 1.0, 20, generator)
    printed = method_lines({"privacy": run, "generator": {"privacy": generator}})
    assert len(printed) == 1 and f"(ε {run['epsilon']:.2f}, δ 1e-05) after 20 rounds" in printed[0]
    assert "composed with the federated generator's 10 rounds at noise multiplier 1.2, clip 0.5" in printed[0]
    assert f"the classifier's alone: ε {run['epsilon_alone']:.2f}" in printed[0]
    alone = method_lines({"generator": {"privacy": generator}})
    assert alone == [
        f"differential privacy: the federated generator's adapter client-level (ε {generator['epsilon']:.2f}, "
        "δ 1e-05) after 10 rounds at noise multiplier 1.2, clip 0.5; the classifier's updates are not private"
    ]


def test_classifier_dp_with_the_federated_generator_needs_the_adapters_dp():
    with pytest.raises(ReglError, match="--dp-noise covers the classifier's.*add --fill-adapter-dp-noise"):
        ExperimentSettings(dp_noise=1.0, fill=FEDERATED).check()
    ExperimentSettings(
        dp_noise=1.0, fill=FillSettings(mode="diffusion", lora="federated", adapter_dp_noise=1.0)
    ).check()
    ExperimentSettings(fill=FillSettings(mode="diffusion", lora="federated+local", adapter_dp_noise=0.5)).check()
    ExperimentSettings(dp_noise=1.0, fill=FillSettings(mode="diffusion", lora="client")).check()


@pytest.mark.parametrize("rule, allowed", [("ffa", True), ("fedavg", True), ("product", False)])
def test_adapter_dp_is_refused_with_the_product_rule_naming_both_flags(rule, allowed):
    settings = ExperimentSettings(fill=FillSettings(mode="diffusion", lora="federated", adapter_rule=rule))
    settings.check()  # without DP every rule goes
    private = ExperimentSettings(fill=FillSettings(**{**vars(settings.fill), "adapter_dp_noise": 0.8}))
    if allowed:
        private.check()
    else:
        with pytest.raises(ReglError, match=r"--fill-adapter-dp-noise 0\.8 .* --fill-adapter-rule product .*"):
            private.check()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("adapter_dp_noise", -0.1, "--fill-adapter-dp-noise must be ≥ 0, got -0.1"),
        ("adapter_dp_clip", 0.0, "--fill-adapter-dp-clip must be > 0, got 0.0"),
    ],
)
def test_adapter_dp_ranges_are_named(field, value, message):
    with pytest.raises(ReglError, match=message):
        ExperimentSettings(fill=FillSettings(**{"mode": "diffusion", "lora": "federated", field: value})).check()


def test_dp_rounds_are_kept_apart_and_plain_keys_stay_as_they_were(tmp_path):
    from regl.fl.federated_generator import AdapterRounds

    def rounds(**dp) -> AdapterRounds:
        return AdapterRounds(ExperimentSettings(fill=FillSettings(**{**vars(FEDERATED), "store": str(tmp_path), **dp})))

    plain = rounds()
    assert "dp" not in plain.key
    assert rounds(adapter_dp_clip=2.0).folder == plain.folder  # no noise: the clip changes nothing
    private = {rounds(adapter_dp_noise=1.0).folder, rounds(adapter_dp_noise=2.0).folder}
    private.add(rounds(adapter_dp_noise=1.0, adapter_dp_clip=2.0).folder)
    assert len(private) == 3 and plain.folder not in private
    assert "adapter_dp_noise" not in settings_key(FEDERATED) and "adapter_dp_clip" not in settings_key(FEDERATED)
    assert settings_key(FillSettings(**{**vars(FEDERATED), "adapter_dp_noise": 1.0}))["adapter_dp_noise"] == 1.0
