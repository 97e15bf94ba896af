"""Every registered method: jittable, finite, deterministic, well-formed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd_jax import config_checks
from mtkd_jax import config_defaults
from mtkd_jax import errors
from mtkd_jax import weighting
from mtkd_jax.weighting import base
from mtkd_jax.weighting import loss_level

P = 6
# Methods whose shared update is a direction of their own, not sum_t c_t g_t.
DIRECTION_METHODS = {"dbmtl", "moco", "graddrop", "gradvac_layers"}


def _inputs(method, num, seed, zero=False):
  rs = np.random.RandomState(seed)
  g = np.zeros((num, P)) if zero else rs.randn(num, P)
  losses = jnp.asarray(rs.uniform(0.1, 2.0, num), jnp.float32)
  if not method.needs_grads:
    return losses, None
  g = jnp.asarray(g, jnp.float32)
  cross = None
  if method.needs_split_gram:  # two halves whose mean is g
    half = jnp.asarray(rs.randn(num, P), jnp.float32) * (not zero)
    cross = (g + half) @ (g - half).T
  return losses, base.TaskGrads(g @ g.T, g if method.needs_full_grads else None,
                                cross)


def _init(method, names):
  if method.needs_param_layout:  # two layers: "a" (kernel, bias), "b"
    layout = (("a/bias", 1), ("a/kernel", 2), ("b/kernel", 3))
    return method.init(names, num_shared_params=P, param_layout=layout)
  if method.needs_full_grads:
    return method.init(names, num_shared_params=P)
  return method.init(names)


@pytest.mark.parametrize("name", sorted(weighting.METHODS))
def test_method_jits_finite_deterministic(name):
  """T = 1, 2, 4 under jit: finite coefficients (also for zero gradients),
  diag names, the same result for the same rng, a well-formed state."""
  method = weighting.get_method(name)
  update = jax.jit(method.update)
  for num in (1, 2, 4):
    names = tuple(f"t{i}" for i in range(num))
    state = _init(method, names)
    for zero in (False, True):
      losses, grads = _inputs(method, num, num, zero)
      rng = jax.random.PRNGKey(num)
      out = [update(losses, grads, state, step=jnp.int32(3), rng=rng)
             for _ in range(2)]
      (comb, new_state, diag), (comb2, new_state2, _) = out
      assert comb.coeffs.shape == (num,)
      assert np.isfinite(comb.coeffs).all(), (name, num, zero, comb.coeffs)
      np.testing.assert_array_equal(comb.coeffs, comb2.coeffs)
      jax.tree.map(np.testing.assert_array_equal, new_state, new_state2)
      assert all(np.isfinite(x).all() for x in jax.tree.leaves(new_state))
      assert all(np.isfinite(v) for v in diag.values())
      assert all(np.ndim(v) == 0 for v in diag.values())
      assert {f"weight/{n}" for n in names} <= set(diag)
      for n in names:
        assert diag[f"weight/{n}"] == comb.coeffs[names.index(n)]
      assert (comb.direction is not None) == (name in DIRECTION_METHODS), name
      if comb.direction is not None:
        assert comb.direction.shape == (P,) and np.isfinite(comb.direction).all()
      # The state keeps its structure (jit/scan carry, checkpoint restore).
      assert (jax.tree.structure(new_state) == jax.tree.structure(state))
      assert new_state.term_names == names
      state = new_state


def test_random_methods_depend_on_rng():
  # Several conflicting pairs: PCGrad's result depends on the task order.
  g = jnp.array([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, -1.0, 0.5],
                 [0.3, -1.0, -1.0]])
  grads = base.TaskGrads(g @ g.T)
  for name in ("rlw", "pcgrad"):
    method = weighting.get_method(name)
    state = method.init(tuple("abcd"))
    update = jax.jit(method.update)
    coeffs = [update(jnp.ones(4), None if name == "rlw" else grads, state,
                     step=jnp.int32(3), rng=jax.random.PRNGKey(k))[0].coeffs
              for k in range(6)]
    assert len({tuple(c) for c in np.asarray(coeffs).round(5)}) > 1, name


def test_unknown_name_lists_valid_ones():
  with pytest.raises(errors.ConfigError) as e:
    weighting.get_method("pcgard")
  for name in ("pcgrad", "mgda", "nash_mtl", "ew"):
    assert name in str(e.value)


BAD_SETTINGS = [("mgda", "normalization", "l3"),
                ("rlw", "distribution", "cauchy"),
                ("aligned_mtl", "scale_mode", "max"),
                ("cagrad", "rescale", 3),
                ("graddrop", "leak", 1.5),
                ("sdmgrad", "num_iter", 0),
                ("fairgrad", "alpha", 0.0),
                ("gradvac_layers", "grouping", "block")]


@pytest.mark.parametrize("name, key, value", BAD_SETTINGS)
def test_bad_settings_fail_when_the_method_is_built(name, key, value):
  cfg = weighting.default_config()
  cfg.name = name
  cfg[name][key] = value
  with pytest.raises(errors.ConfigError, match=key):
    weighting.from_config(cfg)
  # ... so also before any run.
  config = config_defaults.default_config()
  config.weighting = cfg
  with pytest.raises(errors.ConfigError, match=key):
    config_checks.check_config(config)


def test_unknown_setting_lists_the_valid_ones():
  with pytest.raises(errors.ConfigError) as e:
    weighting.get_method("cagrad", cc=0.5)
  assert "cc" in str(e.value) and "c, rescale" in str(e.value)
  cfg = weighting.default_config()
  cfg.name = "ew"
  cfg.cagrad.cc = 0.5  # another method's block is checked too
  with pytest.raises(errors.ConfigError, match="config.weighting.cagrad"):
    weighting.check_config(cfg)
  config = config_defaults.default_config()
  config.weighting = cfg
  with pytest.raises(errors.ConfigError, match="config.weighting.cagrad"):
    config_checks.check_config(config)  # before any run


def test_from_config_reads_the_methods_own_block():
  """`weighting.<name>.<setting>` reaches the method (CAGrad's c = 0 is
  exactly the mean gradient; the default c = 0.4 is not)."""
  g = jnp.array([[1.0, 0.0], [-0.8, 1.0]])
  grads = base.TaskGrads(g @ g.T)
  cfg = weighting.default_config()
  cfg.name = "cagrad"
  coeffs = {}
  for c in (0.4, 0.0):
    cfg.cagrad.c = c
    method = weighting.from_config(cfg)
    comb, _, _ = method.update(jnp.ones(2), grads, method.init(("a", "b")),
                               step=0, rng=None)
    coeffs[c] = np.asarray(comb.coeffs)
  np.testing.assert_allclose(coeffs[0.0], [0.5, 0.5], rtol=1e-6)
  assert np.abs(coeffs[0.4] - 0.5).max() > 1e-3


def test_default_config_holds_the_papers_defaults():
  cfg = weighting.default_config()
  assert cfg.name == "ew" and cfg.mode == "param"
  assert "term_weights" not in cfg
  assert cfg.dwa.temperature == 2.0 and cfg.dwa.epoch_steps == 100
  assert cfg.gradnorm.alpha == 1.5 and cfg.cagrad.c == 0.4
  assert cfg.famo.lr == 0.025 and cfg.famo.gamma == 0.01
  assert cfg.dbmtl.beta == 0.9 and cfg.dbmtl.beta_sigma == 0.5
  assert cfg.mgda.normalization == "none"
  assert cfg.nash_mtl.max_iter == 20 and cfg.gradvac.beta == 0.01
  assert cfg.rlw.distribution == "normal"
  # Methods without settings have no block; every block is its factory's.
  assert "ew" not in cfg and "pcgrad" not in cfg
  for name in weighting.METHODS:
    assert dict(cfg.get(name, {})) == weighting.settings(name), name


def test_flags():
  loss_methods = {"ew", "uncertainty", "dwa", "rlw", "famo", "gls", "stch",
                  "imtl_l"}
  surgery = {"pcgrad", "gradvac", "cagrad", "imtl", "aligned_mtl", "upgrad",
             "modo", "sdmgrad", "moco", "graddrop", "gradvac_layers"}
  flat = {"dbmtl", "moco", "graddrop", "excess_mtl", "gradvac_layers"}
  split = {"modo", "sdmgrad"}
  for name in weighting.METHODS:
    method = weighting.get_method(name)
    assert isinstance(method, base.WeightingMethod)
    assert method.needs_grads == (name not in loss_methods), name
    assert method.scales_specific == (name not in surgery), name
    assert method.needs_full_grads == (name in flat), name
    assert method.supports_rep_grad == (name not in flat | split), name
    assert method.needs_split_gram == (name in split), name
    assert method.needs_param_layout == (name == "gradvac_layers"), name


def test_state_names_are_static():
  state = loss_level.State(("a", "b"), {"x": jnp.ones(2)})
  leaves, treedef = jax.tree.flatten(state)
  assert len(leaves) == 1
  again = jax.tree.unflatten(treedef, leaves)
  assert again.term_names == ("a", "b")
