"""The protocol between decoders and shapings (stackalign.shaping.Shaping), for every registered shaper."""

from __future__ import annotations

import pytest
import torch

from stackalign.shaping import PRESETS, SHAPERS, Shaping, get_shaper, resolve_shaper


@pytest.mark.parametrize("name", sorted(SHAPERS) + sorted(PRESETS))
def test_every_shaper_and_preset_speaks_the_protocol(name):
    shaper = resolve_shaper(name)
    assert isinstance(shaper, Shaping)
    r = torch.tensor([[0.0, 1.0, 2.0, 4.0], [3.0, -1.0, 0.5, 0.0]], dtype=torch.float64)
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    out = shaper(r, p)
    assert out.shape == r.shape and torch.isfinite(out).all()
    m = torch.tensor([10.0, -10.0], dtype=torch.float64)  # above every reward / below every reward
    if getattr(shaper, "uses_threshold", True):
        assert not torch.allclose(shaper(r, p, threshold=m), out)  # a given threshold is used
    else:
        torch.testing.assert_close(shaper(r, p, threshold=m), out)  # and ignored where it means nothing


def test_resolve_shaper_rejects_what_is_not_a_shaping():
    assert resolve_shaper(None) is None
    with pytest.raises(ValueError, match="shaper"):
        resolve_shaper(3.0)
    with pytest.raises(ValueError):
        resolve_shaper("no-such-shaper")
    assert resolve_shaper(get_shaper("vanilla")) is not None
