"""Generation: the tiny Stable Diffusion base and its pretraining, the class-conditional pipeline,
per-client LoRA fine-tuning, prompts, the training-free natural-noise generator, and the
generator's evaluation and speed benchmark."""
