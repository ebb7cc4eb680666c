"""mmbench: a benchmarking harness for modality imbalance in audio-visual learning."""

__version__ = "0.1.0"

# Bump when the columns or meaning of the stored result files change.
RESULT_SCHEMA_VERSION = 1
# Bump when a change to the engine, models or metrics changes the numbers a run produces.
# Methods and datasets carry their own `version`; all three enter every run_id.
ENGINE_VERSION = 2
