"""The tiny pipeline submitted through profiles/slurm to a real single-node SLURM cluster."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ssae_steps.sae.autoencoder import load_sae
from tests.conftest import REPO, snakemake
from tests.workflow.slurm_cluster import ClusterUnavailable, start_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("pipeline")]
# The chain to the general SAE: model, corpora, activation caching (in two parts and a
# gather), training. Retrieval
# and the SSAEs are more jobs of the same kind (every SLURM job also starts Snakemake and
# waits on the plugin's status polling), so they would only lengthen the test; the local
# run covers them.
SLURM_TARGETS = ("results/sae/general/k8/summary.json",)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        pytest.skip(f"no SLURM cluster here: {exc}")
    yield cluster
    cluster.stop()


def test_pipeline_through_slurm_profile_matches_local_run(cluster, local_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("snakemake_executor_plugin_slurm")
    workdir = tmp_path / "wf"
    workdir.mkdir()
    # The pool's training set in two parts (scatter/gather), each its own SLURM job.
    config = yaml.safe_load((local_run / "config.yaml").read_text())
    config["activations"]["parts"] = 2
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(
        workdir,
        "--configfile",
        str(workdir / "config.yaml"),
        "--profile",
        str(REPO / "profiles" / "slurm"),
        # Test overrides of the site settings in the profile: this cluster's partition,
        # small limits, no account, squeue for status (no accounting database here).
        "--default-resources",
        "slurm_partition=debug",
        "mem_mb=1500",
        "runtime=30",
        "--set-resources",
        "prepare_model:mem_mb=1500",
        "--slurm-no-account",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--slurm-keep-successful-logs",
        "--jobs",
        "4",
        *SLURM_TARGETS,
        env=cluster.env,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    # Every job but the local `all` went through slurmctld; squeue still lists finished
    # jobs (MinJobAge), with the plugin's comment "rule_NAME[_wildcards_...]".
    listed = cluster.run("squeue", "-h", "-t", "all", "-o", "%k|%T").splitlines()
    assert listed and all(line.endswith("|COMPLETED") for line in listed), listed
    rules = Counter(re.sub(r"_wildcards_.*", "", line.split("|")[0]).removeprefix("rule_") for line in listed)
    assert rules == {
        "prepare_model": 1,
        "build_corpus": 2,
        "cache_activation_part": 2,
        "gather_activation_parts": 1,
        "train_gsae": 1,
    }

    # Same outputs as the local run.
    for table in ["results/corpora/general/docs.parquet", "results/corpora/physics/docs.parquet"]:
        a = pq.read_table(workdir / table).to_pandas()
        b = pq.read_table(local_run / table).to_pandas()
        assert a["doc_id"].tolist() == b["doc_id"].tolist(), table
    for manifest in ["corpus/general/train"]:
        a = json.loads((workdir / "results/activations" / manifest / "manifest.json").read_text())
        b = json.loads((local_run / "results/activations" / manifest / "manifest.json").read_text())
        assert a["tokens"] == b["tokens"] and a["gathered_parts"] == 2
        assert a["shards"] == b["shards"]  # the parts wrote the single job's shards, byte for byte
        np.testing.assert_allclose(a["stats"]["mean"], b["stats"]["mean"], rtol=1e-4, atol=1e-5)
    for run in ["general/k8"]:
        a = load_sae(workdir / "results/sae" / run / "sae").state_dict()
        b = load_sae(local_run / "results/sae" / run / "sae").state_dict()
        for name, tensor in a.items():
            torch.testing.assert_close(tensor, b[name], rtol=1e-4, atol=1e-5, msg=f"{run} {name}")
