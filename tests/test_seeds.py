"""Every seed from one derivation (regl/seeds.py): a stream per purpose and keys, and caches keyed by its version."""

import io
import tokenize
from pathlib import Path

import numpy as np
import pytest

from regl.data.datasets import ImageDataset
from regl.data.partitions import PartitionSpec
from regl.errors import ReglError
from regl.fill.client import ClientFill
from regl.fill.keys import check_made_alike, source_seed
from regl.fill.plan import SOURCES
from regl.fill.settings import FillSettings, client_plan
from regl.fl import experiment
from regl.fl.settings import ExperimentSettings
from regl.fl.warm_start import warm_start_key
from regl.generate.generated_sets import save_generated, saved_part
from regl.generate.generator import image_seed
from regl.seeds import PURPOSES, SEED_DERIVATION, derive_seed
from regl.train.metrics import personalized_test_indices, uniform_test_indices

ROOT = Path(__file__).resolve().parents[1]


def test_the_same_inputs_give_the_same_seed_and_every_purpose_and_key_its_own():
    seeds = {
        (purpose, keys): derive_seed(run, purpose, *keys)
        for run in (0, 1, 7, -7, 2**40)
        for purpose in PURPOSES
        for keys in ((), (0,), (1,), (0, 1), (1, 0), (0, 0), (2**32 - 1,))
    }
    assert len(set(seeds.values())) == len(seeds)  # no two (run, purpose, keys) share a seed
    assert all(0 <= seed < 2**63 for seed in seeds.values())
    assert derive_seed(3, "local-train", 2, 5) == derive_seed(np.int64(3), "local-train", np.int64(2), 5)
    # `seed + client_id` gave seed 0 of client 1 the stream of seed 1 of client 0
    assert derive_seed(0, "personalized-test", 1) != derive_seed(1, "personalized-test", 0)
    assert derive_seed(0, "local-train", 1, 0) != derive_seed(0, "local-train", 0, 1)


def test_seeds_are_pinned_so_that_reordering_purposes_or_a_numpy_change_shows():
    """PURPOSES is append-only (a purpose's number is its place); bump SEED_DERIVATION with a new pin otherwise."""
    assert SEED_DERIVATION == 2
    assert derive_seed(0, "model-init") == 4_334_430_513_956_379_144
    assert derive_seed(0, "local-train", 1, 2) == 7_948_772_188_680_933_785
    assert derive_seed(-7, "image", 3) == 4_577_856_248_477_295_134
    assert image_seed(5, 0) == derive_seed(5, "image", 0)


def test_negative_seeds_are_read_as_int64_and_bad_inputs_are_refused():
    assert derive_seed(-7, "model-init") != derive_seed(7, "model-init")
    assert derive_seed(-(2**63), "model-init") != derive_seed(0, "model-init")
    with pytest.raises(ValueError, match="64-bit signed integer"):
        derive_seed(2**63, "model-init")
    with pytest.raises(ValueError, match="unknown seed purpose 'mix-up'"):
        derive_seed(0, "mix-up")
    with pytest.raises(ValueError, match=r"must be in \[0, 2\*\*32\)"):
        derive_seed(0, "local-train", -1, 0)
    with pytest.raises(ValueError, match=r"must be in \[0, 2\*\*32\)"):
        derive_seed(0, "image", 2**32)  # (2**32,) and (0, 1) would be the same spawn key to SeedSequence
    with pytest.raises(TypeError):
        derive_seed(0, "image", 1.0)


def test_a_purpose_is_its_own_stream_not_an_offset_of_another():
    """Adding keys or purposes never shifts another consumer: a seed depends on its own (purpose, keys) only."""
    assert len(set(PURPOSES)) == len(PURPOSES)
    assert {f"fill-{source}" for source in SOURCES} | {"fill-lora"} <= set(PURPOSES)
    assert source_seed(3, 2, "noise") == derive_seed(3, "fill-noise", 2) != source_seed(3, 2, "diffusion")
    images = [image_seed(11, i) for i in range(1000)]
    assert len(set(images)) == 1000 and image_seed(11, 1_000_003) != image_seed(12, 0)


