"""Loading policies and reward models, tokenizer checks, and THE reward-model input format.

Everything that touches a real model goes through here, so the sandbox world and a user's
Qwen3-8B + Skywork-Reward-V2 run use the same code paths (``from_pretrained`` on a local directory or a
Hub name).

Reward-model input format (one definition, used by decoding, offline scoring and evaluation)
-------------------------------------------------------------------------------------------
:func:`format_rm_input` turns a ``(prompt, response)`` pair into the text the reward model reads:

* ``chat_template=False`` (the default): plain concatenation ``prompt + response``. ``prompt`` is the
  exact text the policy was prompted with (e.g. ``"User: ...\\nAssistant:"``) and ``response`` the exact
  generated continuation (e.g. ``" Sure, ..."``), so when the reward model shares the policy's
  tokenizer, the reward model's token ids for the pair are the policy's prompt ids followed by the
  generated ids. That is what lets ARGS score candidates incrementally with a reward-model KV cache.
  Special tokens are added the way the tokenizer adds them by default (none for the sandbox tokenizer).
* ``chat_template=True``: the reward tokenizer's chat template over
  ``[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]``, rendered as
  text (``tokenize=False``), then tokenized with ``add_special_tokens=False`` (the template carries
  its own BOS). Use it for chat reward models such as Skywork-Reward-V2; incremental scoring is then
  not possible and decoders score text in batches.

Scores are the reward model's single logit at the last non-padding token, as float32.
"""

from stackalign.models.loading import load_policy, load_reward_model, resolve_model_path
from stackalign.models.reward import CallableReward, RewardModel, format_rm_input
from stackalign.models.tokenizer_checks import require_shared_tokenizer, shares_tokenizer

__all__ = [
    "CallableReward",
    "RewardModel",
    "format_rm_input",
    "load_policy",
    "load_reward_model",
    "require_shared_tokenizer",
    "resolve_model_path",
    "shares_tokenizer",
]
