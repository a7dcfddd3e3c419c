"""Golden files of CONCH v1 (MahmoodLab CoCa, ViT-B/16 at 448 px) for tests/features/test_conch_v1.py.

The reference is mahmoodlab/CONCH (``conch/open_clip_custom``: ``coca_model.CoCa``, ``vision_tower.VisualModel``,
``transformer.TextTransformer`` / ``AttentionalPooler``, ``custom_tokenizer.get_tokenizer`` / ``tokenize``,
``model_configs/conch_ViT-B-16.json``). Run by hand, outside slidescope, against an exported checkout::

    git --git-dir=MIRROR archive HEAD | tar -x -C /tmp/conch_src           # MIRROR: a clone of mahmoodlab/CONCH
    uv venv /tmp/conchvenv --python 3.11
    uv pip install --python /tmp/conchvenv/bin/python torch torchvision timm==1.0.31 transformers==4.37.2 \\
        numpy huggingface_hub
    /tmp/conchvenv/bin/python tests/golden/make_conch_v1.py /tmp/conch_src \\
        --commit $(git --git-dir=MIRROR rev-parse HEAD)

The model is built the way ``factory.create_model`` builds it (the config json, ``custom_text`` popped,
``CoCa(**cfg)``) but nothing is downloaded and no checkpoint is loaded. Writes:

* ``conch_v1_layout.json``: the state-dict keys and shapes of the full-size model from
  ``conch_ViT-B-16.json`` (what ``MahmoodLab/conch/pytorch_model.bin`` holds for that code to load it);
* ``conch_v1.npz``: a tiny model of the same structure (every flag of the config kept, widths and depths
  small, every parameter random, LayerNorm affines included) with its weights under the checkpoint's names,
  fixed normalised images and token ids, and the reference outputs of ``encode_image(proj_contrast=False,
  normalize=False)`` (the patch feature TRIDENT stores), ``encode_image()`` (projected, normalised),
  ``encode_text(normalize=False)`` and ``encode_text()``, and ``coca_model.resize_pos_embed`` of a positional
  grid made for half the image size; plus the token ids the reference ``tokenize``
  gives with (a) the real CONCH tokenizer file for a few prompts and (b) a small byte-level BPE tokenizer
  built here with the same normaliser, pre-tokeniser, template and special tokens
  (``conch_v1_tiny_tokenizer.json``, our own, so the test can run the real wrapper offline).

transformers is pinned to 4.37.2, a release from before CONCH's (March 2024): from 4.38 on (PR #28010)
``PreTrainedTokenizerFast(tokenizer_file=...)`` overrides the file's ``ByteLevel(add_prefix_space=True)`` with
False unless ``add_prefix_space`` is passed, which CONCH's ``get_tokenizer`` does not; the first word of every
prompt then gets another id ("lung": 9988 instead of 804 with 4.57). 4.37.2, the ``tokenizers`` library alone
and transformers 5 all follow the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import transformers

HERE = Path(__file__).parent
PROMPTS = [
    "lung adenocarcinoma",
    "an H&E image of squamous cell carcinoma.",
    "Invasive Ductal Carcinoma, high grade",
    "normal colonic mucosa " * 60,  # longer than the context: truncated
]
TINY = {
    "embed_dim": 16,
    "embed_dim_caption": 24,
    "vision_cfg": {
        "image_size": 64,
        "patch_size": 16,
        "width": 32,
        "layers": 2,
        "num_heads": 4,
        "attentional_pool_caption": True,
        "attentional_pool_contrast": True,
        "attn_pooler_heads": 8,
        "n_queries_contrast": 1,
        "n_queries_caption": 6,
        "output_tokens": True,
    },
    "text_cfg": {
        "context_length": 128,
        "vocab_size": 400,
        "width": 32,
        "heads": 4,
        "layers": 2,
        "embed_cls": True,
        "output_tokens": True,
    },
    "multimodal_cfg": {"context_length": 128, "vocab_size": 400, "width": 32, "heads": 4, "layers": 1},
}
SPECIALS = [
    "<pad>",
    "<start_of_text>",
    "<end_of_text>",
    "<|person|>",
    "<|mrn|>",
    "<|specimen_id|>",
    "<|date|>",
]
CORPUS = [
    "invasive ductal carcinoma of the breast",
    "lung adenocarcinoma with acinar pattern",
    "squamous cell carcinoma, keratinizing",
    "normal colonic mucosa and lymph node tissue",
    "an H&E image of tumour stroma, necrosis and benign glands",
]


def build_reference(conch_src: Path, cfg: dict) -> torch.nn.Module:
    sys.path.insert(0, str(conch_src))
    from conch.open_clip_custom.coca_model import CoCa

    cfg = json.loads(json.dumps(cfg))
    cfg.pop("custom_text", None)  # as factory.create_model
    return CoCa(**cfg)


def full_layout(conch_src: Path, commit: str) -> dict:
    path = conch_src / "conch/open_clip_custom/model_configs/conch_ViT-B-16.json"
    cfg = json.loads(path.read_text())
    torch.manual_seed(0)
    model = build_reference(conch_src, cfg)
    state = model.state_dict()
    return {
        "source": (
            f"mahmoodlab/CONCH@{commit}: CoCa(**conch_ViT-B-16.json) as factory.create_model builds it (random "
            "init, no download), state_dict() keys and shapes. factory.load_checkpoint loads pytorch_model.bin "
            "into this module (strict=False; visual.trunk.pos_embed resized first if its grid differs)."
        ),
        "script": "tests/golden/make_conch_v1.py",
        "config": cfg,
        "n_tensors": len(state),
        "n_params": int(sum(v.numel() for v in state.values())),
        "shapes": {k: list(v.shape) for k, v in state.items()},
    }


def tiny_tokenizer(conch_src: Path) -> Path:
    """A byte-level BPE with CONCH's pipeline (normaliser, pre-tokeniser, template, specials), trained here."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY["text_cfg"]["vocab_size"],
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)],
    )
    out = HERE / "conch_v1_tiny_tokenizer.json"
    tok.save(str(out))
    return out


