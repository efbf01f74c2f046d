"""quickstart: a Flower / PyTorch app on label-skewed clients, filled by ReGL."""
