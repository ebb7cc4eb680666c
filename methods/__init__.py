"""Built-in methods, one file each (installed as mmbench.methods)."""
