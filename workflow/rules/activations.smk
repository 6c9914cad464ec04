# Activation shards of every set later stages read:
#   corpus/POOL/train            general SAE training (minus subdomain held-out documents)
#   corpus/NAME/heldout          evaluation on held-out general and subdomain text
#   selected/SUBDOMAIN/STRATEGY  SSAE training, one set per data-selection strategy


def activation_exclusions(wildcards):
    """Training on a general corpus skips documents a subdomain holds out for evaluation."""
    if wildcards.split == "train" and wildcards.corpus in GENERALS:
        return [f"results/corpora/{name}/docs.parquet" for name in SUBDOMAINS]
    return []


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
        cfg=as_json(config["activations"]),
        hook_layer=config["model"]["hook_layer"],
        seed=config["seed"],
        device=DEVICE,
        code=code_version(*activations_module.CODE),
    threads: 2
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/cache_activations/corpus/{corpus}/{split}.log",
    benchmark:
        "benchmarks/cache_activations/corpus/{corpus}/{split}.tsv"
    shell:
        "{PY:q} -m ssae_steps.activations --params {params.cfg:q} --model-dir results/model/hf "
        "--hook-layer {params.hook_layer} --table {input.table} --split {wildcards.split} "
        "--exclude-heldout-of {input.exclude} --manifest {output.manifest} --seed {params.seed} "
        "--device {params.device} --threads {threads} > {log} 2>&1"


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
        cfg=as_json(config["activations"]),
        hook_layer=config["model"]["hook_layer"],
        seed=config["seed"],
        device=DEVICE,
        code=code_version(*activations_module.CODE),
    threads: 2
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/cache_activations/selected/{subdomain}/{strategy}.log",
    benchmark:
        "benchmarks/cache_activations/selected/{subdomain}/{strategy}.tsv"
    shell:
        "{PY:q} -m ssae_steps.activations --params {params.cfg:q} --model-dir results/model/hf "
        "--hook-layer {params.hook_layer} --table {input.table} --split train "
        "--manifest {output.manifest} --seed {params.seed} --device {params.device} --threads {threads} > {log} 2>&1"


def activation_manifests():
    sets = [f"corpus/{POOL}/train", f"corpus/{POOL}/heldout", f"corpus/{SUBDOMAIN}/heldout"]
    sets += [f"selected/{SUBDOMAIN}/{strategy}" for strategy in STRATEGIES]
    return [f"results/activations/{s}/manifest.json" for s in sets]
