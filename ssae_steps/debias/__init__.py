"""The Bias in Bios case study: biographies, gender probes and SHIFT ablation."""
