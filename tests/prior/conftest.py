"""Tiny SVD / ModelScope pipelines built from config, saved once per session, loaded like real weights."""
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_svd_dir(tmp_path_factory):
    from support.tiny_models import save_tiny_svd
    return str(save_tiny_svd(str(tmp_path_factory.mktemp("tiny_svd"))))


@pytest.fixture(scope="session")
def tiny_modelscope_dir(tmp_path_factory):
    from support.tiny_models import save_tiny_modelscope
    return str(save_tiny_modelscope(str(tmp_path_factory.mktemp("tiny_modelscope"))))


@pytest.fixture(scope="session")
def svd_prior(tiny_svd_dir):
    from backend.prior import load_prior
    prior = load_prior("svd", tiny_svd_dir, device="cpu")
    prior.prepare(cond_image=torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)))
    return prior


@pytest.fixture(scope="session")
def modelscope_prior(tiny_modelscope_dir):
    from backend.prior import load_prior
    return load_prior("modelscope", tiny_modelscope_dir, device="cpu", prompt="the flower sways",
                      negative_prompt="static")


def smooth_video(frames=4, size=64, seed=0):
    """A small moving blob video in [0,1] (T,3,H,W)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    color = torch.rand(3, 1, 1, generator=g)
    out = []
    for t in range(frames):
        blob = torch.exp(-((xx - 0.1 * t) ** 2 + yy ** 2) / 0.2)
        out.append(0.2 + 0.7 * blob * color)
    return torch.stack(out)
