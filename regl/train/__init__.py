"""Classifiers, the local training and evaluation loops, and the metrics they report."""
