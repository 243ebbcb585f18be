"""Files: the one writer (writes), the readers of files someone else may have made (files), and a run's
record, metrics.json (results). The bottom layer: it imports only ganexp.config's helpers."""
