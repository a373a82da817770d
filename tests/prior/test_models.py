"""Model availability: missing / corrupt folders and uncached hub ids fail clearly before heavy work."""
import json
import os
import shutil

import pytest

from backend.prior import ModelUnavailable, PriorConfigError, check_model, load_prior


@pytest.fixture
def no_weights_loaded(monkeypatch):
    import backend.prior.loader as loader

    for name in ("_load_svd", "_load_modelscope"):
        monkeypatch.setattr(loader, name, lambda *a, **k: pytest.fail("weights were loaded"))


def test_good_folders_pass(tiny_svd_dir, tiny_modelscope_dir):
    assert check_model("svd", tiny_svd_dir)[0]
    assert check_model("modelscope", tiny_modelscope_dir)[0]


def test_missing_folder(tmp_path, no_weights_loaded):
    with pytest.raises(ModelUnavailable, match="does not exist.*hf download"):
        load_prior("svd", str(tmp_path / "nope" / "svd"))


def test_uncached_hub_id(no_weights_loaded):
    ok, msg = check_model("svd", "nobody-here/not-a-real-video-model")
    assert not ok and "not in the local Hugging Face cache" in msg
    assert "huggingface-cli download nobody-here/not-a-real-video-model" in msg
    with pytest.raises(ModelUnavailable, match="not in the local Hugging Face cache"):
        load_prior("svd", "nobody-here/not-a-real-video-model")


def test_wrong_kind_of_pipeline(tiny_modelscope_dir, no_weights_loaded):
    with pytest.raises(ModelUnavailable, match="TextToVideoSDPipeline pipeline, not Stable Video Diffusion"):
        load_prior("svd", tiny_modelscope_dir)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_corrupt_folders(tiny_svd_dir, tmp_path, no_weights_loaded):
    # Garbage model_index.json.
    a = _copy(tiny_svd_dir, tmp_path / "a")
    with open(os.path.join(a, "model_index.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ModelUnavailable, match="model_index.json is unreadable"):
        load_prior("svd", a)
    # A missing component folder.
    b = _copy(tiny_svd_dir, tmp_path / "b")
    shutil.rmtree(os.path.join(b, "unet"))
    with pytest.raises(ModelUnavailable, match="'unet/' is missing"):
        load_prior("svd", b)
    # Truncated weights.
    c = _copy(tiny_svd_dir, tmp_path / "c")
    w = os.path.join(c, "vae", "diffusion_pytorch_model.safetensors")
    with open(w, "r+b") as f:
        f.truncate(20)
    with pytest.raises(ModelUnavailable, match="corrupt or truncated"):
        load_prior("svd", c)
    # model_index.json without an image encoder.
    d = _copy(tiny_svd_dir, tmp_path / "d")
    idx = json.load(open(os.path.join(d, "model_index.json")))
    del idx["image_encoder"]
    json.dump(idx, open(os.path.join(d, "model_index.json"), "w"))
    ok, msg = check_model("svd", d)
    assert not ok and "no 'image_encoder' component" in msg


def test_bad_options_fail_before_loading(tiny_svd_dir, no_weights_loaded):
    with pytest.raises(PriorConfigError, match="do not apply"):
        load_prior("svd", tiny_svd_dir, prompt="a dog")
    with pytest.raises(PriorConfigError, match="unknown video prior"):
        load_prior("sora", tiny_svd_dir)
