"""DP-SGD on one client: randomness sources, noise really applied, adapters really change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from securefed.exceptions import ConfigError, UnknownNameError
from securefed.methods import create_method
from securefed.privacy.dpsgd import steps_per_epoch, train_private
from securefed.privacy.noise import SecureSource, SeededSource, make_source
from tests.methods.conftest import Backbone


def test_secure_source_refuses_seeds_and_seeded_needs_one() -> None:
    with pytest.raises(ConfigError, match="refuses a seed"):
        make_source("secure", seed=1)
    with pytest.raises(ConfigError, match="needs a seed"):
        make_source("seeded")
    with pytest.raises(UnknownNameError):
        make_source("dev-urandom")
    assert make_source("secure").secure and not make_source("seeded", 3).secure


@pytest.mark.parametrize("source", [SecureSource(), SeededSource(0)], ids=["secure", "seeded"])
def test_sources_are_uniform_and_gaussian(source) -> None:
    u = source.uniform(200_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    z = source.normal(200_001)
    assert z.size == 200_001 and np.all(np.isfinite(z))
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    mask = source.poisson_mask(100_000, 0.05)
    assert abs(mask.mean() - 0.05) < 0.005


def test_secure_source_never_repeats() -> None:
    s = SecureSource()
    assert not np.array_equal(s.normal(64), s.normal(64))


def _data(backbone: Backbone, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return backbone.inputs(n), backbone.labels(n)


def _lora(backbone: Backbone, name: str = "lora") -> tuple[torch.nn.Module, object]:
    method = create_method(name, **({"r": 4} if name in ("lora", "ffa-lora", "federa") else {}))
    return method.apply(backbone.model(), backbone.arch, seed=0), method


def test_noise_reaches_every_coordinate_symmetrically() -> None:
    """With a clipping bound far below the noise, the privatised gradient is noise on
    every trained coordinate: AdamW's first step then moves each by about ``lr`` with a
    random sign (``m / sqrt(v) = g / |g|``)."""
    backbone = Backbone("bert")
    model, method = _lora(backbone, "bitfit")
    inputs, labels = _data(backbone, 16)
    before = {k: v.copy() for k, v in method.payload(model).items()}
    sigma, clip, batch = 50.0, 1e-6, 8  # noise std 6e-6 >> AdamW's eps 1e-8
    train_private(model, inputs, labels, lr=1e-3, noise_multiplier=sigma,
                  max_grad_norm=clip, expected_batch_size=batch, steps=1,
                  source=SeededSource(0))
    after = method.payload(model)
    moved = np.concatenate([(after[k] - before[k]).ravel() for k in before])
    # every coordinate got noise (a few with |noise| near AdamW's eps move less)
    assert np.mean(np.abs(moved) > 0.5e-3) > 0.95 and np.all(moved != 0)
    assert 0.45 < np.mean(moved > 0) < 0.55  # symmetric: noise, not the gradient's sign


def test_noise_scale_matches_sigma_c_over_b(monkeypatch) -> None:
    """The gradient handed to the optimizer has std sigma * C / B when the clipped signal
    vanishes (C tiny relative to sigma * C: it is all noise)."""
    from securefed.privacy.dpsgd import SourceNoiseDPOptimizer

    grads: list[np.ndarray] = []
    original = SourceNoiseDPOptimizer.scale_grad

    def spy(self) -> None:
        original(self)
        grads.extend(p.grad.detach().numpy().ravel().copy() for p in self.params)

    monkeypatch.setattr(SourceNoiseDPOptimizer, "scale_grad", spy)
    backbone = Backbone("bert")
    model, _ = _lora(backbone, "bitfit")
    inputs, labels = _data(backbone, 32)
    sigma, clip, batch = 3.0, 0.5, 16
    train_private(model, inputs, labels, lr=1e-3, noise_multiplier=sigma,
                  max_grad_norm=clip, expected_batch_size=batch, steps=1,
                  source=SeededSource(1))
    g = np.concatenate(grads)
    # signal: at most C per example, summed over the sample, over B: |signal| <= ~C
    assert abs(g.std() - sigma * clip / batch) < 0.1 * sigma * clip / batch + clip / batch


@pytest.mark.parametrize("name", ["lora", "ffa-lora", "federa", "bitfit", "adapter"])
def test_adapter_really_changes_under_dp_and_model_stays_plain(name) -> None:
    """Opacus #820 silently corrupted LoRA updates; check the trained tensors move, the
    payload keys are unchanged and no Opacus hooks or attributes are left behind."""
    backbone = Backbone("bert")
    method = create_method(name)
    model = method.apply(backbone.model(), backbone.arch, seed=0)
    inputs, labels = _data(backbone, 24)
    before = {k: v.copy() for k, v in method.payload(model).items()}
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    res = train_private(model, inputs, labels, lr=5e-3, noise_multiplier=1.0,
                        max_grad_norm=1.0, expected_batch_size=8, steps=3,
                        source=SecureSource())
    after = method.payload(model)
    assert set(after) == set(before)
    assert any(np.abs(after[k] - before[k]).max() > 0 for k in before)
    assert res.steps == 3 and res.sample_rate == pytest.approx(8 / 24)
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")
    assert hooks == sum(len(m._forward_hooks) + len(m._backward_hooks)
                        for m in model.modules())


def test_empty_poisson_sample_still_adds_noise() -> None:
    class Never(SeededSource):
        def poisson_mask(self, n: int, rate: float) -> np.ndarray:
            return np.zeros(n, dtype=bool)

    backbone = Backbone("bert")
    model, method = _lora(backbone, "bitfit")
    before = {k: v.copy() for k, v in method.payload(model).items()}
    res = train_private(model, *_data(backbone, 8), lr=1e-3, noise_multiplier=1.0,
                        max_grad_norm=1.0, expected_batch_size=4, steps=2, source=Never(0))
    assert res.empty_steps == 2
    after = method.payload(model)
    assert any(np.abs(after[k] - before[k]).max() > 0 for k in before)


def test_invalid_settings_are_config_errors() -> None:
    backbone = Backbone("bert")
    model, _ = _lora(backbone)
    for kwargs in ({"max_grad_norm": 0.0}, {"noise_multiplier": -1.0}, {"steps": 0}):
        args = {"lr": 1e-3, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                "expected_batch_size": 4, "steps": 1, "source": SeededSource(0), **kwargs}
        with pytest.raises(ConfigError):
            train_private(model, *_data(backbone, 8), **args)
    assert steps_per_epoch(100, 16) == 7 and steps_per_epoch(3, 16) == 1


@pytest.mark.parametrize("name", ["lora", "bitfit"])
def test_ghost_clipping_matches_per_sample_hooks(name) -> None:
    """Ghost clipping (norms + second backward) gives Opacus hooks' clipped sum: with the
    same Poisson samples and no noise, a few AdamW steps land on the same adapter, and
    the clipping bound really binds (a bound of 1e-3 changes the result)."""
    backbone = Backbone("bert")
    inputs, labels = _data(backbone, 24)
    finals = {}
    for mode, clip in (("hooks", 1e-3), ("ghost", 1e-3), ("ghost", 1e3)):
        model, method = _lora(backbone, name)
        train_private(model, inputs, labels, lr=1e-2, noise_multiplier=0.0, max_grad_norm=clip,
                      expected_batch_size=8, steps=3, source=make_source("seeded", 5),
                      clipping=mode)
        finals[mode, clip] = method.payload(model)
        assert not any(hasattr(p, "_norm_sample") for p in model.parameters())
    for key, value in finals["hooks", 1e-3].items():
        np.testing.assert_allclose(finals["ghost", 1e-3][key], value, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(finals["ghost", 1e3][k], v, atol=1e-6)
               for k, v in finals["ghost", 1e-3].items())


def test_unknown_clipping_mode_is_a_config_error() -> None:
    backbone = Backbone("bert")
    model, _ = _lora(backbone, "bitfit")
    inputs, labels = _data(backbone, 4)
    with pytest.raises(ConfigError, match="hooks, ghost"):
        train_private(model, inputs, labels, lr=1e-2, noise_multiplier=1.0, max_grad_norm=1.0,
                      expected_batch_size=2, steps=1, source=make_source("seeded", 0),
                      clipping="fast")


@pytest.mark.parametrize("clipping", ["hooks", "ghost"])
def test_physical_batches_give_the_same_step(clipping) -> None:
    """A Poisson sample split into physical batches of 2 is clipped and summed into the
    same DP step as the whole sample at once (no noise, same samples, no dropout)."""
    backbone = Backbone("bert")
    inputs, labels = _data(backbone, 24)
    out = {}
    for physical in (2, 1000):
        model, method = _lora(backbone, "lora")
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        res = train_private(model, inputs, labels, lr=1e-2, noise_multiplier=0.0,
                            max_grad_norm=1e-3, expected_batch_size=8, steps=3,
                            source=make_source("seeded", 9), clipping=clipping,
                            max_physical_batch_size=physical)
        out[physical] = (method.payload(model), res.loss)
    for key, value in out[1000][0].items():
        np.testing.assert_allclose(out[2][0][key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    assert out[2][1] == pytest.approx(out[1000][1], rel=1e-4)
