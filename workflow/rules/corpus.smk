def corpus_source_files(wildcards):
    """Local source files, so that editing one rebuilds the corpus."""
    files = []
    for i, source in enumerate(CORPUS_CONFIGS[wildcards.corpus].sources):
        if source.kind in FILE_KINDS:
            where = f"corpora.{wildcards.corpus}.sources[{i}]"
            files += [str(p) for p in expand_paths(source.path, where)]
    return files


rule build_corpus:
    input:
        files=corpus_source_files,
    output:
        table="results/corpora/{corpus}/docs.parquet",
        summary="results/corpora/{corpus}/summary.json",
    wildcard_constraints:
        corpus="|".join(CORPORA),
    params:
        cfg=lambda wc: as_json(config["corpora"][wc.corpus]),
        seed=config["seed"],
        code=code_version("ssae_steps.data.corpus"),
    conda:
        ENV
    log:
        "logs/build_corpus/{corpus}.log",
    benchmark:
        "benchmarks/build_corpus/{corpus}.tsv"
    shell:
        "{PY:q} -m ssae_steps.data.corpus --name {wildcards.corpus} --params {params.cfg:q} "
        "--seed {params.seed} --out-table {output.table} --out-summary {output.summary} > {log} 2>&1"


rule corpus_overview:
    input:
        tables=expand("results/corpora/{corpus}/docs.parquet", corpus=CORPORA),
    output:
        plot=report(
            "results/corpora/overview.png",
            caption="../report/corpus_overview.rst",
            category="1. Data",
        ),
        table="results/corpora/overview.csv",
    params:
        code=code_version("ssae_steps.data.overview"),
    conda:
        ENV
    log:
        "logs/corpus_overview.log",
    shell:
        "{PY:q} -m ssae_steps.data.overview --tables {input.tables} "
        "--out-plot {output.plot} --out-table {output.table} > {log} 2>&1"
