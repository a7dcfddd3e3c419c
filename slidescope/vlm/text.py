"""Text towers: ``encode(texts) -> (B, text_dim)`` for the slide-text model.

Two kinds, both :class:`TextTower` subclasses and both registered by name (``"hf"``, ``"small"``) so a saved
:class:`~slidescope.vlm.model.SlideTextModel` rebuilds its tower from the directory alone:

* :class:`HFTextTower` wraps a Hugging Face ``transformers`` model and its tokenizer, pooled the way the
  published models pool (``kind``):

  - ``"causal-cls"`` (BioGPT, as PRISM): a CLS token is appended to each text and its hidden state at a
    chosen layer is the embedding (PRISM: the last unimodal layer, before the first cross-attention);
  - ``"clip"``: the CLIP text tower's EOS-pooled output times its text projection (PLIP);
  - ``"bert"``: the ``[CLS]`` hidden state of the last layer (PubMedBERT, BioClinicalBERT).

* :class:`SmallTextTower` is a small transformer encoder with a tokenizer trained from scratch on the
  training reports (``tokenizers`` word-level), for pretraining without any downloaded language model.

Loading never downloads unless given a hub id; a directory must hold both weights and tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..errors import InvalidParameterError, SlidescopeError

log = logging.getLogger(__name__)

__all__ = [
    "TextTower",
    "HFTextTower",
    "SmallTextTower",
    "register_text_tower",
    "list_text_towers",
    "load_text_tower",
]

TOWER_FILE = "text_tower.json"
SCHEMA_VERSION = 1
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)

_REGISTRY: dict[str, type[TextTower]] = {}


def register_text_tower(name: str) -> Callable[[type[TextTower]], type[TextTower]]:
    """Class decorator: register a :class:`TextTower` subclass under ``name`` (used by :func:`load_text_tower`)."""

    def decorator(cls: type[TextTower]) -> type[TextTower]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            log.warning("text tower %r registered twice; the later one wins", name)
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return decorator


def list_text_towers() -> list[str]:
    """Registered text-tower names, sorted."""
    return sorted(_REGISTRY)


class TextTower(nn.Module):
    """What the slide-text model needs from a text encoder.

    Attributes
    ----------
    text_dim : int
        Length of the embeddings :meth:`encode` returns.
    tokenizer
        The tokenizer the tower uses (a ``transformers`` tokenizer or a ``tokenizers.Tokenizer``).

    Notes
    -----
    ``encode`` maps a list of ``P`` texts to ``(P, text_dim)`` un-normalised embeddings; the slide-text model's
    ``text_to_latents`` head projects and normalises them.
    """

    registry_name: ClassVar[str] = ""
    text_dim: int
    tokenizer: Any

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed texts; returns (B, text_dim) un-normalised embeddings on the tower's device."""
        raise NotImplementedError

    def forward(self, texts: Sequence[str]) -> Tensor:
        return self.encode(texts)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write weights, tokenizer and a ``text_tower.json`` to ``directory``; :func:`load_text_tower` reads it."""
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> TextTower:
        raise NotImplementedError


def load_text_tower(directory: str | os.PathLike[str]) -> TextTower:
    """Rebuild any registered text tower from a directory written by its ``save``."""
    path = Path(directory)
    meta_file = path / TOWER_FILE
    if not meta_file.is_file():
        raise InvalidParameterError(f"{path} has no {TOWER_FILE}; it was not written by TextTower.save()")
    meta = json.loads(meta_file.read_text())
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise InvalidParameterError(
            f"{meta_file} has schema version {meta.get('schema_version')}, newer than this slidescope "
            f"understands ({SCHEMA_VERSION}); upgrade slidescope"
        )
    kind = meta.get("tower")
    if kind not in _REGISTRY:
        raise InvalidParameterError(
            f"unknown text tower {kind!r} in {meta_file}; known: {list_text_towers()}"
        )
    return _REGISTRY[kind].load(path)


def _write_meta(directory: Path, tower: str, **fields: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"schema_version": SCHEMA_VERSION, "tower": tower, **fields}
    (directory / TOWER_FILE).write_text(json.dumps(meta, indent=2))


# --------------------------------------------------------------------------------------------- HF towers


HFKind = Literal["causal-cls", "clip", "bert"]


@register_text_tower("hf")
class HFTextTower(TextTower):
    """A ``transformers`` text model plus tokenizer, pooled per ``kind`` (see the module docstring).

    Build it with :meth:`from_pretrained`. ``encode`` tokenizes with padding and truncation to
    ``max_length`` tokens and returns ``(P, text_dim)``: ``hidden_size`` (``"bert"``, ``"causal-cls"``) or
    ``projection_dim`` (``"clip"``).

    Examples
    --------
    >>> tower = HFTextTower.from_pretrained("microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract",
    ...                                     kind="bert")                                     # doctest: +SKIP
    >>> tower.encode(["invasive ductal carcinoma"]).shape                                   # doctest: +SKIP
    torch.Size([1, 768])
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        kind: HFKind,
        layer: int = -1,
        cls_token_id: int | None = None,
        max_length: int = 128,
    ) -> None:
        super().__init__()
        if kind not in ("causal-cls", "clip", "bert"):
            raise InvalidParameterError(f"kind must be 'causal-cls', 'clip' or 'bert', got {kind!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.layer = layer
        self.max_length = max_length
        config = model.config
        if kind == "clip":
            self.text_dim = int(config.projection_dim)
        else:
            self.text_dim = int(config.hidden_size)
        if kind == "causal-cls":
            if cls_token_id is None:
                cls_token_id = (
                    tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.eos_token_id
                )
            if cls_token_id is None:
                raise InvalidParameterError("causal-cls needs a CLS token: pass cls_token= (PRISM: 42383)")
            if not 0 <= cls_token_id < config.vocab_size:
                raise InvalidParameterError(
                    f"cls token id {cls_token_id} is outside the vocabulary (size {config.vocab_size})"
                )
        self.cls_token_id = cls_token_id

    @classmethod
    def from_pretrained(
        cls,
        hub_id_or_dir: str | os.PathLike[str],
        *,
        kind: HFKind = "bert",
        layer: int = -1,
        cls_token: str | int | None = None,
        max_length: int = 128,
        **hf_kwargs: Any,
    ) -> HFTextTower:
        """Load model and tokenizer with ``transformers``.

        Parameters
        ----------
        hub_id_or_dir : str or path
            A local directory (``save_pretrained`` layout, tokenizer included) or a hub id.
        kind : {"causal-cls", "clip", "bert"}
            How to pool (see the module docstring).
        layer : int
            ``causal-cls`` only: index into ``hidden_states`` (0 = embeddings, -1 = last layer). PRISM uses
            the last unimodal layer of its BioGPT, i.e. ``first_x_attn_layer``.
        cls_token : str or int, optional
            ``causal-cls`` only: the token appended to each text (PRISM: id 42383, ``madeupword0006``).
            Default: the tokenizer's CLS token, else its EOS token.
        max_length : int
            Tokens kept per text (the CLS token included).
        **hf_kwargs
            Passed to both ``from_pretrained`` calls (``revision=``, ``token=``, ``local_files_only=``...).
        """
        import transformers

        source = Path(hub_id_or_dir)
        if source.is_dir() and not any((source / f).is_file() for f in _TOKENIZER_FILES):
            raise InvalidParameterError(
                f"{source} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES[:4])}...); save one there "
                "with tokenizer.save_pretrained(dir) or pass the hub id of the model"
            )
        if kind not in ("causal-cls", "clip", "bert"):
            raise InvalidParameterError(f"kind must be 'causal-cls', 'clip' or 'bert', got {kind!r}")
        name = str(hub_id_or_dir)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(name, **hf_kwargs)
        except (OSError, ValueError) as err:
            raise SlidescopeError(f"could not load a tokenizer from {name!r}: {err}") from err
        try:
            if kind == "clip":
                model = transformers.CLIPTextModelWithProjection.from_pretrained(name, **hf_kwargs)
            else:
                model = transformers.AutoModel.from_pretrained(name, **hf_kwargs)
        except (OSError, ValueError) as err:
            raise SlidescopeError(f"could not load a {kind} text model from {name!r}: {err}") from err
        model.eval()
        cls_id = tokenizer.convert_tokens_to_ids(cls_token) if isinstance(cls_token, str) else cls_token
        if isinstance(cls_token, str) and cls_id == tokenizer.unk_token_id:
            raise InvalidParameterError(f"cls_token {cls_token!r} is not in the tokenizer's vocabulary")
        return cls(model, tokenizer, kind=kind, layer=layer, cls_token_id=cls_id, max_length=max_length)

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed ``texts``; returns (B, text_dim)."""
        texts = _check_texts(texts)
        device = self.device
        if self.kind == "causal-cls":
            return self._encode_causal_cls(texts, device)
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        if self.kind == "clip":
            return self.model(**batch).text_embeds
        return self.model(**batch).last_hidden_state[:, 0]

    def _encode_causal_cls(self, texts: list[str], device: torch.device) -> Tensor:
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length - 1)[
            "input_ids"
        ]
        ids = [list(seq) + [self.cls_token_id] for seq in ids]
        lengths = torch.tensor([len(seq) for seq in ids], device=device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), int(lengths.max())), pad, dtype=torch.long)
        for i, seq in enumerate(ids):
            input_ids[i, : len(seq)] = torch.tensor(seq)
        attention = torch.arange(input_ids.shape[1])[None, :] < lengths.cpu()[:, None]
        out = self.model(
            input_ids=input_ids.to(device),
            attention_mask=attention.long().to(device),
            output_hidden_states=True,
        )
        hidden = out.hidden_states[self.layer]
        return hidden[torch.arange(len(ids), device=device), lengths - 1]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        _write_meta(
            path,
            "hf",
            kind=self.kind,
            layer=self.layer,
            cls_token_id=self.cls_token_id,
            max_length=self.max_length,
        )
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> HFTextTower:
        path = Path(directory)
        meta = json.loads((path / TOWER_FILE).read_text())
        return cls.from_pretrained(
            path,
            kind=meta["kind"],
            layer=meta["layer"],
            cls_token=meta["cls_token_id"],
            max_length=meta["max_length"],
            local_files_only=True,
        )


# ------------------------------------------------------------------------------------------ small tower

_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def train_word_tokenizer(texts: Iterable[str], *, vocab_size: int = 8000, min_frequency: int = 1) -> Any:
    """A lower-casing word-level ``tokenizers.Tokenizer`` trained on ``texts`` ([CLS] text [SEP]).

    Word-level suits report vocabularies (few thousand diagnostic words); unknown words map to ``[UNK]``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits()])
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(_SPECIALS)
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


