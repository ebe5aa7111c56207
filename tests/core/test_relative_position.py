"""T5's relative position buckets against Hugging Face's `_relative_position_bucket`, over
offsets long enough to reach every logarithmic bucket and the clamp, at real T5 settings too."""

from __future__ import annotations

import numpy as np
import pytest

from jtlens.core.components import relative_position_buckets

torch = pytest.importorskip("torch")
T5Attention = pytest.importorskip("transformers.models.t5.modeling_t5").T5Attention


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 16), (16, 20)])
def test_buckets_match_hugging_face(bidirectional, num_buckets, max_distance):
    n = 300
    offsets = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    want = T5Attention._relative_position_bucket(offsets, bidirectional=bidirectional,
                                                 num_buckets=num_buckets, max_distance=max_distance)
    got = relative_position_buckets(n, n, bidirectional, num_buckets, max_distance)
    assert (got == want.numpy()).all()
    # every bucket is reached, the clamp included, but for the later-key half's offset 0
    assert len(np.unique(got)) == num_buckets - bidirectional
