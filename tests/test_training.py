"""The shared training loop (generalad.training): seeding, schedule, epochs, early stopping, callbacks."""

from __future__ import annotations

import pytest
import torch

from generalad.errors import ConfigError
from generalad.training import LoopConfig, train_loop

X = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])


def _step(model, idx):
    loss = ((model(X[idx]).squeeze(1) - Y[idx]) ** 2).mean()
    loss.backward()
    return loss.detach(), {"mse": loss.detach()}


def _run(**kw):
    cfg = LoopConfig(**{"epochs": 5, "batch_size": 8, "lr": 0.05, "seed": 3, **kw})
    return train_loop(lambda: torch.nn.Linear(4, 1), _step, len(X), cfg)


def test_same_seed_same_weights_and_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    a, ha = _run()
    assert torch.equal(state, torch.random.get_rng_state())
    b, hb = _run()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    c, _ = _run(seed=4)
    assert not torch.equal(a.weight, c.weight)


def test_history_schedule_and_epoch_size() -> None:
    model, history = _run(epochs=4, optimizer="adam", schedule="cosine", eta_min_factor=0.5, epoch_size=16)
    assert not model.training and history[-1]["selected"]
    assert [h["steps"] for h in history] == [2] * 4 and history[0]["batch_size"] == 8
    assert history[0]["lr"] == 0.05 and history[-1]["lr"] < history[0]["lr"] and set(history[0]["terms"]) == {"mse"}
    assert history[-1]["loss"] < history[0]["loss"]


def test_early_stopping_keeps_the_best_epoch_and_callback_stops() -> None:
    vals = iter([3.0, 1.0, 2.0, 2.5, 0.5])
    model, history = train_loop(lambda: torch.nn.Linear(4, 1), _step, len(X),
                                LoopConfig(epochs=5, batch_size=8, lr=0.05, early_stopping_patience=2),
                                validate=lambda m: next(vals))
    assert len(history) == 4 and history[1]["selected"] and [h["val_loss"] for h in history] == [3.0, 1.0, 2.0, 2.5]
    _, short = train_loop(lambda: torch.nn.Linear(4, 1), _step, len(X), LoopConfig(epochs=5, batch_size=8, lr=0.1),
                          on_epoch=lambda e, m: e == 1)
    assert len(short) == 2


def test_bad_configs_are_one_line_errors() -> None:
    for bad in ({"epochs": 0}, {"optimizer": "sgd"}, {"schedule": "step"}, {"lr": 0}):
        with pytest.raises(ConfigError, match="training: "):
            LoopConfig(**{"epochs": 1, "batch_size": 1, "lr": 1.0, **bad})
    with pytest.raises(ConfigError, match="validation"):
        _run(early_stopping_patience=1)