def test_the_in_domain_and_the_personalized_test_subsets_of_a_client_are_drawn_apart(monkeypatch):
    """They once shared `seed + client_id`: for a client holding every class equally, the same subset twice."""
    # the bug in the metric functions' terms: one seed, a uniform client, the same indices
    labels = np.repeat(np.arange(10), 300)
    uniform = np.full(10, 50)
    same = 17
    assert np.array_equal(
        uniform_test_indices(labels, 10, 1000, seed=same), personalized_test_indices(labels, uniform, 1000, seed=same)
    )
    # the run's two subsets draw with seeds of their own purposes, per client
    seen: dict[str, list[int]] = {"uniform": [], "personalized": []}

    def spy(name, real):
        return lambda *args, seed: seen[name].append(seed) or real(*args, seed=seed)

    monkeypatch.setattr(experiment, "uniform_test_indices", spy("uniform", uniform_test_indices))
    monkeypatch.setattr(experiment, "personalized_test_indices", spy("personalized", personalized_test_indices))
    settings = ExperimentSettings(dataset="mnist-10k", partition=PartitionSpec("iid", 4, domain="rotate"), seed=3)
    for client in (0, 1):
        in_domain = experiment.in_domain_test_set(settings, client)
        personal = experiment.personalized_test_set(settings, client)
        assert len(in_domain) == 1000 and abs(len(personal) - 1000) <= 10
        assert not np.array_equal(in_domain.x, personal.x)
    assert seen["uniform"] == [derive_seed(3, "in-domain-test", c) for c in (0, 1)]
    assert seen["personalized"] == [derive_seed(3, "personalized-test", c) for c in (0, 1)]
    assert not set(seen["uniform"]) & set(seen["personalized"])


# seed arithmetic: a name ending in "seed" (a dotted name as one) as an operand of a binary arithmetic operator,
# in code only (an f-string is one token before Python 3.12, so arithmetic inside one is not seen)
ARITHMETIC = {"+", "-", "*", "**", "/", "//", "%", "<<", ">>", "^", "|", "&", "+=", "-=", "*="}
SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
# not a seed formula: which entry of a fixed list of looks a client gets (consecutive clients get different ones)
ALLOWED = {("regl/data/domains.py", "self.client + self.seed")}


def _operand_end(tokens: list, k: int) -> bool:
    """Whether token k can end a left operand (so the operator after it is binary, not unary)."""
    return tokens[k].type in (tokenize.NAME, tokenize.NUMBER, tokenize.STRING) or tokens[k].string in ")]}"


def _dotted(tokens: list, first: int, last: int) -> str:
    return "".join(t.string for t in tokens[first : last + 1])


