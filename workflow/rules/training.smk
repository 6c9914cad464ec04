# SAE training:
#   sae/general/kK[-sS]                             GSAE (trained on the pool, or imported)
#   sae/SUBDOMAIN/STRATEGY/INIT-tTILT-kK[-sS]       SSAEs, one per strategy x init x tilt (x k)
# Runs of the first training seed have no -sS suffix; the other seeds repeat the main
# comparison. Checkpoints sit next to the declared outputs, so a failed or killed job
# resumes from them.

MAIN_K = TRAINING_PLAN.shared.sae.k
SEEDS = TRAINING_PLAN.seeds
# Each rule gets only the training keys it reads, so adding a tilt retrains only the
# SSAEs with that tilt (the lists of inits and tilts become wildcards instead), and adding
# a seed trains only that seed's runs.
SHARED_TRAINING = {
    k: v
    for k, v in config["training"].items()
    if k not in ("gsae", "ssae", "k_sweep", "seeds", "seed_strategies")
}
SEED_STRATEGIES = STRATEGIES if TRAINING_PLAN.seed_strategies is None else TRAINING_PLAN.seed_strategies
_unknown = [s for s in SEED_STRATEGIES if s not in STRATEGIES]
if _unknown:
    raise WorkflowError(
        f"invalid config: training.seed_strategies: {_unknown} not in retrieval.strategies {STRATEGIES}"
    )
# `snapshots` goes to the one GSAE that keeps them (params.snapshots), not to every seed's.
GSAE_PARAMS = {**SHARED_TRAINING, "gsae": {k: v for k, v in config["training"]["gsae"].items() if k != "snapshots"}}
SSAE_PARAMS = {**SHARED_TRAINING, "ssae": {"tokens": config["training"]["ssae"]["tokens"]}}
# The Pareto sweep's SSAEs: dense retrieval (the paper's best) with the first init and tilt.
SWEEP_STRATEGY = "dense" if "dense" in STRATEGIES else STRATEGIES[0]
SEED_TAG = r"(-s\d+)?"


def seed_tag(seed):
    """Run-name suffix of a training seed: none for the first, -sS for the others."""
    return seed_suffix(seed, SEEDS[0])


def seed_of(tag):
    return SEEDS[0] if not tag else int(tag.removeprefix("-s"))


def gsae_tag(seed):
    """The GSAE an SSAE of this seed finetunes: its own seed's, or the one imported GSAE."""
    return "" if TRAINING_PLAN.gsae.pretrained is not None else seed_tag(seed)


def sae_runs():
    """Every SAE the workflow trains, as {name: directory}; names are stable report labels."""
    ssae = TRAINING_PLAN.ssae
    runs = {}
    for seed in SEEDS:
        tag = seed_tag(seed)
        if not tag or TRAINING_PLAN.gsae.pretrained is None:
            runs[gsae_run(MAIN_K, tag)] = f"results/sae/general/k{MAIN_K}{tag}"
        for strategy in STRATEGIES if not tag else SEED_STRATEGIES:
            for init in ssae.inits if not tag else ssae.inits[:1]:
                for tilt in ssae.tilts if not tag else ssae.tilts[:1]:
                    run = ssae_recipe(init, tilt, MAIN_K, tag)
                    runs[ssae_run(strategy, run)] = f"results/sae/{SUBDOMAIN}/{strategy}/{run}"
    for k in TRAINING_PLAN.k_sweep:
        run = ssae_recipe(ssae.inits[0], ssae.tilts[0], k)
        runs[gsae_run(k)] = f"results/sae/general/k{k}"
        runs[ssae_run(SWEEP_STRATEGY, run)] = f"results/sae/{SUBDOMAIN}/{SWEEP_STRATEGY}/{run}"
    return runs


