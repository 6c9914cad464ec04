"""SAE files interoperate with SAELens in both directions (the real ``sae-lens`` package)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae, save_sae
from ssae_steps.sae.config import SAEConfig

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens comes with the test extra: pip install -e '.[test]'")


def _randomised(architecture: str) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(architecture=architecture, d_in=16, d_sae=64, k=4), input_scale=0.37, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(2))
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(3))
        if architecture == "jumprelu":
            sae.log_threshold.fill_(-1.0)
        if architecture in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.6)  # as if estimated while training
    return sae


@pytest.mark.parametrize(
    ("architecture", "saelens_class"),
    [
        ("topk", "TopKSAE"),
        ("batchtopk", "JumpReLUSAE"),  # as SAELens saves its own BatchTopK SAEs for inference
        ("matryoshka", "JumpReLUSAE"),
        ("jumprelu", "JumpReLUSAE"),
        ("relu", "StandardSAE"),
    ],
)
def test_saelens_loads_our_files_and_computes_the_same(architecture: str, saelens_class: str, tmp_path: Path) -> None:
    ours = _randomised(architecture)
    save_sae(ours, tmp_path / "sae", metadata={"hook_name": "blocks.0.hook_resid_post"})
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    assert type(theirs).__name__ == saelens_class
    x = 5 * torch.randn(32, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x_hat, z = ours(x)
        assert (z > 0).any()
        if architecture in ("batchtopk", "matryoshka"):  # the threshold silences some positive latents
            assert int((z > 0).sum()) < int((ours.pre_activations(x) > 0).sum())
        torch.testing.assert_close(theirs.encode(x), z, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(theirs.decode(z), ours.decode(z), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(theirs(x), x_hat, atol=1e-4, rtol=1e-4)


def test_we_load_an_saelens_topk_sae(tmp_path: Path) -> None:
    cfg = sae_lens.TopKSAEConfig(d_in=16, d_sae=64, k=4, dtype="float32", device="cpu")
    theirs = sae_lens.TopKSAE(cfg)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(generator=torch.Generator().manual_seed(5))
    theirs.save_model(str(tmp_path / "pretrained"))
    ours = load_sae(tmp_path / "pretrained")
    assert (ours.cfg.architecture, ours.cfg.k, ours.cfg.d_sae) == ("topk", 4, 64)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x), atol=1e-4, rtol=1e-4)
