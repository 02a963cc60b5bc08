"""The settings of one decode, in one place and free of torch (a recipe check reads them without loading it).

`SamplingSettings` holds length and sampling (validated here once); `GenerationConfig` adds how a row stops
and how it is seeded, and is what every decoder takes. A recipe's ``generation:`` section
(`stackalign.runner.recipe.GenerationSettings`) is `SamplingSettings` plus the stop strings and the batch
size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class SamplingSettings:
    """Length and sampling of a decode, validated once: the fields a recipe's ``generation:`` section
    (`stackalign.runner.recipe.GenerationSettings`) and a decoder's `GenerationConfig` share.

    Attributes:
        max_new_tokens: hard cap on generated tokens per response.
        temperature: softmax temperature for sampling; 0 means greedy (argmax).
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep only the k most likely tokens (0 = off).
    """

    max_new_tokens: int = field(default=128, metadata={"help": "new tokens per response, at most"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature of the base sampler (0 = greedy)"}
    )
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass of the base sampler (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "top-k of the base sampler (0 = off)"})

    def __post_init__(self) -> None:
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens: must be an integer >= 1, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)) or (
            self.temperature < 0
        ):
            raise ValueError(
                f"temperature: must be a finite number >= 0 (0 = greedy), got {self.temperature!r}"
            )
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k: must be an integer >= 0 (0 = off), got {self.top_k!r}")


@dataclass(frozen=True)
class GenerationConfig(SamplingSettings):
    """How a response is generated (shared by sampling, Best-of-N, ARGS, CD, refinement): the
    `SamplingSettings` plus how a row stops and how it is seeded.

    Attributes:
        eos_token_ids: ids that end a row; None = the tokenizer's EOS, the model's generation-config EOS and
            the end-of-turn tokens the tokenizer knows (``<|im_end|>``, ``<|eot_id|>``, ...).
        stop_strings: texts that end a row when they appear in the response (trimmed from the output text),
            e.g. ``("\\n\\nHuman:",)`` for HH-style prompts.
        seed: base seed; each prompt's generator is seeded from (seed, prompt text).
        ignore_eos: never stop early (EOS and stop strings are ignored; every row runs max_new_tokens).
            For benchmarks and for reproducing the official code, which has no EOS stop.
    """

    eos_token_ids: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.stop_strings, str):
            object.__setattr__(self, "stop_strings", (self.stop_strings,))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"stop_strings: must be non-empty strings, got {self.stop_strings!r}")
        if self.eos_token_ids is not None:
            ids = (self.eos_token_ids,) if isinstance(self.eos_token_ids, int) else tuple(self.eos_token_ids)
            if any(not isinstance(i, int) or i < 0 for i in ids):
                raise ValueError(f"eos_token_ids: must be non-negative integers, got {self.eos_token_ids!r}")
            object.__setattr__(self, "eos_token_ids", ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids) if self.eos_token_ids is not None else None
        d["stop_strings"] = list(self.stop_strings)
        return d
