"""ssae: Specialized Sparse Autoencoders as a Snakemake workflow.

One subpackage per stage, mirroring ``workflow/rules/``: ``data``, ``activations``,
``retrieval``, ``sae``, ``evals``, ``latents``, ``debias``. Each has a torch-free
``config.py`` (what the Snakefile imports) and modules that run on their own
(``python -m ssae_steps.<stage>.<module> --help``) and from tests without Snakemake.
"""

__version__ = "0.1.0"
