"""RQ-VAE (Lee et al. 2022; TIGER): MLP encoder -> L residual codebooks -> MLP decoder,
trained with torch on the sample; encoding and decoding run in numpy from the saved arrays.

Choices the papers leave open: one hidden layer of `hidden_dim` with ReLU on each side,
codebooks initialised by residual k-means on the untrained encoder's outputs, the
straight-through estimator, commitment weight `beta`, and codes unused in an epoch
re-seeded at random residuals (keeps utilisation up)."""
from __future__ import annotations

import numpy as np

from psrq.quant.base import Quantizer, layer_kmeans
from psrq.quant.kmeans import fit_kmeans, nearest


class RQVAE(Quantizer):
    """Trained with torch (imported only to fit); arrays: enc*/dec* MLP weights and the
    latent space's layer codebooks."""

    def _fit(self, x):
        return fit_rqvae(self.spec, x)

    def _encode(self, x):
        return encode_rqvae(self.spec, self.fitted, x)

    def decode(self, codes):
        return decode_rqvae(self.spec, self.fitted, codes)

    @property
    def input_dim(self):
        return self.fitted["enc0.weight"].shape[1]


def _mlp_np(arrays: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ arrays[f"{prefix}0.weight"].T + arrays[f"{prefix}0.bias"], 0.0)
    return (h @ arrays[f"{prefix}1.weight"].T + arrays[f"{prefix}1.bias"]).astype(np.float32)


def fit_rqvae(spec, x: np.ndarray) -> dict[str, np.ndarray]:
    import torch
    from torch import nn

    seed = spec.kmeans.seed
    torch.manual_seed(seed)
    d = x.shape[1]
    enc = nn.Sequential(nn.Linear(d, spec.hidden_dim), nn.ReLU(), nn.Linear(spec.hidden_dim, spec.latent_dim))
    dec = nn.Sequential(nn.Linear(spec.latent_dim, spec.hidden_dim), nn.ReLU(), nn.Linear(spec.hidden_dim, d))
    X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        r = enc(X).numpy()
    books = []
    for l in range(spec.layers):
        c = fit_kmeans(r, layer_kmeans(spec, l))
        books.append(nn.Parameter(torch.from_numpy(c)))
        r = r - c[nearest(r, c)]
    params = list(enc.parameters()) + list(dec.parameters()) + books
    opt = torch.optim.Adam(params, lr=spec.lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(spec.epochs):
        used = [torch.zeros(spec.k, dtype=torch.bool) for _ in books]
        for idx in torch.randperm(len(X), generator=gen).split(spec.batch_size):
            xb = X[idx]
            z = enc(xb)
            res, zq, commit = z, torch.zeros_like(z), 0.0
            for l, book in enumerate(books):
                code = torch.cdist(res.detach(), book.detach()).argmin(1)
                used[l][code] = True
                q = book[code]
                commit = commit + ((q - res.detach()) ** 2).mean() + spec.beta * ((q.detach() - res) ** 2).mean()
                zq = zq + q
                res = res - q.detach()
            z_st = z + (zq - z).detach()
            loss = ((dec(z_st) - xb) ** 2).mean() + commit
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # re-seed dead codes at random encoder outputs' residuals
            for l, book in enumerate(books):
                dead = (~used[l]).nonzero().flatten()
                if len(dead):
                    pick = torch.randint(len(X), (len(dead),), generator=gen)
                    book[dead] = enc(X[pick]) * 0.1
    arrays = {}
    for prefix, net in (("enc", enc), ("dec", dec)):
        for i, layer in enumerate(m for m in net if isinstance(m, nn.Linear)):
            arrays[f"{prefix}{i}.weight"] = layer.weight.detach().numpy().astype(np.float32)
            arrays[f"{prefix}{i}.bias"] = layer.bias.detach().numpy().astype(np.float32)
    for l, book in enumerate(books):
        arrays[f"layer{l}"] = book.detach().numpy().astype(np.float32)
    return arrays


def encode_rqvae(spec, arrays: dict, x: np.ndarray) -> np.ndarray:
    r = _mlp_np(arrays, "enc", x)
    codes = np.empty((len(x), spec.layers), dtype=np.int32)
    for l in range(spec.layers):
        c = arrays[f"layer{l}"]
        codes[:, l] = nearest(r, c)
        r = r - c[codes[:, l]]
    return codes


def decode_rqvae(spec, arrays: dict, codes: np.ndarray) -> np.ndarray:
    zq = sum(arrays[f"layer{l}"][codes[:, l]] for l in range(spec.layers))
    return _mlp_np(arrays, "dec", zq)
