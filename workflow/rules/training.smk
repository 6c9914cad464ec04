# SAE training:
#   sae/general/kK                                  GSAE (trained on the pool, or imported)
#   sae/SUBDOMAIN/STRATEGY/INIT-tTILT-kK            SSAEs, one per strategy x init x tilt (x k)
# Checkpoints sit next to the declared outputs, so a failed or killed job resumes from them.

MAIN_K = TRAINING_PLAN.shared.sae.k
TRAIN_CODE = train_sae_module.CODE
# Each rule gets only the training keys it reads, so adding a tilt retrains only the
# SSAEs with that tilt (the lists of inits and tilts become wildcards instead).
SHARED_TRAINING = {k: v for k, v in config["training"].items() if k not in ("gsae", "ssae", "k_sweep")}
GSAE_PARAMS = {**SHARED_TRAINING, "gsae": config["training"]["gsae"]}
SSAE_PARAMS = {**SHARED_TRAINING, "ssae": {"tokens": config["training"]["ssae"]["tokens"]}}
# The Pareto sweep's SSAEs: dense retrieval (the paper's best) with the first init and tilt.
SWEEP_STRATEGY = "dense" if "dense" in STRATEGIES else STRATEGIES[0]


def tilt_label(tilt):
    return f"{tilt:g}"


def sae_runs():
    """Every SAE the workflow trains, as {name: directory}; names are stable report labels."""
    ssae = TRAINING_PLAN.ssae
    runs = {f"gsae/k{MAIN_K}": f"results/sae/general/k{MAIN_K}"}
    for strategy in STRATEGIES:
        for init in ssae.inits:
            for tilt in ssae.tilts:
                run = f"{init}-t{tilt_label(tilt)}-k{MAIN_K}"
                runs[f"ssae/{strategy}/{run}"] = f"results/sae/{SUBDOMAIN}/{strategy}/{run}"
    for k in TRAINING_PLAN.k_sweep:
        run = f"{ssae.inits[0]}-t{tilt_label(ssae.tilts[0])}-k{k}"
        runs[f"gsae/k{k}"] = f"results/sae/general/k{k}"
        runs[f"ssae/{SWEEP_STRATEGY}/{run}"] = f"results/sae/{SUBDOMAIN}/{SWEEP_STRATEGY}/{run}"
    return runs


rule train_gsae:
    input:
        activations=f"results/activations/corpus/{POOL}/train/manifest.json",
    output:
        sae=directory("results/sae/general/k{k}/sae"),
        log_csv="results/sae/general/k{k}/train_log.csv",
        summary="results/sae/general/k{k}/summary.json",
    wildcard_constraints:
        k=r"\d+",
    params:
        cfg=as_json(GSAE_PARAMS),
        pretrained=content_digest(TRAINING_PLAN.gsae.pretrained) if TRAINING_PLAN.gsae.pretrained else "",
        seed=config["seed"],
        device=DEVICE,
        out_dir=subpath(output.summary, parent=True),
        code=code_version(*TRAIN_CODE),
    threads: 2
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/train_sae/general/k{k}.log",
    benchmark:
        "benchmarks/train_sae/general/k{k}.tsv"
    shell:
        "{PY:q} -m ssae_steps.train_sae --params {params.cfg:q} --role gsae --k {wildcards.k} "
        "--seed {params.seed} --manifest {input.activations} --out-dir {params.out_dir} "
        "--device {params.device} --threads {threads} > {log} 2>&1"


def ssae_inputs(wildcards):
    inputs = {"activations": f"results/activations/selected/{SUBDOMAIN}/{wildcards.strategy}/manifest.json"}
    if wildcards.init == "finetune":
        inputs["gsae"] = f"results/sae/general/k{wildcards.k}/summary.json"
    return inputs


rule train_ssae:
    input:
        unpack(ssae_inputs),
    output:
        sae=directory("results/sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}/sae"),
        log_csv="results/sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}/train_log.csv",
        summary="results/sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}/summary.json",
    wildcard_constraints:
        subdomain=SUBDOMAIN,
        strategy="|".join(STRATEGIES),
        init="finetune|scratch",
        tilt=r"[0-9.e+-]+",
        k=r"\d+",
    params:
        cfg=as_json(SSAE_PARAMS),
        seed=config["seed"],
        device=DEVICE,
        out_dir=subpath(output.summary, parent=True),
        init_from=lambda wc, input: f"--init-from {Path(input.gsae).parent / 'sae'}" if "gsae" in input.keys() else "",
        code=code_version(*TRAIN_CODE),
    threads: 2
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/train_sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}.log",
    benchmark:
        "benchmarks/train_sae/{subdomain}/{strategy}/{init}-t{tilt}-k{k}.tsv"
    shell:
        "{PY:q} -m ssae_steps.train_sae --params {params.cfg:q} --role ssae --init {wildcards.init} "
        "--tilt {wildcards.tilt} --k {wildcards.k} --seed {params.seed} --manifest {input.activations} "
        "{params.init_from} --out-dir {params.out_dir} --device {params.device} --threads {threads} > {log} 2>&1"


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
        code=code_version("training_report", "_cli"),
    conda:
        ENV
    log:
        "logs/training_report.log",
    shell:
        "{PY:q} -m ssae_steps.training_report --runs {params.runs:q} --out-table {output.table} "
        "--out-plot {output.curves} > {log} 2>&1"
