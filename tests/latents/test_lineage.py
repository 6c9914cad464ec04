"""GSAE -> SSAE lineage on planted SAEs, and the latent browser page in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ssae_steps.latents.browser import write_browser
from ssae_steps.latents.config import LineageConfig
from ssae_steps.latents.lineage import lineage_of, paired_correlation, sparse_codes
from ssae_steps.sae.autoencoder import SparseAutoencoder
from ssae_steps.sae.config import SAEConfig
from tests.apt import apt_install

KEPT, DRIFTED, NEW, DEAD = range(0, 12), range(12, 20), range(20, 32), 5


def planted_pair(seed: int = 0, architecture: str = "topk") -> tuple[SparseAutoencoder, SparseAutoencoder, np.ndarray]:
    """A GSAE with 32 random unit directions in 64 dimensions and an SSAE that copies
    latents 0-11 (5 made dead), turns 12-19 by 45 degrees (cosine 0.71) and replaces 20-31
    with directions orthogonal to every GSAE direction; activations mix both dictionaries."""
    cfg = SAEConfig(architecture=architecture, d_in=64, d_sae=32, k=4)
    gsae = SparseAutoencoder(cfg, seed=seed)
    ssae = SparseAutoencoder(cfg, seed=seed)
    g = gsae.W_dec.detach()
    generator = torch.Generator().manual_seed(seed + 1)
    rows = g.clone()
    # A basis of the orthogonal complement of the GSAE's directions.
    q, _ = torch.linalg.qr(torch.cat([g.T, torch.randn(64, 32, generator=generator)], dim=1))
    complement = q[:, 32:].T
    for i in DRIFTED:
        u = complement[i - 12]
        rows[i] = (g[i] + u) / (g[i] + u).norm()
    for j, i in enumerate(NEW):
        rows[i] = complement[8 + j]
    with torch.no_grad():
        ssae.W_dec.copy_(rows)
        ssae.W_enc.copy_(rows.T)
        ssae.b_enc[DEAD] = -1e3
    rng = np.random.default_rng(seed)
    directions = torch.cat([g, rows]).numpy()
    picks = rng.integers(0, len(directions), (3000, 3))
    x = (directions[picks] * rng.uniform(0.5, 2.0, (3000, 3, 1))).sum(1).astype(np.float32)
    return gsae, ssae, x


@pytest.mark.parametrize("architecture", ["topk", "relu", "jumprelu", "batchtopk"])
def test_lineage_classes_come_out_as_planted(architecture: str) -> None:
    gsae, ssae, x = planted_pair(architecture=architecture)
    lin = lineage_of(gsae, ssae, sparse_codes(gsae, x), sparse_codes(ssae, x), LineageConfig())
    classes = lin.classes
    assert classes[DEAD] == "dead"
    assert all(classes[i] == "kept" for i in KEPT if i != DEAD), classes[:12]
    assert all(classes[i] == "drifted" for i in DRIFTED), classes[12:20]
    assert all(classes[i] == "new" for i in NEW), classes[20:]
    # GSAE directions with no live SSAE latent near them: the replaced ones, and the one
    # whose SSAE copy died.
    assert sorted(lin.dropped.tolist()) == [DEAD, *NEW]
    np.testing.assert_allclose(lin.cosine[list(DRIFTED)], 2**-0.5, atol=1e-5)
    assert (lin.match[[i for i in KEPT if i != DEAD]] == [i for i in KEPT if i != DEAD]).all()


def test_paired_correlation_matches_numpy() -> None:
    from scipy import sparse

    rng = np.random.default_rng(0)
    a = rng.random((200, 5)) * (rng.random((200, 5)) < 0.3)
    b = rng.random((200, 4)) * (rng.random((200, 4)) < 0.3)
    b[:, 3] = 0  # never fires: no correlation
    pairs = np.array([0, 3, 2, 1, 0])
    got = paired_correlation(sparse.csc_matrix(a), sparse.csc_matrix(b), pairs)
    for i, j in enumerate(pairs):
        expected = np.nan if j == 3 else np.corrcoef(a[:, i], b[:, j])[0, 1]
        np.testing.assert_allclose(got[i], expected, rtol=1e-9)


class NumberTokenizer:
    def decode(self, ids: list[int]) -> str:
        return f" t{ids[0]}" if ids[0] != 7 else " </script><b>"


def browser_page(tmp_path: Path, n: int = 250) -> Path:
    records = [
        {
            "sae": "ssae" if i < n - 3 else "gsae",
            "latent": i,
            "ctx": [[(7, 0.5), (i, 2.0 + i), (3, 0.1)], [(1, 0.2), (i, 1.0)]],
            "hist": [5, 3, 1] + [0] * 9,
            "hist_max": 2.0 + i,
            "lens": [i, 1, 2],
            "cls": ["kept", "drifted", "new"][i % 3] if i < n - 3 else "dropped",
            "match": i,
            "cos": 0.5,
            "corr": None,
            "fs": i,
            "fg": 1,
            "spec": float(i),
            "concepts": "alpha" if i == 4 else "",
        }
        for i in range(n)
    ]
    out = tmp_path / "browser.html"
    write_browser(records, NumberTokenizer(), out, "planted", page_size=100, sub_tokens=1000, gen_tokens=5000)
    return out


def test_browser_page_embeds_every_latent_once_decoded(tmp_path: Path) -> None:
    page = browser_page(tmp_path).read_text()
    payload = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1)
    data = json.loads(payload)
    assert len(data["latents"]) == 250 and data["page_size"] == 100
    assert len(data["vocab"]) == len(set(data["vocab"]))  # each token string once
    first = data["latents"][10]
    assert [data["vocab"][t] for t, _ in first["ctx"][0]] == [" </script><b>", " t10", " t3"]
    assert "</script><b>" not in payload  # a token cannot close the data element


def _chromium() -> str:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if reason := apt_install(["chromium-headless-shell"], recommends=False):
        pytest.skip(f"no Chromium: {reason}")
    return shutil.which("chromium-headless-shell") or pytest.skip("chromium-headless-shell not on PATH after install")


def test_browser_renders_in_a_real_browser_without_errors(tmp_path: Path) -> None:
    chromium = _chromium()
    page = browser_page(tmp_path)
    shot = tmp_path / "browser.png"
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    )
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not errors, errors
    assert re.search(r'<pre id="js-errors"[^>]*></pre>', dom.stdout)  # the page's own error trap stayed empty
    assert len(re.findall(r"<tr data-i=\"\d+\"", dom.stdout)) == 100  # one page of the list
    assert "250 latents" in dom.stdout and "page 1/3" in dom.stdout
    assert 'id="latent-title">G249' in dom.stdout  # the most specific latent (a dropped one) first
    contexts = re.search(r'<div id="contexts">(.*?)</div></div>', dom.stdout, re.S).group(1)
    assert "t249" in contexts and "&lt;/script&gt;&lt;b&gt;" in contexts  # tokens shown, escaped
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,900", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000
