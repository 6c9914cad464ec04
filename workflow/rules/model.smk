rule prepare_model:
    output:
        model=directory("results/model/hf"),
        manifest="results/model/model.json",
    params:
        cfg=as_json(config["model"]),
        content=content_digest(config["model"]["name"]) if config["model"]["source"] == "local" else "",
        code=code_version("ssae_steps.model"),
    conda:
        ENV
    log:
        "logs/prepare_model.log",
    benchmark:
        "benchmarks/prepare_model.tsv"
    message:
        "Materialising the foundation model ({params.cfg})"
    shell:
        "{PY:q} -m ssae_steps.model --params {params.cfg:q} "
        "--out-dir {output.model} --manifest {output.manifest} > {log} 2>&1"
