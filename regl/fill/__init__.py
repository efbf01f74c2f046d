"""The synthetic fill a client adds to its real data: the plan, the store on disk, the
client's fill (LoRA + generation + noise), DP-LabelHide mixup, and the fill made by a remote service."""
