"""Session fixtures for slide-text tests: a 32-slide synthetic cohort with he-descriptor embeddings, a
patient-level held-out split (pretraining sees the training reports only) and one pretrained model."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ENCODER = "he-descriptor"


@dataclass(frozen=True)
class VlmCohort:
    root: Path
    manifest: Path
    train_manifest: Path
    test_manifest: Path
    store: Path
    rows: list[dict[str, str]]
    train_rows: list[dict[str, str]]
    test_rows: list[dict[str, str]]

    def store_of(self, row: dict[str, str]) -> Path:
        from slidescope.features.store import store_path

        return store_path(self.store, self.manifest.parent / row["slide"])


@dataclass(frozen=True)
class Pretrained:
    result: object  # slidescope.vlm.pretrain.PretrainResult
    model_dir: Path
    seconds: float


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def vlm_cohort(tmp_path_factory: pytest.TempPathFactory) -> VlmCohort:
    from slidescope.features.extract import extract_slides
    from slidescope.synthetic import make_synthetic_cohort

    root = tmp_path_factory.mktemp("vlm_cohort")
    manifest = make_synthetic_cohort(root / "cohort", n_slides=32, width=1536, height=1152, seed=1)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    store = root / "store"
    results = extract_slides(
        [manifest.parent / r["slide"] for r in rows], ENCODER, store=store, num_workers=0, progress=False
    )
    assert all(r.status == "done" for r in results), [(r.slide, r.error) for r in results]
    # held out: every third patient of each label (patients never straddle the split)
    label_of = {r["patient"]: r["label"] for r in rows}
    test_patients = set()
    for label in ("tumour", "normal"):
        test_patients.update(sorted(p for p, lab in label_of.items() if lab == label)[::3])
    train_rows = [r for r in rows if r["patient"] not in test_patients]
    test_rows = [r for r in rows if r["patient"] in test_patients]
    cohort_dir = manifest.parent
    return VlmCohort(
        root=root,
        manifest=manifest,
        store=store,
        rows=rows,
        train_rows=train_rows,
        test_rows=test_rows,
        train_manifest=_write(cohort_dir / "train.csv", train_rows),
        test_manifest=_write(cohort_dir / "test.csv", test_rows),
    )


@pytest.fixture(scope="session")
def pretrained(vlm_cohort: VlmCohort) -> Pretrained:
    from slidescope.vlm.pretrain import pretrain

    t0 = time.perf_counter()
    result = pretrain(
        vlm_cohort.train_manifest,
        store=vlm_cohort.store,
        encoder=ENCODER,
        out=vlm_cohort.root / "pretrain",
        epochs=60,
        seed=0,
        accelerator="cpu",
    )
    return Pretrained(result=result, model_dir=result.model_dir, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------- published models (PRISM, TITAN)

REMOTE_CODE = Path(__file__).parent / "remote_code"
REPORT_WORDS = (
    "diagnosis : invasive ductal carcinoma lobular benign breast tissue fibrocystic change . grade 2 "
    "lymph node metastatic squamous cell lung adenocarcinoma an image of the shows is present"
).split()


@pytest.fixture(scope="session")
def remote_code_cache(tmp_path_factory: pytest.TempPathFactory):
    """transformers copies remote code into HF_MODULES_CACHE and imports it from there: keep that in a temp dir."""
    import sys

    import transformers.dynamic_module_utils as dmu

    cache = tmp_path_factory.mktemp("hf_modules")
    forget_dynamic_modules()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dmu, "HF_MODULES_CACHE", str(cache))
        mp.setattr(sys, "path", list(sys.path))
        yield cache
    forget_dynamic_modules()


def forget_dynamic_modules() -> None:
    """Drop ``transformers_modules`` (the package transformers imports remote code as) from ``sys.modules``.

    Its ``__path__`` is the HF_MODULES_CACHE of whoever imported it first: a fixture that points the cache
    elsewhere (another test module's) would otherwise find none of the code it copies there."""
    import sys

    for name in [
        n for n in sys.modules if n == "transformers_modules" or n.startswith("transformers_modules.")
    ]:
        del sys.modules[name]


def _word_tokenizer(specials: dict[str, str], template: str, extra: tuple[str, ...] = ()):
    """A lower-casing word-level fast tokenizer over REPORT_WORDS (offline stand-in for the published ones)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {
        t: i for i, t in enumerate(dict.fromkeys([*specials.values(), *sorted(set(REPORT_WORDS)), *extra]))
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [t for t in vocab if t in template]
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in used]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials, additional_special_tokens=list(extra))


def build_remote_model_dir(
    root: Path, code: str, config: dict, tokenizer_dir: Path, tokenizer, seed: int = 0
) -> Path:
    """A directory shaped like the published repository: the modelling .py files, config.json (with
    ``auto_map``), tokenizer files and ``model.safetensors`` from a seeded random init of that code."""
    import json
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    root.mkdir(parents=True, exist_ok=True)
    for f in (REMOTE_CODE / code).glob("*.py"):
        shutil.copy(f, root / f.name)
    tokenizer.save_pretrained(tokenizer_dir)
    (root / "config.json").write_text(json.dumps(config, indent=1))
    cfg = AutoConfig.from_pretrained(str(root), trust_remote_code=True, local_files_only=True)
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg, trust_remote_code=True)
    # every name written out (shared modules too, as a state_dict pickle has them), each its own tensor
    save_file(
        {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        str(root / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return root


def prism_config(vocab_size: int, pad_id: int) -> dict:
    return {
        "model_type": "prism",
        "architectures": ["Prism"],
        "auto_map": {"AutoConfig": "configuring_prism.PrismConfig", "AutoModel": "modeling_prism.Prism"},
        "biogpt_config": {
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "pad_token_id": pad_id,
            "first_x_attn_layer": 2,
        },
        # PRISM's layout at toy width; context_dim stays Virchow's 2560 (the store check reads it)
        "perceiver_config": {
            "latent_seq": 6,
            "latent_dim": 32,
            "context_dim": 2560,
            "mhsa_heads": 4,
            "perceiver_depth": 3,
            "transformer_depth": 2,
            "share_xattn_start_layer": 1,
            "share_tf_start_layer": 0,
            "xattn_heads": 1,
            "mlp_mult": 1,
            "mlp_activation": "geglu",
        },
        "biogpt_context_dim": 32,
        "dim_latents": 24,
    }


@pytest.fixture(scope="session")
def prism_dir(tmp_path_factory: pytest.TempPathFactory, remote_code_cache) -> Path:
    root = tmp_path_factory.mktemp("models") / "prism"
    tok = _word_tokenizer(
        {"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
        "</s> $A",
        extra=("madeupword0006",),
    )
    return build_remote_model_dir(
        root, "prism", prism_config(len(tok), tok.pad_token_id), root / "biogpt", tok
    )


def titan_config(vocab_size: int) -> dict:
    return {
        "model_type": "titan",
        "architectures": ["Titan"],
        "auto_map": {"AutoConfig": "configuration_titan.TitanConfig", "AutoModel": "modeling_titan.Titan"},
        "vision_config": {
            "input_dim": 768,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 4,
            "mlp_ratio": 2.0,
            "proj_dim": 16,
        },
        "text_config": {
            "vocab_size": vocab_size,
            "width": 32,
            "heads": 4,
            "layers": 2,
            "context_length": 16,
            "embed_dim": 16,
        },
        "conch_config": {},
    }


@pytest.fixture(scope="session")
def titan_dir(tmp_path_factory: pytest.TempPathFactory, remote_code_cache) -> Path:
    root = tmp_path_factory.mktemp("models") / "titan"
    tok = _word_tokenizer(
        {
            "pad_token": "<pad>",
            "bos_token": "<start_of_text>",
            "eos_token": "<end_of_text>",
            "unk_token": "<unk>",
        },
        "<start_of_text> $A <end_of_text>",
    )
    return build_remote_model_dir(root, "titan", titan_config(len(tok)), root, tok)


def write_store(
    path: Path,
    embeddings,
    *,
    encoder: str,
    coords=None,
    tile_size: int = 224,
    mpp: float = 0.5,
    extent: int | None = None,
    weights_digest: str | None = "sha256:test",
) -> Path:
    """A complete slide store holding ``embeddings`` (N, D) as the tile embeddings of ``encoder`` (its real
    registry config, so stores look like extraction made them)."""
    import numpy as np

    from slidescope.features.encoders import get_encoder_config
    from slidescope.features.store import CacheKey, SlideStore

    emb = np.asarray(embeddings, dtype=np.float32)
    n = len(emb)
    ext = extent or tile_size
    if coords is None:
        side = int(np.ceil(np.sqrt(n)))
        coords = np.stack([np.arange(n) % side, np.arange(n) // side], 1) * ext
    try:
        enc = get_encoder_config(encoder).to_dict()
    except Exception:  # test-only encoders
        enc = {"name": encoder, "embed_dim": emb.shape[1]}
    store = SlideStore.create_or_open(
        path,
        slide_attrs={"fingerprint": path.name, "mpp": [mpp, mpp]},
        tiling={"tile_size": tile_size, "mpp": mpp, "extent": [ext, ext]},
        coords=np.asarray(coords, np.int64),
        tissue_fraction=np.ones(n, np.float32),
    )
    key = CacheKey(
        encoder=enc, weights_digest=weights_digest, precision="fp32", dtype="float32", package_version="test"
    )
    writer = store.prepare_embeddings(key, embed_dim=emb.shape[1])
    for c in range(-(-n // writer.chunk_rows)):
        s = c * writer.chunk_rows
        writer.write_chunk(c, emb[s : s + writer.chunk_rows])
    writer.finish()
    return path


@pytest.fixture
def store_writer():
    return write_store
