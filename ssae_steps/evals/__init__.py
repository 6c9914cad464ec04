"""Evaluation: reconstruction, spliced loss, tail concepts, the report and the TERM study."""
