"""Training: one run (engine), the method contract and its models, metrics, cost, runs that need other runs."""
