"""Datasets: what an experiment's ``data`` section names, and how to read it."""