def seed_arithmetic(source: str) -> list[str]:
    """`a + seed`-like expressions in Python source, each as `left op right` (dotted names whole)."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in SKIPPED]
    found = []
    i = 0
    while i < len(tokens):
        if tokens[i].type != tokenize.NAME:
            i += 1
            continue
        j = i  # a dotted name: NAME (. NAME)*
        while j + 2 < len(tokens) and tokens[j + 1].string == "." and tokens[j + 2].type == tokenize.NAME:
            j += 2
        if tokens[j].string.lower().endswith("seed"):
            name = _dotted(tokens, i, j)
            if i >= 2 and tokens[i - 1].string in ARITHMETIC and _operand_end(tokens, i - 2):
                k = i - 2  # the left operand's dotted name, back to its first part
                while k >= 2 and tokens[k - 1].string == "." and tokens[k - 2].type == tokenize.NAME:
                    k -= 2
                found.append(f"{_dotted(tokens, k, i - 2)} {tokens[i - 1].string} {name}")
            if j + 2 < len(tokens) and tokens[j + 1].string in ARITHMETIC:
                m = j + 2  # the right operand's dotted name, to its last part
                while m + 2 < len(tokens) and tokens[m + 1].string == "." and tokens[m + 2].type == tokenize.NAME:
                    m += 2
                found.append(f"{name} {tokens[j + 1].string} {_dotted(tokens, j + 2, m)}")
        i = j + 1
    return found


def test_the_scanner_sees_the_old_formulas():
    assert seed_arithmetic("x = f(seed=settings.seed * 100_003 + server_round * 1009 + client_id)") == [
        "settings.seed * 100_003"
    ]
    assert seed_arithmetic("s = run_seed+client_id\nt = self.client + self.seed\nu = -seed\nv = (\n  seed\n  + 7)") == [
        "run_seed + client_id",
        "self.client + self.seed",
        "seed + 7",
    ]
    assert seed_arithmetic("image_seed(seed, i) % 2**31\n'seed + 1'  # seed * 2\nseeds[0] + 1") == []


def test_no_seed_arithmetic_is_left_outside_the_derivation():
    found = []
    for folder in ("regl", "clients", "service"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "regl/seeds.py":
                continue
            for expression in seed_arithmetic(path.read_text()):
                if (relative, expression) not in ALLOWED:
                    found.append(f"{relative}: {expression}")
    assert found == [], "derive seeds with regl.seeds.derive_seed, not arithmetic"
    domains = (ROOT / "regl/data/domains.py").read_text()
    assert seed_arithmetic(domains) == ["self.client + self.seed"]  # the allowance is still needed


def test_every_cache_of_seeded_images_carries_the_derivation(tmp_path):
    fill = FillSettings(mode="diffusion+noise", supplement=0.5, store=str(tmp_path), base=str(tmp_path / "base"))
    client = ClientFill("mnist-10k", "a photo of {}", 1, 0, fill)
    data = ImageDataset(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 0, 1, 1]), ("a", "b"))
    plan = client_plan(fill, data.class_counts(), None)
    assert client.store_key(plan)["seeds"] == SEED_DERIVATION
    assert client.base_images_key(data, np.array([1, 1]))["seeds"] == SEED_DERIVATION
    assert client.lora_key(data, tmp_path / "base")["seeds"] == SEED_DERIVATION
    settings = ExperimentSettings(dataset="mnist-10k", fill=fill, warm_start_per_class=2)
    assert warm_start_key(settings)["seeds"] == SEED_DERIVATION
    # a store the old derivation made is another folder: its key lacked the marker
    key = client.store_key(plan)
    old = {k: v for k, v in key.items() if k != "seeds"}
    assert client.store_folder(key) != client.store_folder(old)
    # a service with the old derivation is refused, whatever else agrees
    check_made_alike(key, dict(key))
    with pytest.raises(ReglError, match="seed derivation 1, this client's fill asks for 2"):
        check_made_alike(key, old)


def test_a_generated_set_of_the_old_derivation_is_not_continued(tmp_path):
    settings = {
        **{"base": "b", "lora": "", "lora_scale": None, "steps": 2, "guidance": 3.0, "scheduler": "dpm", "seed": 0},
        **{"base_fingerprint": "f", "template": "a {}", "per_class": 3},
    }
    data = ImageDataset(np.zeros((2, 28, 28, 1), np.uint8), np.array([0, 0]), ("a", "b"))
    save_generated(tmp_path / "old.npz", data, settings)  # drawn before image seeds came from regl.seeds
    with pytest.raises(ReglError, match=r"other settings \(seeds '\(not recorded\)', not 2\)"):
        saved_part(tmp_path / "old.npz", {**settings, "seeds": SEED_DERIVATION}, ("a", "b"), 28, 1)
    save_generated(tmp_path / "new.npz", data, {**settings, "seeds": SEED_DERIVATION})
    assert saved_part(tmp_path / "new.npz", {**settings, "seeds": SEED_DERIVATION}, ("a", "b"), 28, 1) is not None


def test_the_experiments_training_seeds_are_derived_per_client_and_round(monkeypatch):
    seen = []
    monkeypatch.setattr(experiment, "train", lambda model, data, settings, seed, **options: seen.append(seed) or 0.0)
    monkeypatch.setattr(experiment, "evaluate", lambda model, data: {"accuracy": 0.0})
    settings = ExperimentSettings(dataset="mnist-10k", partition=PartitionSpec("iid", 4), seed=5)
    model = experiment.new_model(settings)
    experiment.train_client(experiment.client_view(settings, 2), model, server_round=3)
    experiment.train_client(experiment.client_view(settings, 3), model, server_round=2)
    assert seen == [derive_seed(5, "local-train", 2, 3), derive_seed(5, "local-train", 3, 2)]


def test_every_recorded_environment_names_the_seed_derivation():
    """config.json, generator evaluations and sampler sweeps record it: results of the older seeds can be told apart."""
    from regl.environment import describe

    assert describe()["seed_derivation"] == SEED_DERIVATION
