"""SAE architectures, their sparse training kernels, SAELens-layout files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssae_steps.config import ConfigError
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae, save_sae
from ssae_steps.sae.config import SAEConfig


def _x(n: int = 64, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 30 + 5


ARCHITECTURES = ["topk", "batchtopk", "matryoshka", "jumprelu", "relu"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_interface_and_unit_decoder(arch: str) -> None:
    sae = SparseAutoencoder(SAEConfig(architecture=arch, d_in=16, d_sae=48, k=4), input_scale=0.1)
    x = _x()
    x_hat, z = sae(x)
    assert x_hat.shape == x.shape and z.shape == (64, 48)
    assert (z >= 0).all()
    torch.testing.assert_close(sae.decode(sae.encode(x)), x_hat)
    if arch == "topk":
        assert ((z > 0).sum(-1) <= 4).all()
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48))


def test_sparse_decode_matches_dense_in_value_and_gradient() -> None:
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=48, k=4), input_scale=0.1)
    x = _x()
    values, indices = sae.topk(x)
    sparse = sae.decode_sparse(values, indices)
    dense = sae.decode(sae.encode(x))
    torch.testing.assert_close(sparse, dense)
    sparse.square().sum().backward()
    grad_sparse = sae.W_dec.grad.clone()
    sae.zero_grad()
    sae.decode(sae.encode(x)).square().sum().backward()
    torch.testing.assert_close(grad_sparse, sae.W_dec.grad, rtol=1e-4, atol=1e-2)


def test_jumprelu_threshold_gets_pseudo_gradient_near_the_jump() -> None:
    cfg = SAEConfig(architecture="jumprelu", d_in=16, d_sae=48, jumprelu_bandwidth=0.5, jumprelu_init_threshold=1.0)
    sae = SparseAutoencoder(cfg)
    z = sae.encode(_x() * 0.05)
    assert ((z == 0) | (z > 1.0)).all()  # below the threshold nothing passes
    z.sum().backward()
    # Raising a threshold removes mass just above it: the gradient on it is <= 0.
    assert (sae.log_threshold.grad <= 0).all() and (sae.log_threshold.grad < 0).any()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_saelens_layout_round_trip(arch: str, tmp_path: Path) -> None:
    cfg = SAEConfig(architecture=arch, d_in=16, d_sae=48, k=4, jumprelu_init_threshold=0.05)
    sae = SparseAutoencoder(cfg, input_scale=0.07, seed=3)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.3)  # an estimated inference threshold
    save_sae(sae, tmp_path / "sae", metadata={"hook_name": "blocks.2.hook_resid_post"})
    raw = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    saved_as = {"topk": "topk", "batchtopk": "jumprelu", "matryoshka": "jumprelu", "jumprelu": "jumprelu"}
    assert raw["architecture"] == saved_as.get(arch, "standard")
    assert raw["normalize_activations"] == "none" and raw["d_in"] == 16 and raw["d_sae"] == 48
    loaded = load_sae(tmp_path / "sae")
    assert loaded.cfg == sae.cfg  # the architecture comes back from ssae_config, not from "jumprelu"
    x = _x()
    torch.testing.assert_close(loaded(x)[0], sae(x)[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(loaded.W_dec.norm(dim=1), torch.ones(48))
    if arch in ("batchtopk", "matryoshka"):
        assert float(loaded.threshold) == pytest.approx(0.3)  # the threshold state, for finetuning

    # The file alone, read the way SAELens does (raw activations in, no normalisation).
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if arch == "topk":
        values, indices = torch.topk(F.relu(pre), 4, dim=-1)
        z = torch.zeros_like(pre).scatter_(-1, indices, values)
    elif arch in ("jumprelu", "batchtopk", "matryoshka"):
        z = pre * (pre > w["threshold"])
    else:
        z = F.relu(pre)
    torch.testing.assert_close(z @ w["W_dec"] + w["b_dec"], sae(x)[0], rtol=1e-4, atol=1e-3)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cfg.json: missing"):
        load_sae(tmp_path)
    with pytest.raises(ConfigError, match=r"sae.k: 99 exceeds d_sae=48"):
        SAEConfig.from_dict({"d_sae": 48, "k": 99})


def test_topk_recovers_a_planted_dictionary() -> None:
    """Synthetic sparse data from a known unit dictionary; training finds its atoms."""
    gen = torch.Generator().manual_seed(0)
    d, n_atoms, active = 24, 48, 3
    atoms = F.normalize(torch.randn(n_atoms, d, generator=gen), dim=1)

    def batch(n: int) -> torch.Tensor:
        idx = torch.rand(n, n_atoms, generator=gen).argsort(dim=1)[:, :active]  # a random subset per row
        coef = torch.rand(n, active, generator=gen) * 2 + 1
        return (coef.unsqueeze(-1) * atoms[idx]).sum(1)

    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=n_atoms, k=active), seed=1)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(1500):
        x = batch(256)
        values, indices = sae.topk(x)
        loss = (sae.decode_sparse(values, indices) - x).square().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalize_decoder()
    best = (atoms @ sae.W_dec.detach().t()).max(dim=1).values
    # Measured here: mean best cosine 0.965 after 1500 steps (0.972 after 3000), 96% of atoms
    # above 0.8.
    assert best.mean() > 0.9 and (best > 0.8).float().mean() >= 0.9, best


def test_sparse_topk_backward_matches_dense_autograd() -> None:
    """TopKEncode's hand-written sparse backward equals autograd through the dense path,
    for the main top-k and the AuxK selection among dead latents, also for the input."""
    sae = SparseAutoencoder(SAEConfig(d_in=12, d_sae=40, k=3), input_scale=0.7, seed=3)
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(1))
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    dead = torch.arange(40) % 3 == 0
    weights = torch.randn(16, 3, generator=torch.Generator().manual_seed(4)), torch.randn(16, 5)

    def grads(values: torch.Tensor, aux_values: torch.Tensor) -> list[torch.Tensor]:
        loss = (values * weights[0]).sum() + (aux_values * weights[1]).sum()
        return torch.autograd.grad(loss, [sae.W_enc, sae.b_enc, sae.b_dec, x])

    values, indices, aux_values, aux_indices = sae.topk_train(x, dead, 5)
    sparse = grads(values, aux_values)
    pre = sae.pre_activations(x)
    ref_values = torch.relu(pre).gather(1, indices)
    ref_aux = torch.relu(pre).gather(1, aux_indices)
    assert dead[aux_indices].all()
    torch.testing.assert_close(values, ref_values)
    for got, want in zip(sparse, grads(ref_values, ref_aux), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_batchtopk_keeps_k_per_token_on_average_over_the_batch() -> None:
    """While training, BatchTopK keeps the k * batch largest (ReLU'd) pre-activations of the
    whole batch: mean L0 exactly k, per-token counts free to vary."""
    sae = SparseAutoencoder(SAEConfig(architecture="batchtopk", d_in=16, d_sae=64, k=4), input_scale=0.1, seed=2)
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(1))
    x = _x(128)
    values, rows, latents, _, _ = sae.batchtopk_train(x)
    assert int((values > 0).sum()) == 4 * 128  # mean L0 over the batch is exactly k
    per_token = torch.bincount(rows[values > 0], minlength=128)
    assert per_token.min() < 4 < per_token.max()  # not k per token: that would be TopK
    pre = torch.relu(sae.pre_activations(x))
    kept = torch.zeros_like(pre, dtype=torch.bool)
    kept[rows, latents] = True
    torch.testing.assert_close(values, pre[rows, latents])
    assert pre[kept].min() >= pre[~kept].max()  # exactly the batch's largest


def test_sparse_batchtopk_backward_matches_dense_autograd() -> None:
    """BatchTopKEncode's sparse backward equals autograd through the dense path, for the
    batch-wide selection and the AuxK selection among dead latents, also for the input."""
    sae = SparseAutoencoder(SAEConfig(architecture="batchtopk", d_in=12, d_sae=40, k=3), input_scale=0.7, seed=3)
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(1))
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    dead = torch.arange(40) % 3 == 0
    weights = torch.randn(48, generator=torch.Generator().manual_seed(4)), torch.randn(16, 5)

    def grads(values: torch.Tensor, aux_values: torch.Tensor) -> list[torch.Tensor]:
        loss = (values * weights[0]).sum() + (aux_values * weights[1]).sum()
        return torch.autograd.grad(loss, [sae.W_enc, sae.b_enc, sae.b_dec, x])

    values, rows, latents, aux_values, aux_indices = sae.batchtopk_train(x, dead, 5)
    sparse = grads(values, aux_values)
    pre = torch.relu(sae.pre_activations(x))
    assert dead[aux_indices].all()
    torch.testing.assert_close(values, pre[rows, latents])
    for got, want in zip(sparse, grads(pre[rows, latents], pre.gather(1, aux_indices)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_prefix_reconstructions_match_dense_decoding() -> None:
    """Each Matryoshka prefix's sparse reconstruction equals decoding the dense activations
    with every latent >= m zeroed, in value and in gradient."""
    cfg = SAEConfig(architecture="matryoshka", d_in=16, d_sae=48, k=5, matryoshka_prefixes=[6, 20, 48])
    sae = SparseAutoencoder(cfg, input_scale=0.1, seed=4)
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(1))
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))
    x = _x(32)
    values, rows, latents, _, _ = sae.batchtopk_train(x)
    recons = sae.prefix_reconstructions(values, rows, latents, len(x))
    assert recons.shape == (32, 3, 16)
    weights = torch.randn(recons.shape, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad((recons * weights).sum(), [sae.W_dec, sae.b_dec, sae.W_enc], retain_graph=True)
    z = torch.zeros(32, 48).index_put((rows, latents), values)
    dense = torch.stack([z[:, :m] @ sae.W_dec[:m] + sae.b_dec for m in cfg.prefixes()], 1)
    torch.testing.assert_close(recons, dense, rtol=1e-5, atol=1e-4)
    want = torch.autograd.grad((dense * weights).sum(), [sae.W_dec, sae.b_dec, sae.W_enc])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_batchtopk_threshold_is_a_running_estimate_of_the_smallest_kept_activation() -> None:
    """The first batch sets the threshold to its smallest kept activation, later batches
    move it by (1 - beta); inference is ReLU until then and the JumpReLU rule after."""
    sae = SparseAutoencoder(SAEConfig(architecture="batchtopk", d_in=16, d_sae=64, k=4, batchtopk_threshold_beta=0.9))
    x = _x(64)
    torch.testing.assert_close(sae.encode(x), torch.relu(sae.pre_activations(x)))  # not estimated yet
    sae.update_threshold(torch.tensor([0.0, 3.0, 2.0, 5.0]))
    assert float(sae.threshold) == pytest.approx(2.0)
    sae.update_threshold(torch.tensor([1.0, 4.0]))
    assert float(sae.threshold) == pytest.approx(0.9 * 2.0 + 0.1 * 1.0)
    pre = sae.pre_activations(x)
    torch.testing.assert_close(sae.encode(x), pre * (pre > 1.9))


@pytest.mark.parametrize(
    ("prefixes", "message"),
    [
        ([16, 8, 64], "must be positive and strictly increasing"),
        ([8, 8, 64], "must be positive and strictly increasing"),
        ([0, 64], "must be positive and strictly increasing"),
        ([8, 32], "the last prefix must be d_sae=64"),
    ],
)
def test_bad_matryoshka_prefixes_name_the_key(prefixes: list[int], message: str) -> None:
    with pytest.raises(ConfigError, match=rf"sae.matryoshka_prefixes: {message}"):
        SAEConfig.from_dict({"architecture": "matryoshka", "d_sae": 64, "matryoshka_prefixes": prefixes})
    with pytest.raises(ConfigError, match=r"sae.matryoshka_prefixes: only used by architecture 'matryoshka'"):
        SAEConfig.from_dict({"architecture": "batchtopk", "d_sae": 64, "matryoshka_prefixes": [8, 64]})
    cfg = SAEConfig.from_dict({"architecture": "matryoshka", "d_sae": 64})
    assert cfg.prefixes() == [4, 16, 64]  # the default: d_sae/16, d_sae/4, d_sae
