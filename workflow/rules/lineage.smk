# GSAE -> SSAE lineage and the latent browser: the main SSAE's latents matched to the GSAE
# it was finetuned from (first training seed), classified kept / drifted / new / dead, the
# GSAE latents it dropped, and a static HTML page to read them.
#   lineage/latents.csv, dropped.csv     per SSAE latent; dropped GSAE latents
#   lineage/summary.md, lineage.png      counts per class, concepts per class
#   lineage/browser.html                 the latent browser (opens from disk)

LINEAGE = config["lineage"]


rule lineage:
    input:
        ssae=lambda wc: f"{main_ssae_dir()}/summary.json",
        gsae=f"results/sae/general/k{MAIN_K}/summary.json",
        sets=list(EVAL_SETS.values()),
        tail="results/eval/tail_tokens.csv",
        types="results/eval/token_types.csv",
        model="results/model/model.json",
    output:
        table="results/lineage/latents.csv",
        dropped="results/lineage/dropped.csv",
        summary=report("results/lineage/summary.md", caption="../report/lineage.rst", category="4. Lineage"),
        plot=report("results/lineage/lineage.png", caption="../report/lineage.rst", category="4. Lineage"),
        browser=report(
            "results/lineage/browser.html", caption="../report/latent_browser.rst", category="4. Lineage"
        ),
    params:
        cfg=as_json({k: v for k, v in LINEAGE.items() if k != "enabled"}),
        ssae=lambda wc: f"{main_ssae_dir()}/sae",
        detect_f1=config["evaluation"]["tail"]["detection_f1"],
        code=code_version("ssae_steps.latents.lineage"),
    threads: JOB_THREADS
    conda:
        ENV
    log:
        "logs/lineage.log",
    benchmark:
        "benchmarks/lineage.tsv"
    shell:
        "{PY:q} -m ssae_steps.latents.lineage --params {params.cfg:q} --gsae-dir results/sae/general/k{MAIN_K}/sae "
        "--ssae-dir {params.ssae} --subdomain-set {EVAL_SETS[subdomain]} --general-set {EVAL_SETS[general]} "
        "--model-dir results/model/hf --tail-tokens {input.tail} --token-types {input.types} "
        "--detect-f1 {params.detect_f1} --out-dir results/lineage > {log} 2>&1"
