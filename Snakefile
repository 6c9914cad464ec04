# ssae: Specialized Sparse Autoencoders, end to end.
#   snakemake --cores 8                 # default run (config.yaml)
#   snakemake -n                        # list the jobs that would run
#   snakemake --report results/report.html
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/retrieval.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/tracin.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/term_study.smk"
include: "workflow/rules/debias.smk"
include: "workflow/rules/lineage.smk"


# What the default target builds; the cost page summarises the jobs behind all of it.
FINAL_OUTPUTS = [
    # Every output of the report rules, not one each: Snakemake reruns a job for a missing
    # output only if something asks for that file, so an output added by a code update
    # would otherwise never appear in an existing run.
    "results/model/model.json",
    *expand("results/corpora/{corpus}/summary.json", corpus=CORPORA),
    *rules.corpus_overview.output,
    *expand(rules.compare_selection.output, subdomain=SUBDOMAIN),
    *activation_manifests(),
    *rules.training_report.output,
    *rules.evaluation_report.output,
    *rules.top_latents.output,
    *term_outputs(),
    *(rules.debias.output if config["debias"]["enabled"] else []),
    *(rules.lineage.output if config["lineage"]["enabled"] else []),
]


include: "workflow/rules/cost.smk"


rule all:
    default_target: True
    input:
        FINAL_OUTPUTS,
        "results/cost.md",
