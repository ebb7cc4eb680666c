"""From stored results to conclusions: statistics, the report and its renderings and figures, the CI gate."""
