"""The Hugging Face translation backend: English -> pivot -> English with two ``AutoModelForSeq2SeqLM``
(default the MarianMT pair ``Helsinki-NLP/opus-mt-en-{pivot}`` and ``opus-mt-{pivot}-en``), batched and
seeded per batch. A backend provides a round trip (:data:`mixkd.augment.backtranslate.RoundTrip`) and a
fingerprint of its models for the cache key; torch and transformers are imported only when used."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import UsageError

if TYPE_CHECKING:
    from .cache import BTSettings


def model_fingerprint(name: str) -> str:
    """A hub id as is; a local directory by its absolute path, config and weight-file sizes."""
    p = Path(name).expanduser()
    if not p.is_dir():
        return name
    h = hashlib.sha256(str(p.resolve()).encode())
    for f in sorted(p.iterdir()):
        if f.name in ("config.json", "generation_config.json"):
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".model", ".spm", ".json"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return f"{p.resolve()}@{h.hexdigest()[:16]}"


def load_translation_model(name: str, flag: str, device, trust_remote_code: bool = False):
    """(tokenizer, model) of a seq2seq translation model; any failure is one UsageError line naming
    the model and the fix."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ..core.models import quiet_transformers
    quiet_transformers()
    p = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or p.exists()
    if looks_local and not p.is_dir():
        raise UsageError(f"translation model '{name}' ({flag}) does not exist; pass an existing local model "
                         f"directory or a hub id with {flag}")
    try:
        tok = AutoTokenizer.from_pretrained(str(p) if looks_local else name, trust_remote_code=trust_remote_code)
        model = AutoModelForSeq2SeqLM.from_pretrained(str(p) if looks_local else name,
                                                      trust_remote_code=trust_remote_code)
    except Exception as e:  # offline hub, missing files, not a seq2seq model, missing sentencepiece ...
        msg = (str(e).strip().splitlines() or [""])[0][:160]
        fix = (f"pass {flag} a local directory with a saved translation model (save_pretrained of the model "
               f"and its tokenizer)" if looks_local else
               f"without network, download it where there is one (e.g. `hf download {name}`) and pass the "
               f"local directory with {flag}; Marian tokenizers also need `pip install sentencepiece`")
        raise UsageError(f"cannot load translation model '{name}' ({type(e).__name__}: {msg}); {fix}") from None
    return tok, model.to(device).eval()


class MarianRoundTrip:
    """English -> pivot -> English with two seq2seq models, batched and seeded per batch."""

    def __init__(self, settings: BTSettings, device: str = "auto", flags: tuple[str, str] = ("--forward-model",
                                                                                            "--backward-model")):
        from ..core.device import resolve_device
        self.settings = settings
        self.device = resolve_device(device)
        fwd, bwd = settings.models
        self.forward = load_translation_model(fwd, flags[0], self.device, settings.trust_remote_code)
        self.backward = load_translation_model(bwd, flags[1], self.device, settings.trust_remote_code)

    def _generate(self, pair, texts: list[str], seed: int) -> list[str]:
        import torch
        tok, model = pair
        n = self.settings.max_length     # never past the model's position table (decoder start included)
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions:
            n = min(n, positions - 1)
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=n)
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        torch.manual_seed(seed)          # CPU and CUDA generators: sampling repeats exactly per batch
        with torch.inference_mode():
            out = model.generate(**enc, **{**self.settings.generation_kwargs(), "max_new_tokens": n})
        return tok.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)

    def __call__(self, texts: list[str], batch_index: int) -> list[str]:
        base = self.settings.seed * 1_000_003 + 2 * batch_index
        pivot = self._generate(self.forward, texts, base)
        return self._generate(self.backward, pivot, base + 1)


def save_tiny_translation_model(path, tokenizer_dir, positions: int = 128, seed: int = 0,
                                eos_logit_bias: float = 0.0):
    """Save a 1+1-layer, 16-wide random-weight MarianMT with ``tokenizer_dir``'s vocabulary ([SEP] is its
    EOS) and that tokenizer: runs the whole back-translation path offline (tests, demos), translating into
    random words. ``positions - 1`` bounds the generated length; ``eos_logit_bias`` makes it stop early."""
    import torch
    from transformers import AutoTokenizer, MarianConfig, MarianMTModel
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    cfg = MarianConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                       max_position_embeddings=positions, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                       decoder_start_token_id=tok.pad_token_id, forced_eos_token_id=None)
    model = MarianMTModel(cfg)
    if eos_logit_bias:
        with torch.no_grad():
            model.final_logits_bias[0, tok.sep_token_id] = eos_logit_bias
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

