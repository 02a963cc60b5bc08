"""experiments.soft_bon_overlap: the chance that one shared uniform gives two selection laws the same pick."""

import torch

from experiments.soft_bon_overlap import same_pick_probability
from stackalign.decoding.common import sample_rows


def test_same_pick_probability_matches_inverse_cdf_draws():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5, 8, generator=g, dtype=torch.float64).softmax(-1)
    q = (3 * torch.rand(5, 8, generator=g, dtype=torch.float64)).softmax(-1)
    assert torch.allclose(same_pick_probability(p, p), torch.ones(5, dtype=torch.float64))
    one_hot = torch.eye(8, dtype=torch.float64)
    assert float(same_pick_probability(one_hot[:1], one_hot[1:2])) == 0.0
    u = torch.rand(20000, generator=g, dtype=torch.float64)
    for i in range(5):
        a = sample_rows(p[i].expand(len(u), 8), u)
        b = sample_rows(q[i].expand(len(u), 8), u)
        empirical = (a == b).double().mean()
        assert abs(float(empirical) - float(same_pick_probability(p[i : i + 1], q[i : i + 1]))) < 0.015
