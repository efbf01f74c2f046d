"""The fill's cost model: its arithmetic, the GPU scaling, and the prediction lines bench-generator prints."""

import pytest

from regl.generate.bench import cost_lines, passes_per_step
from regl.generate.cost_model import FillCost

COST = FillCost(setup_seconds=2.0, lora_step_seconds=0.1, pass_seconds=0.001, pass_flops=1e8)


def test_a_clients_fill_is_setup_plus_lora_steps_plus_image_passes():
    assert COST.client_seconds(images=500, sampler_steps=10, passes_per_step=2, lora_steps=100) == pytest.approx(
        2.0 + 10.0 + 10.0
    )
    assert COST.client_seconds(500, 4, 1, lora_steps=0) == pytest.approx(2.0)  # no LoRA: no setup either


def test_on_a_device_the_arithmetic_scales_with_the_flops_and_setup_stays():
    gpu = COST.on_device(peak_flops=1e12, utilisation=0.5)
    assert gpu.pass_seconds == pytest.approx(1e8 / 5e11)
    assert gpu.lora_step_seconds == pytest.approx(3 * 16 * 1e8 / 5e11)
    assert gpu.setup_seconds == COST.setup_seconds


def test_guidance_doubles_the_passes_except_for_the_few_step_sampler():
    assert passes_per_step("dpm", 1.5) == 2 and passes_per_step("dpm", 1.0) == 1 and passes_per_step("lcm", 1.5) == 1


def test_the_prediction_lines_say_they_are_predictions_for_1000_clients():
    lines = cost_lines(COST, images=240, lora_steps=20, utilisation=0.05, few_step_pass_seconds=0.002)
    assert lines[0].startswith("cost model (measured here): a client's fill ≈ 2.0s + 0.100s × LoRA steps")
    assert lines[1] == "the few-step sampler's UNet pass (its adapter unfused): 2.000 ms"
    cpu = 1000 * COST.client_seconds(240, 10, 2, 20) / 3600
    few = 1000 * (2.0 + 20 * 0.1 + 240 * 1 * 1 * 0.002) / 3600  # one lcm step at the few-step pass
    assert lines[2].startswith("prediction, 1,000 clients of 240 images with 20 LoRA steps each, on this CPU: ")
    assert f"10 dpm steps with guidance: {cpu:.1f} h" in lines[2] and f"1 lcm step: {few:.1f} h" in lines[2]
    assert "H100 (989 TFLOP/s dense 16-bit) at this CPU's 5.0% of peak" in lines[3]
    assert len(cost_lines(COST, 240, 20, 0.05, None)) == 3 and "lcm" not in cost_lines(COST, 240, 20, 0.05, None)[1]
