"""capsfus-hpc: CapsFusion caption fusion at SLURM-cluster scale."""

__version__ = "0.1.0"
