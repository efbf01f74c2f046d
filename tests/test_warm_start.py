"""The server's warm start: base-generated balanced images train the initial global model."""

import pytest
import torch

from regl.fill.settings import FillSettings
from regl.fl.experiment import ExperimentSettings, new_model
from regl.fl.progress import count_progress
from regl.fl.warm_start import warm_start, warm_start_data


def settings_for(base, tmp_path, per_class: int = 2) -> ExperimentSettings:
    fill = FillSettings(base=str(base), steps=2, guidance=2.0, store=str(tmp_path / "store"))
    return ExperimentSettings(dataset="mnist-10k", fill=fill, warm_start_per_class=per_class, warm_start_epochs=1)


def test_warm_start_makes_a_balanced_set_once_and_reuses_it(service_base, tmp_path):
    settings = settings_for(service_base, tmp_path)
    lines: list[str] = []
    data, seconds = warm_start_data(settings, lines.append)
    assert data.class_counts().tolist() == [2] * 10
    assert data.x.shape[1:] == (28, 28, 1) and seconds > 0
    assert lines and lines[-1].startswith("warm start: 20/20 images") and "left" not in lines[-1]
    again, seconds_again = warm_start_data(settings, lines.append)
    assert seconds_again == 0.0 and (again.x == data.x).all()
    assert len(warm_start_data(settings_for(service_base, tmp_path, per_class=1), print)[0]) == 10  # another key


@pytest.mark.slow
def test_warm_start_trains_the_model_in_place(service_base, tmp_path):
    settings = settings_for(service_base, tmp_path)
    model = new_model(settings)
    before = [p.detach().clone() for p in model.parameters()]
    timings = warm_start(settings, model, print)
    assert set(timings) == {"generate_seconds", "train_seconds"}
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.get_num_threads() == 1  # the caller's thread count is restored


def test_count_progress_writes_about_ten_lines_ending_with_the_total():
    lines: list[str] = []
    on_batch = count_progress("warm start", "images", 1000, lines.append)
    for done in range(16, 1000, 16):
        on_batch(done)
    on_batch(1000)
    assert 9 <= len(lines) <= 11
    assert lines[0].startswith("warm start: 112/1000 images") and "left" in lines[0]
    assert lines[-1].startswith("warm start: 1000/1000 images")
