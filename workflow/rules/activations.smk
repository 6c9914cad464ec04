# Activation shards of every set later stages read:
#   corpus/POOL/train            general SAE training (minus subdomain held-out documents)
#   corpus/NAME/heldout          evaluation on held-out general and subdomain text
#   selected/SUBDOMAIN/STRATEGY  SSAE training, one set per data-selection strategy


def activation_exclusions(wildcards):
    """Training on a general corpus skips documents a subdomain holds out for evaluation."""
    if wildcards.split == "train" and wildcards.corpus in GENERALS:
        return [f"results/corpora/{name}/docs.parquet" for name in SUBDOMAINS]
    return []


PARTS = config["activations"]["parts"]
# What caching reads; `parts` only splits the pool's training set into jobs (same shards).
ACTIVATION_SETTINGS = {k: v for k, v in config["activations"].items() if k != "parts"}
ACTIVATION_CFG = as_json(ACTIVATION_SETTINGS)

# One command for every caching rule; `params.scope` names the documents (split, held-out
# exclusions) and, for a part, which one.
CACHE_SHELL = (
    "{PY:q} -m ssae_steps.activations.cache --params {params.cfg:q} --model-dir results/model/hf "
    "--hook-layer {params.hook_layer} --table {input.table} {params.scope} "
    "--manifest {output.manifest} --seed {params.seed} --device {params.device} --threads {threads} > {log} 2>&1"
)


def corpus_scope(wildcards, input):
    return f"--split {wildcards.split} --exclude-heldout-of {' '.join(input.exclude)}"


# parts > 1: the pool's training manifest comes from the gather, every other set's from here.
ruleorder: gather_activation_parts > cache_corpus_activations


rule cache_corpus_activations:
    input:
        table="results/corpora/{corpus}/docs.parquet",
        exclude=activation_exclusions,
        model="results/model/model.json",
    output:
        manifest="results/activations/corpus/{corpus}/{split}/manifest.json",
    wildcard_constraints:
        corpus="|".join(CORPORA),
        split="train|heldout",
    params:
        cfg=ACTIVATION_CFG,
        scope=corpus_scope,
        hook_layer=config["model"]["hook_layer"],
        seed=config["seed"],
        device=DEVICE,
        code=code_version("ssae_steps.activations.cache"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/cache_activations/corpus/{corpus}/{split}.log",
    benchmark:
        "benchmarks/cache_activations/corpus/{corpus}/{split}.tsv"
    shell:
        CACHE_SHELL


# With activations.parts > 1 the pool's training set is cached in parts (scatter) and
# gathered into one manifest; the trainer reads it like any other set.
rule cache_activation_part:
    input:
        table="results/corpora/{corpus}/docs.parquet",
        exclude=activation_exclusions,
        model="results/model/model.json",
    output:
        manifest="results/activations/corpus/{corpus}/{split}/parts/{part}-of-{parts}.json",
    wildcard_constraints:
        corpus=POOL,
        split="train",
        part=r"\d+",
        parts=str(PARTS),
    params:
        cfg=ACTIVATION_CFG,
        scope=lambda wc, input: f"{corpus_scope(wc, input)} --part {wc.part} {wc.parts}",
        hook_layer=config["model"]["hook_layer"],
        seed=config["seed"],
        device=DEVICE,
        code=code_version("ssae_steps.activations.cache"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/cache_activations/corpus/{corpus}/{split}/part-{part}-of-{parts}.log",
    benchmark:
        "benchmarks/cache_activations/corpus/{corpus}/{split}/part-{part}-of-{parts}.tsv"
    shell:
        CACHE_SHELL


rule gather_activation_parts:
    input:
        parts=expand(
            "results/activations/corpus/{{corpus}}/{{split}}/parts/{part}-of-{parts}.json",
            part=range(PARTS),
            parts=PARTS,
        ),
    output:
        manifest="results/activations/corpus/{corpus}/{split}/manifest.json",
    wildcard_constraints:
        corpus=POOL if PARTS > 1 else "^$",
        split="train",
    params:
        code=code_version("ssae_steps.activations.gather"),
    conda:
        ENV
    log:
        "logs/cache_activations/corpus/{corpus}/{split}/gather.log",
    shell:
        "{PY:q} -m ssae_steps.activations.gather --parts {input.parts} --manifest {output.manifest} > {log} 2>&1"


rule cache_selected_activations:
    input:
        table="results/retrieval/{subdomain}/{strategy}/docs.parquet",
        model="results/model/model.json",
    output:
        manifest="results/activations/selected/{subdomain}/{strategy}/manifest.json",
    wildcard_constraints:
        subdomain=SUBDOMAIN,
        strategy="|".join(STRATEGIES),
    params:
        cfg=ACTIVATION_CFG,
        scope="--split train",
        hook_layer=config["model"]["hook_layer"],
        seed=config["seed"],
        device=DEVICE,
        code=code_version("ssae_steps.activations.cache"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/cache_activations/selected/{subdomain}/{strategy}.log",
    benchmark:
        "benchmarks/cache_activations/selected/{subdomain}/{strategy}.tsv"
    shell:
        CACHE_SHELL


def activation_manifests():
    sets = [f"corpus/{POOL}/train", f"corpus/{POOL}/heldout", f"corpus/{SUBDOMAIN}/heldout"]
    sets += [f"selected/{SUBDOMAIN}/{strategy}" for strategy in STRATEGIES]
    return [f"results/activations/{s}/manifest.json" for s in sets]