def token_ids(conch_src: Path, tokenizer_file: Path | None) -> np.ndarray:
    """``custom_tokenizer.tokenize(get_tokenizer(), PROMPTS)`` with the bundled or the given tokenizer file."""
    from conch.open_clip_custom import custom_tokenizer

    bundled = custom_tokenizer.TOKENIZER_DIR, custom_tokenizer.DEFAULT_TOKENIZER
    if tokenizer_file is not None:
        custom_tokenizer.TOKENIZER_DIR = tokenizer_file.parent
        custom_tokenizer.DEFAULT_TOKENIZER = tokenizer_file.name
    try:
        tok = custom_tokenizer.get_tokenizer()
    finally:
        custom_tokenizer.TOKENIZER_DIR, custom_tokenizer.DEFAULT_TOKENIZER = bundled
    return custom_tokenizer.tokenize(tok, PROMPTS).numpy()


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (LayerNorm weights around 1), so no default 0/1 can hide a swapped tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("weight") and p.ndim == 1:  # LayerNorm
                p.copy_(1.0 + 0.2 * noise)
            elif "logit_scale" in name:
                p.fill_(float(np.log(1 / 0.07)) + 0.3)
            else:
                p.copy_(noise * (p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1))


def tiny_golden(conch_src: Path, commit: str, tok_file: Path) -> dict:
    from conch.open_clip_custom.coca_model import resize_pos_embed

    torch.manual_seed(0)
    model = build_reference(conch_src, TINY).eval()
    randomise(model, seed=1)
    g = torch.Generator().manual_seed(2)
    size = TINY["vision_cfg"]["image_size"]
    images = torch.randn(3, 3, size, size, generator=g)  # already normalised: encode_image's input
    text = torch.from_numpy(token_ids(conch_src, tok_file))
    with torch.no_grad():
        out = {
            "image_pre": model.encode_image(images, proj_contrast=False, normalize=False),
            "image_proj": model.encode_image(images, proj_contrast=True, normalize=False),
            "image_proj_norm": model.encode_image(images),
            "text": model.encode_text(text, normalize=False),
            "text_norm": model.encode_text(text),
            "logit_scale_exp": model.logit_scale.exp(),
        }
    # a checkpoint whose positional grid is another size: the reference's load_checkpoint resizes it first
    small = json.loads(json.dumps(TINY))
    small["vision_cfg"]["image_size"] = size // 2
    other = build_reference(conch_src, small).state_dict()
    small_pos = torch.randn(other["visual.trunk.pos_embed"].shape, generator=g)
    resized = {"visual.trunk.pos_embed": small_pos.clone()}
    resize_pos_embed(resized, model)
    out["pos_embed_small"] = small_pos
    out["pos_embed_resized"] = resized["visual.trunk.pos_embed"]
    res = {f"out_{k}": v.numpy().astype(np.float32) for k, v in out.items()}
    res.update({f"w/{k}": v.numpy().astype(np.float32) for k, v in model.state_dict().items()})
    res["in_images"] = images.numpy()
    res["in_text_ids"] = text.numpy().astype(np.int64)
    res["tiny_config"] = np.array(json.dumps(TINY))
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conch_src", type=Path, help="exported mahmoodlab/CONCH checkout")
    parser.add_argument("--commit", required=True, help="its commit (recorded as provenance)")
    args = parser.parse_args()

    layout = full_layout(args.conch_src, args.commit)
    (HERE / "conch_v1_layout.json").write_text(json.dumps(layout, indent=1) + "\n")

    tok_file = tiny_tokenizer(args.conch_src)
    res = tiny_golden(args.conch_src, args.commit, tok_file)
    res["real_tokenizer_ids"] = token_ids(args.conch_src, None).astype(np.int64)
    res["prompts"] = np.array(PROMPTS)
    res["provenance"] = np.array(
        f"mahmoodlab/CONCH@{args.commit}: conch/open_clip_custom coca_model.CoCa(**cfg) (factory.create_model's "
        "build, no checkpoint), encode_image(proj_contrast=False, normalize=False), encode_image(proj_contrast=True, "
        "normalize=False), encode_image(), encode_text(normalize=False), encode_text(); custom_tokenizer.get_tokenizer"
        " + tokenize (real_tokenizer_ids: the bundled conch_byte_level_bpe_uncased.json; in_text_ids: "
        f"conch_v1_tiny_tokenizer.json). torch {torch.__version__}, transformers {transformers.__version__}, "
        "timm " + timm.__version__ + "; script tests/golden/make_conch_v1.py"
    )
    np.savez_compressed(HERE / "conch_v1.npz", **res)
    print(
        layout["n_tensors"],
        "tensors,",
        layout["n_params"],
        "params; tiny outputs:",
        {k: v.shape for k, v in res.items() if k.startswith("out_")},
    )


if __name__ == "__main__":
    main()
