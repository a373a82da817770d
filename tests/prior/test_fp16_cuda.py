"""The video priors in fp16 on CUDA (their default there) against fp32: the same loss and gradient
direction on the tiny pipelines. Needs a CUDA device; skipped elsewhere."""
import pytest
import torch

from .conftest import smooth_video

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (fp16 priors are CUDA-only)")


@pytest.mark.parametrize("kind", ["svd", "modelscope"])
def test_fp16_prior_matches_fp32(kind, tiny_svd_dir, tiny_modelscope_dir):
    from backend.prior import load_prior

    folder = tiny_svd_dir if kind == "svd" else tiny_modelscope_dir
    opts = {} if kind == "svd" else {"prompt": "the flower sways"}
    results = {}
    for dtype in (torch.float32, torch.float16):
        prior = load_prior(kind, folder, device="cuda", dtype=dtype, **opts)
        if kind == "svd":
            prior.prepare(cond_image=torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)).cuda())
        video = smooth_video(frames=4).cuda().requires_grad_()
        loss, _ = prior.loss(video, 0, 1, torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(video.grad).all()
        results[dtype] = (float(loss), video.grad.float().flatten())
    (l32, g32), (l16, g16) = results[torch.float32], results[torch.float16]
    assert l16 == pytest.approx(l32, rel=0.05, abs=1e-3)
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.95
