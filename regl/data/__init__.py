"""Data: built-in datasets and image folders, the fixed private/public/test split, label-skew
partitions and their statistics.

The built-in mnist-10k images ship in this folder as an npz."""
