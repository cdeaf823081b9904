"""Measuring: `minedraft bench` (cli.py), its runners and report, the transformers peer, GPU step
times and the GPU report."""
