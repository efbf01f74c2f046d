"""ReGL: generative data balancing for federated learning.

For a user's own code (regl/api.py): `add_fill` (a client's images with its synthetic fill),
`generate_images` and `finetune_lora`.

The library, importable without Flower or FastAPI:

- `regl.data`: datasets, the fixed private/public/test split, label-skew partitions;
- `regl.generate`: the tiny Stable Diffusion base, generation, per-client LoRA, natural noise;
- `regl.fill`: what a client adds to its data: the plan, the store, its fill, mixup;
- `regl.train`: classifiers, training and evaluation loops, metrics;
- `regl.fl`: federated experiments without Flower code: settings, bench arms, sandbox, reports;
  and the apps' two runners, `regl.fl.simulation` and `regl.fl.deployment`, imported lazily;
- `regl.cli`: the `regl` command.

The Flower apps live in the top-level `clients/`, the local service in `service/`; both
install as `regl.clients` and `regl.service` and import the library, never the reverse but
for the two runners, which start the apps and the service, and the CLI, which imports them lazily.
"""

from regl.api import add_fill, finetune_lora, generate_images

__all__ = ["add_fill", "finetune_lora", "generate_images"]
__version__ = "0.1.0"
