"""Built-in datasets, one file each (installed as mmbench.datasets)."""
