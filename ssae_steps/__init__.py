"""ssae: Specialized Sparse Autoencoders as a Snakemake workflow.

One module per stage; each is usable on its own (``python -m ssae_steps.<stage>``)
and from tests without Snakemake.
"""

__version__ = "0.1.0"