rule train_gsae:
    input:
        activations=f"results/activations/corpus/{POOL}/train/manifest.json",
    output:
        sae=directory("results/sae/general/k{k}{seedtag}/sae"),
        log_csv="results/sae/general/k{k}{seedtag}/train_log.csv",
        summary="results/sae/general/k{k}{seedtag}/summary.json",
        snapshots=directory("results/sae/general/k{k}{seedtag}/snapshots"),
    wildcard_constraints:
        k=r"\d+",
        seedtag=SEED_TAG,
    params:
        cfg=as_json(GSAE_PARAMS),
        # TracIn reads the snapshots of the first seed's GSAE at the main k only.
        snapshots=lambda wc: TRAINING_PLAN.gsae.snapshots if not wc.seedtag and int(wc.k) == MAIN_K else 0,
        pretrained=content_digest(TRAINING_PLAN.gsae.pretrained) if TRAINING_PLAN.gsae.pretrained else "",
        seed=lambda wc: seed_of(wc.seedtag),
        device=DEVICE,
        out_dir=subpath(output.summary, parent=True),
        code=code_version("ssae_steps.sae.train"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/train_sae/general/k{k}{seedtag}.log",
    benchmark:
        "benchmarks/train_sae/general/k{k}{seedtag}.tsv"
    shell:
        "{PY:q} -m ssae_steps.sae.train --params {params.cfg:q} --role gsae --k {wildcards.k} "
        "--seed {params.seed} --manifest {input.activations} --out-dir {params.out_dir} "
        "--snapshots {params.snapshots} --device {params.device} --threads {threads} > {log} 2>&1"


def ssae_inputs(wildcards):
    inputs = {"activations": f"results/activations/selected/{SUBDOMAIN}/{wildcards.strategy}/manifest.json"}
    if wildcards.init == "finetune":
        tag = gsae_tag(seed_of(wildcards.seedtag))
        inputs["gsae"] = f"results/sae/general/k{wildcards.k}{tag}/summary.json"
    if float(wildcards.tilt) > 0:
        # Only logged: the rare subdomain token types' share of the tilted weights (the TERM
        # study's diagnostic; rare as in its "rare types captured").
        inputs["tail"] = "results/eval/token_types.csv"
    return inputs


rule train_ssae:
    input:
        unpack(ssae_inputs),
    output:
        sae=directory("results/sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}{seedtag}/sae"),
        log_csv="results/sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}{seedtag}/train_log.csv",
        summary="results/sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}{seedtag}/summary.json",
    wildcard_constraints:
        subdomain=SUBDOMAIN,
        strategy="|".join(STRATEGIES),
        init="finetune|scratch",
        tilt=r"[0-9.e+-]+",
        k=r"\d+",
        seedtag=SEED_TAG,
    params:
        cfg=as_json(SSAE_PARAMS),
        seed=lambda wc: seed_of(wc.seedtag),
        device=DEVICE,
        out_dir=subpath(output.summary, parent=True),
        init_from=lambda wc, input: f"--init-from {Path(input.gsae).parent / 'sae'}" if "gsae" in input.keys() else "",
        tail=lambda wc, input: (
            f"--tail-tokens {input.tail} --tail-max-frequency {config['evaluation']['tail']['max_general_frequency']}"
            if "tail" in input.keys()
            else ""
        ),
        code=code_version("ssae_steps.sae.train"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/train_sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}{seedtag}.log",
    benchmark:
        "benchmarks/train_sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}{seedtag}.tsv"
    shell:
        "{PY:q} -m ssae_steps.sae.train --params {params.cfg:q} --role ssae --init {wildcards.init} "
        "--tilt {wildcards.tilt} --k {wildcards.k} --seed {params.seed} --manifest {input.activations} "
        "{params.init_from} {params.tail} --out-dir {params.out_dir} --device {params.device} --threads {threads} > {log} 2>&1"


rule training_report:
    input:
        summaries=lambda wc: [f"{run}/summary.json" for run in sae_runs().values()],
    output:
        table="results/sae/training_summary.csv",
        curves=report(
            "results/sae/training_curves.png",
            caption="../report/training_curves.rst",
            category="2. SAE training",
        ),
    params:
        runs=lambda wc: as_json(sae_runs()),
        code=code_version("ssae_steps.sae.report"),
    conda:
        ENV
    log:
        "logs/training_report.log",
    shell:
        "{PY:q} -m ssae_steps.sae.report --runs {params.runs:q} --out-table {output.table} "
        "--out-plot {output.curves} > {log} 2>&1"
