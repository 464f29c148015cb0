"""One streamed feature pass for inference (AnomalyModel._infer_streamed) equals the chunk-by-chunk path."""

from __future__ import annotations

import numpy as np
import pytest

from generalad.methods.base import AnomalyModel


@pytest.fixture(scope="module")
def model(bottle):
    from generalad.methods.patchcore import PatchCore

    m = PatchCore(backbone="efficientnet_lite0", image_size=64, device="cpu", precision="fp32", calibration_min=2,
                  batch_size=3)
    return m.fit(bottle.train[:4])


def _run(model, samples, *, streamed: bool, monkeypatch, **kw):
    monkeypatch.setattr(type(model), "_streams_features", lambda self: streamed)
    return list(model.infer_batches(samples, **kw))


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_streamed_equals_chunked(model, bottle, monkeypatch, chunk):
    samples = bottle.test[:11]
    monkeypatch.setattr(model, "infer_chunk", chunk)
    a = _run(model, samples, streamed=True, monkeypatch=monkeypatch, use_cache=False)
    b = _run(model, samples, streamed=False, monkeypatch=monkeypatch, use_cache=False)
    assert [len(c) for c, _, _ in a] == [len(c) for c, _, _ in b]
    assert [s.path for c, _, _ in a for s in c] == [s.path for s in samples]
    np.testing.assert_allclose(np.concatenate([s for _, s, _ in a]), np.concatenate([s for _, s, _ in b]),
                               rtol=1e-6)
    for (_, _, ma), (_, _, mb) in zip(a, b, strict=True):
        np.testing.assert_allclose(ma.numpy(), mb.numpy(), rtol=1e-5, atol=1e-6)


def test_streamed_keeps_order_with_a_partly_filled_cache(model, bottle, monkeypatch, tmp_path):
    """Cache hits arrive first, misses later: every chunk is still the samples in their given order."""
    samples = bottle.test[:9]
    monkeypatch.setattr(model.config, "cache_dir", str(tmp_path))
    monkeypatch.setattr(model, "infer_chunk", 4)
    list(model.infer_batches(samples[3:6]))  # fills the cache for the middle three
    a = _run(model, samples, streamed=True, monkeypatch=monkeypatch)
    b = _run(model, samples, streamed=False, monkeypatch=monkeypatch)
    assert [s.path for c, _, _ in a for s in c] == [s.path for s in samples]
    np.testing.assert_allclose(np.concatenate([s for _, s, _ in a]), np.concatenate([s for _, s, _ in b]),
                               rtol=1e-6)


def test_methods_that_prepare_their_own_inputs_do_not_stream():
    from generalad.methods.anomalyhybrid import AnomalyHybrid
    from generalad.methods.inreach import InReaCh
    from generalad.methods.patchcore import PatchCore

    assert PatchCore()._streams_features()
    assert not InReaCh()._streams_features()  # rotates each test image onto its reference
    assert not AnomalyHybrid()._streams_features()  # reads pixels, not backbone features
    assert AnomalyModel._streams_features is PatchCore._streams_features
