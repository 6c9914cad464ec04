"""Text in: corpora read from their sources into document tables, held-out splits, the overview."""
