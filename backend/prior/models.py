"""Cheap checks that a video model is present and complete, before any weights are loaded.

A model is named by a local folder (a diffusers pipeline saved with save_pretrained) or by a
Hugging Face hub id that must already be in the local HF cache: jobs never download.
Only the standard library, the contract and huggingface_hub (for the cache lookup) are imported here.
"""
from __future__ import annotations

import glob
import json
import os
import re

from ..protocol import DEFAULT_MODELS
from .errors import ModelUnavailable

# kind -> (pipeline class names accepted in model_index.json, required components, description)
MODEL_KINDS = {
    "svd": (("StableVideoDiffusionPipeline",),
            {"unet": "model", "vae": "model", "image_encoder": "model",
             "scheduler": "scheduler", "feature_extractor": "processor"},
            "Stable Video Diffusion (image-to-video)"),
    "modelscope": (("TextToVideoSDPipeline", "VideoToVideoSDPipeline"),
                   {"unet": "model", "vae": "model", "text_encoder": "model",
                    "tokenizer": "tokenizer", "scheduler": "scheduler"},
                   "ModelScope text-to-video"),
}

_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")  # never *.bin: pickles can run code
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _how_to_get(kind: str, model: str | None = None) -> str:
    repo = model if model and _HUB_ID.match(model) else DEFAULT_MODELS[kind]
    return (f"Download it once with `hf download {repo}` (or `huggingface-cli download {repo}`), "
            f"or point the model setting at a folder saved with diffusers' save_pretrained.")


def _check_safetensors(path: str) -> str | None:
    """Reads only the header: a truncated or garbage file fails here, in milliseconds."""
    try:
        from safetensors import safe_open
        with safe_open(path, framework="np") as f:
            f.keys()
    except Exception as err:  # safetensors raises several types for a bad header
        return f"{path} is corrupt or truncated ({err})"
    return None


def _check_component(folder: str, name: str, role: str) -> str | None:
    sub = os.path.join(folder, name)
    if not os.path.isdir(sub):
        return f"component folder '{name}/' is missing"
    if role == "model":
        cfg = os.path.join(sub, "config.json")
        if not os.path.isfile(cfg):
            return f"'{name}/config.json' is missing"
        try:
            with open(cfg, encoding="utf-8") as f:
                json.load(f)
        except (OSError, ValueError) as err:
            return f"'{name}/config.json' is unreadable ({err})"
        weights = [p for pat in _WEIGHT_PATTERNS for p in glob.glob(os.path.join(sub, pat)) if os.path.isfile(p)]
        if not weights:
            if glob.glob(os.path.join(sub, "*.bin")):
                return (f"'{name}/' has only .bin weights, which are pickles that can run code; this backend "
                        "loads .safetensors only (download the safetensors files of the model)")
            return f"'{name}/' has no weights (*.safetensors)"
        for p in weights:
            if p.endswith(".safetensors"):
                bad = _check_safetensors(p)
                if bad:
                    return bad
            elif os.path.getsize(p) == 0:
                return f"{p} is empty"
    elif role == "scheduler":
        if not os.path.isfile(os.path.join(sub, "scheduler_config.json")):
            return f"'{name}/scheduler_config.json' is missing"
    elif role == "processor":
        if not os.path.isfile(os.path.join(sub, "preprocessor_config.json")):
            return f"'{name}/preprocessor_config.json' is missing"
    elif role == "tokenizer":
        has_fast = os.path.isfile(os.path.join(sub, "tokenizer.json"))
        has_bpe = all(os.path.isfile(os.path.join(sub, f)) for f in ("vocab.json", "merges.txt"))
        if not (has_fast or has_bpe):
            return f"'{name}/' has neither tokenizer.json nor vocab.json + merges.txt"
    return None


def check_folder(kind: str, folder: str) -> tuple[bool, str]:
    """Is `folder` a complete diffusers pipeline of this kind? (ok, message)."""
    classes, components, desc = MODEL_KINDS[kind]
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        return False, f"{folder} has no model_index.json, so it is not a diffusers pipeline folder"
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        return False, f"{index_path} is unreadable ({err})"
    if not isinstance(index, dict):
        return False, f"{index_path} is not a JSON object"
    cls = index.get("_class_name")
    if cls not in classes:
        return False, f"{folder} holds a {cls or 'unknown'} pipeline, not {desc} ({' or '.join(classes)})"
    for name, role in components.items():
        if not index.get(name) or index[name] == [None, None]:
            return False, f"{index_path} lists no '{name}' component"
        problem = _check_component(folder, name, role)
        if problem:
            return False, f"{folder} is incomplete or corrupt: {problem}"
    return True, f"{desc} found at {folder}"


def locate_model(kind: str, model: str) -> str:
    """The local folder holding `model` (a folder, or a hub id in the HF cache); raises ModelUnavailable."""
    if kind not in MODEL_KINDS:
        raise ModelUnavailable(f"unknown video model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    if not model or not str(model).strip():
        raise ModelUnavailable(f"no {MODEL_KINDS[kind][2]} model given. {_how_to_get(kind)}")
    model = os.path.expanduser(str(model))
    if os.path.isdir(model):
        folder = model
    elif _HUB_ID.match(model):
        try:
            from huggingface_hub import snapshot_download
            folder = snapshot_download(model, local_files_only=True)
        except Exception as err:  # LocalEntryNotFoundError, bad cache layout, bad id
            raise ModelUnavailable(f"{MODEL_KINDS[kind][2]} model '{model}' is not in the local Hugging Face "
                                   f"cache ({type(err).__name__}). {_how_to_get(kind, model)}") from None
    else:
        raise ModelUnavailable(f"model folder '{model}' does not exist. {_how_to_get(kind)}")
    ok, message = check_folder(kind, folder)
    if not ok:
        raise ModelUnavailable(f"{message}. {_how_to_get(kind, model)}")
    return folder


def check_model(kind: str, model: str | None = None) -> tuple[bool, str]:
    """For `doctor`: is the model usable, and if not, what to do. Never loads weights."""
    model = model or DEFAULT_MODELS.get(kind, "")
    try:
        folder = locate_model(kind, model)
    except ModelUnavailable as err:
        return False, str(err)
    return True, f"{MODEL_KINDS[kind][2]} '{model}' is available ({folder})"