@register_text_tower("small")
class SmallTextTower(TextTower):
    """A small pre-norm transformer encoder over a word-level tokenizer trained on the reports.

    Parameters
    ----------
    tokenizer : tokenizers.Tokenizer
        From :func:`train_word_tokenizer` (or :meth:`from_texts`).
    width, depth, heads : int
        Model width, layers and attention heads.
    max_length : int
        Tokens per text (longer texts are truncated).
    pooling : {"cls", "mean"}
        The final-LayerNorm ``[CLS]`` state or the mean over real tokens.
    dropout : float
        Dropout inside the encoder layers (training only).

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> tower = SmallTextTower.from_texts(["invasive ductal carcinoma", "benign breast tissue"], width=32, depth=1,
    ...                                   heads=2).eval()
    >>> tower.encode(["ductal carcinoma", "benign tissue", "lymph node"]).shape   # unknown words map to [UNK]
    torch.Size([3, 32])
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        max_length: int = 256,
        pooling: Literal["cls", "mean"] = "cls",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise InvalidParameterError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if width % heads:
            raise InvalidParameterError(f"width={width} must be divisible by heads={heads}")
        self.tokenizer = tokenizer
        self.hparams = dict(
            width=width, depth=depth, heads=heads, max_length=max_length, pooling=pooling, dropout=dropout
        )
        self.text_dim = width
        self.pooling = pooling
        self.max_length = max_length
        self.pad_id = tokenizer.token_to_id("[PAD]")
        if self.pad_id is None:
            raise InvalidParameterError(
                "the tokenizer has no [PAD] token; build it with train_word_tokenizer()"
            )
        self.token_embed = nn.Embedding(tokenizer.get_vocab_size(), width, padding_idx=self.pad_id)
        self.pos_embed = nn.Parameter(torch.zeros(max_length, width))
        nn.init.normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=4 * width,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], *, vocab_size: int = 8000, min_frequency: int = 1, **kwargs: Any
    ) -> SmallTextTower:
        """Train a word-level tokenizer on ``texts`` and build a randomly initialised tower around it."""
        return cls(train_word_tokenizer(texts, vocab_size=vocab_size, min_frequency=min_frequency), **kwargs)

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids (B, L) and a bool mask (B, L), True for real tokens."""
        encs = self.tokenizer.encode_batch(list(texts))
        seqs = [e.ids[: self.max_length] for e in encs]
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return ids, ids != self.pad_id

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed ``texts``; returns (B, width)."""
        ids, mask = self.tokenize(_check_texts(texts))
        ids, mask = ids.to(self.device), mask.to(self.device)
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]]
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        if self.pooling == "cls":
            return x[:, 0]
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
            str(path / "model.safetensors"),
        )
        self.tokenizer.save(str(path / "tokenizer.json"))
        (path / "config.json").write_text(json.dumps(self.hparams, indent=2))
        _write_meta(path, "small")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SmallTextTower:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(directory)
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            if not (path / name).is_file():
                raise InvalidParameterError(f"{path} lacks {name}; save the tower with SmallTextTower.save()")
        tower = cls(
            Tokenizer.from_file(str(path / "tokenizer.json")),
            **json.loads((path / "config.json").read_text()),
        )
        tower.load_state_dict(load_file(str(path / "model.safetensors")))
        return tower.eval()


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InvalidParameterError("encode() takes a list of texts, got a single str; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise InvalidParameterError("encode() got an empty list of texts")
    return texts
