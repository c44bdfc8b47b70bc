"""What a model file's screening reference is fitted on."""

from __future__ import annotations


def test_a_reference_is_fitted_on_a_bounded_seeded_sample_of_a_large_set():
    """At 80 000 training images the fit's SVD held 0.8 GB of doubles twice: above the bound, a seeded
    sample in order; at or below it, the set itself (the same reference as before)."""
    import torch

    from cxrlab.evaluate.screening_reference import bounded

    data = torch.utils.data.TensorDataset(torch.arange(25))
    assert bounded(data, limit=25) is data
    sample = bounded(data, limit=10)
    assert len(sample) == 10 and list(sample.indices) == sorted(sample.indices)
    assert list(bounded(data, limit=10).indices) == list(sample.indices)  # seeded: the same every time
    assert list(bounded(data, limit=10, seed=1).indices) != list(sample.indices)
