"""Latents up close: top contexts, GSAE-to-SSAE lineage, the HTML browser."""
