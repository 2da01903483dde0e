"""Datasets: phantom generation, on-disk layouts, datalists and input checks."""
