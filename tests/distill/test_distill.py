"""Distillation wired into the train step: teachers, terms, modes, peers."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic_mmoe
from mtkd_jax import errors
from mtkd_jax import losses as kd_losses
from mtkd_jax.distill import mutual
from mtkd_jax.distill import setup as distill_setup
from mtkd_jax.distill import terms
from mtkd_jax.losses import distillation
from mtkd_jax.train import loop
from mtkd_jax.train import model_stats
from mtkd_jax.train import parallel
from mtkd_jax.train import step as step_lib
from mtkd_jax.train import trainer


def tiny_config(**overrides):
  c = synthetic_mmoe.get_config("smoke")
  c.data.num_examples = 3000
  c.model.dropout = 0.0
  c.train.num_steps = 12
  c.train.eval_every = 6
  c.train.checkpoint_every = 6
  c.train.log_every = 6
  c.train.tensorboard = False
  c.weighting.diagnostics_every = 0
  c.train.select_metric = "ctr/auc"
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("kd") / "teacher")
  loop.train_and_evaluate(tiny_config(**{"model.num_experts": 4}), workdir)
  return workdir


def _first_step_metrics(config, workdir, num_devices=0):
  config.train.num_devices = num_devices
  exp = trainer.build(config, workdir)
  distill, state, step_cfg = exp.distill, exp.init_state, exp.step_cfg
  mode = config.train.parallel
  extra = (distill.teacher_params,) if distill.online else ()
  fn = parallel.compile_step(
      lambda s, b, *t: step_lib.train_step(s, b, *t, cfg=step_cfg),
      mode, exp.mesh, out_batched=False, donate_state=False,
      extra_args=len(extra))
  batch = parallel.shard_batch(exp.example_batch, mode, exp.mesh)
  new_state, metrics = fn(parallel.replicate(state, exp.mesh), batch, *extra)
  return exp, distill, state, jax.device_get(metrics), new_state


def _bernoulli_kl(t, s, temp):
  pt, ps = 1 / (1 + np.exp(-t / temp)), 1 / (1 + np.exp(-s / temp))
  return temp ** 2 * (pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps)))


def test_kd_terms_match_an_independent_computation(teacher_dir, tmp_path):
  config = tiny_config(**{"distill.teacher_workdirs": (teacher_dir,),
                          "distill.temperature": 2.0, "distill.alpha": 0.3})
  exp, distill, state, metrics, _ = _first_step_metrics(config, str(tmp_path))
  batch = exp.example_batch
  student, _ = exp.model.apply({"params": state.params}, batch)
  teacher = distill.teachers[0]
  t_out, _ = teacher.model.apply({"params": teacher.params}, batch)
  w = np.asarray(batch["weights"])
  for task in ("ctr", "cvr"):
    kl = _bernoulli_kl(np.asarray(t_out[task], np.float64),
                       np.asarray(student[task], np.float64), 2.0)
    np.testing.assert_allclose(metrics[f"loss/kd/{task}"],
                               np.sum(w * kl) / np.sum(w), rtol=2e-4)
  # Fixed weights: hard terms (1 - alpha), kd terms alpha.
  expected = sum(0.7 * metrics[f"loss/{t}"] + 0.3 * metrics[f"loss/kd/{t}"]
                 for t in ("ctr", "cvr"))
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


def test_teacher_equal_to_student_gives_zero_soft_target_loss(tmp_path):
  # The teacher is a run of the same config and seed, stopped before any
  # update: its best params are the student's initial params.
  base = tiny_config(**{"train.num_steps": 1, "train.eval_every": 1,
                        "optimizer.learning_rate": 0.0})
  teacher = str(tmp_path / "same")
  loop.train_and_evaluate(base, teacher)
  config = tiny_config(**{"distill.teacher_workdirs": (teacher,)})
  _, _, _, metrics, _ = _first_step_metrics(config, str(tmp_path / "s"))
  assert abs(metrics["loss/kd/ctr"]) < 1e-6
  assert abs(metrics["loss/kd/cvr"]) < 1e-6


def test_online_and_offline_teachers_train_the_same_student(teacher_dir,
                                                            tmp_path):
  results = {}
  for mode in ("online", "offline"):
    config = tiny_config(**{"distill.teacher_workdirs": (teacher_dir,),
                            "distill.mode": mode})
    results[mode] = loop.train_and_evaluate(config, str(tmp_path / mode))
  assert os.listdir(os.path.join(teacher_dir, "distill_targets"))
  for key, value in results["online"]["test"].items():
    np.testing.assert_allclose(results["offline"]["test"][key], value,
                               rtol=1e-4, err_msg=key)
  # The student's checkpoint holds only the student.
  saved = json.loads(open(tmp_path / "online" / "results.json").read())
  assert saved["teachers"][0]["workdir"] == teacher_dir
  assert saved["model"]["params"] == saved["teachers"][0]["model"]["params"] - (
      saved["teachers"][0]["model"]["non_embedding_params"] -
      saved["model"]["non_embedding_params"])


def test_one_and_eight_devices_give_the_same_distillation_step(teacher_dir,
                                                               tmp_path):
  config = tiny_config(**{"distill.teacher_workdirs": (teacher_dir,),
                          "distill.hint_weight": 0.5})
  out = {n: _first_step_metrics(config, str(tmp_path / str(n)), n)
         for n in (1, 8)}
  m1, m8 = out[1][3], out[8][3]
  for key in ("loss/kd/ctr", "loss/kd/hint", "loss"):
    np.testing.assert_allclose(m1[key], m8[key], rtol=2e-5, err_msg=key)
  p1, p8 = (jax.device_get(out[n][4].params) for n in (1, 8))
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_hint_projector_is_trained_and_its_loss_is_fitnets(teacher_dir,
                                                           tmp_path):
  config = tiny_config(**{"distill.teacher_workdirs": (teacher_dir,),
                          "distill.hint_weight": 1.0})
  exp, distill, state, metrics, new_state = _first_step_metrics(
      config, str(tmp_path))
  proj = state.params[terms.HINT_PARAMS]
  batch = exp.example_batch
  _, s_aux = exp.model.apply({"params": state.params}, batch)
  teacher = distill.teachers[0]
  _, t_aux = teacher.model.apply({"params": teacher.params}, batch)
  hs = np.asarray(s_aux.task_inputs).reshape(len(batch["weights"]), -1)
  ht = np.asarray(t_aux.task_inputs).reshape(len(batch["weights"]), -1)
  assert proj["kernel"].shape == (hs.shape[1], ht.shape[1])
  pred = hs @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"])
  per_row = 0.5 * np.sum((pred - ht) ** 2, axis=1)
  w = np.asarray(batch["weights"])
  np.testing.assert_allclose(metrics["loss/kd/hint"],
                             np.sum(w * per_row) / np.sum(w), rtol=1e-4)
  moved = jax.device_get(new_state.params[terms.HINT_PARAMS]["kernel"])
  assert not np.allclose(moved, proj["kernel"])


def test_mismatched_teacher_stops_with_a_clear_message(teacher_dir, tmp_path):
  other = tmp_path / "other"
  other.mkdir()
  teacher_config = json.loads(open(os.path.join(teacher_dir,
                                                "config.json")).read())
  teacher_config["data"]["vocab_size"] = 123
  (other / "config.json").write_text(json.dumps(teacher_config))
  config = tiny_config(**{"distill.teacher_workdirs": (str(other),)})
  with pytest.raises(errors.ConfigError, match="vocab_size"):
    trainer.build(config, str(tmp_path / "s"))
  config = tiny_config(**{"distill.teacher_workdirs": (str(tmp_path / "none"),)})
  with pytest.raises(errors.ConfigError, match="no config.json"):
    trainer.build(config, str(tmp_path / "s"))
  config = tiny_config(**{"distill.teacher_workdirs": (teacher_dir,),
                          "distill.tasks": ("ctr", "click")})
  with pytest.raises(errors.ConfigError, match="click"):
    trainer.build(config, str(tmp_path / "s"))


def test_teacher_workdir_placeholders(tmp_path):
  got = distill_setup.resolve_workdirs(("{parent}/teacher__seed={seed}",),
                                       str(tmp_path / "student__seed=2"), 2)
  assert got == (str(tmp_path / "teacher__seed=2"),)


def test_ensemble_of_teachers_averages_probabilities(teacher_dir, tmp_path):
  second = str(tmp_path / "teacher2")
  loop.train_and_evaluate(tiny_config(**{"seed": 1}), second)
  config = tiny_config(**{"distill.teacher_workdirs": (teacher_dir, second),
                          "distill.ensemble": "prob",
                          "distill.ensemble_weights": "auc"})
  exp, distill, _, _, _ = _first_step_metrics(config, str(tmp_path / "s"))
  batch = exp.example_batch
  probs, aucs = [], []
  for t in distill.teachers:
    out, _ = t.model.apply({"params": t.params}, batch)
    probs.append(1 / (1 + np.exp(-np.asarray(out["ctr"], np.float64))))
    aucs.append(t.validation["ctr/auc"])
  w = np.maximum(np.asarray(aucs) - 0.5, 0)
  w = w / w.sum()
  expected = w[0] * probs[0] + w[1] * probs[1]
  targets = terms.teacher_targets(tuple(t.params for t in distill.teachers),
                                  batch, distill.spec)
  np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(targets["ctr"]))),
                             expected, rtol=1e-4)


def test_fit_platt_recovers_known_parameters():
  rng = np.random.default_rng(0)
  z = rng.normal(size=200_000) * 2
  y = (rng.random(z.shape) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(float)
  a, b = distill_setup.fit_platt(z, y, np.ones_like(z))
  assert abs(a - 0.5) < 0.02 and abs(b + 1.0) < 0.03


def test_dml_peers_and_their_mutual_term(tmp_path):
  config = tiny_config(**{"distill.dml_peers": 3, "distill.temperature": 1.0})
  exp, _, state, metrics, _ = _first_step_metrics(config, str(tmp_path))
  assert isinstance(exp.model, mutual.MutualPeers)
  kernels = jax.tree.leaves(state.params)[0]
  assert kernels.shape[0] == 3 and not np.allclose(kernels[0], kernels[1])
  outputs, aux = exp.model.apply({"params": state.params}, exp.example_batch)
  peers = np.asarray(aux.diagnostics["peer_outputs"]["ctr"], np.float64)  # [K, B]
  np.testing.assert_allclose(outputs["ctr"], peers[0], rtol=1e-6)
  w = np.asarray(exp.example_batch["weights"])
  total = 0.0
  for k in range(3):
    kl = np.mean([_bernoulli_kl(peers[j], peers[k], 1.0)
                  for j in range(3) if j != k], axis=0)
    total += np.sum(w * kl) / np.sum(w)
  np.testing.assert_allclose(metrics["loss/kd/dml/ctr"], total, rtol=1e-4)
  assert "loss/peers/cvr" in metrics


def test_crossdistil_ranking_terms_need_two_binary_tasks(tmp_path):
  config = tiny_config(**{"distill.crossdistil_ranking_weight": 0.5})
  _, _, _, metrics, _ = _first_step_metrics(config, str(tmp_path))
  assert metrics["loss/rank/ctr"] > 0 and metrics["loss/rank/cvr"] > 0


def test_parameter_counts_split_embeddings_from_the_rest():
  params = {"embedding": {"sparse_table_d8": np.zeros((100, 8))},
            "experts": {"kernel": np.zeros((2, 8, 4)), "bias": np.zeros((2, 4))},
            terms.HINT_PARAMS: {"kernel": np.zeros((4, 4))}}
  assert model_stats.parameter_counts(params) == {
      "params": 872, "embedding_params": 800, "non_embedding_params": 72}


def test_methods_select_their_terms(teacher_dir, tmp_path):
  config = tiny_config(**{"distill.teacher_workdirs": (teacher_dir,),
                          "distill.method": "logit_matching,hint"})
  _, distill, _, metrics, _ = _first_step_metrics(config, str(tmp_path))
  assert distill.spec.losses == {"ctr": "logit_mse", "cvr": "logit_mse"}
  assert "loss/kd/hint" in metrics
  config = tiny_config(**{"distill.method": "soft_target,nope"})
  with pytest.raises(errors.ConfigError, match="crossdistil_teacher"):
    trainer.build(config, str(tmp_path / "bad"))


@pytest.mark.slow  # minutes of CI; MTKD_RUN_SLOW=1 runs it
def test_dml_with_two_peers_is_kd_from_a_moving_teacher(tmp_path):
  """Peer 0's DML gradient = the gradient of its hard loss plus KD from the
  other peer's current predictions, held fixed (Zhang et al. eq. 10)."""
  config = tiny_config(**{"distill.method": "dml", "distill.temperature": 1.0})
  exp, _, state, _, _ = _first_step_metrics(config, str(tmp_path))
  cfg = step_lib.make_step_config(config, exp.model, exp.tx, exp.spec,
                                  state.params, exp.example_batch)
  batch = exp.example_batch
  w = jnp.asarray(batch["weights"])

  def dml_total(params):  # the step's loss terms, summed (EW)
    out, aux = exp.model.apply({"params": params}, batch)
    total = 0.0
    for task in ("ctr", "cvr"):
      hard = jnp.sum(w * kd_losses.binary_cross_entropy(
          out[task], batch[f"labels/{task}"]))
      total += hard + sum(jnp.sum(w * v) for k, v in aux.aux_losses.items()
                          if k.endswith("/" + task))
    return total / jnp.sum(w)

  def kd_from_peer1(params):  # peer 0 only; peer 1 is a frozen teacher
    out, aux = exp.model.apply({"params": params}, batch)
    peer1 = jax.lax.stop_gradient(aux.diagnostics["peer_outputs"])
    total = 0.0
    for task in ("ctr", "cvr"):
      total += jnp.sum(w * kd_losses.binary_cross_entropy(
          out[task], batch[f"labels/{task}"]))
      total += jnp.sum(w * distillation.binary_soft_target(
          out[task], peer1[task][1]))
    return total / jnp.sum(w)

  g_dml = jax.grad(dml_total)(state.params)
  g_kd = jax.grad(kd_from_peer1)(state.params)
  peer0 = lambda tree: jax.tree.map(lambda x: np.asarray(x[0]), tree)
  for a, b in zip(jax.tree.leaves(peer0(g_dml)), jax.tree.leaves(peer0(g_kd))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  assert cfg.terms[:2] == ("ctr", "cvr")


def test_ranking_distillation_with_k0_is_plain_training(ml100k_dir,
                                                         ml100k_tfds_dir,
                                                         tmp_path):
  from configs import movielens_retrieval  # pylint: disable=g-import-not-at-top

  def config(**kw):
    c = movielens_retrieval.get_config("smoke")
    c.data.data_dir, c.data.tfds_dir = str(ml100k_dir), str(ml100k_tfds_dir)
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 4, 4, 4
    c.train.tensorboard = False
    for k, v in kw.items():
      c.distill[k] = v
    return c

  teacher = str(tmp_path / "teacher")
  loop.train_and_evaluate(config(), teacher)
  _, _, _, plain, s_plain = _first_step_metrics(config(), str(tmp_path / "p"))
  kw = {"teacher_workdirs": (teacher,), "tasks": ("retrieval",),
        "method": "ranking", "ranking_k": 0}
  _, _, _, k0, s_k0 = _first_step_metrics(config(**kw), str(tmp_path / "k0"))
  assert k0["loss/kd/rank/retrieval"] == 0.0
  for a, b in zip(jax.tree.leaves(jax.device_get(s_plain.params)),
                  jax.tree.leaves(jax.device_get(s_k0.params))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
  kw["ranking_k"] = 5
  _, _, _, k5, _ = _first_step_metrics(config(**kw), str(tmp_path / "k5"))
  assert k5["loss/kd/rank/retrieval"] > 0.0


@pytest.mark.slow  # minutes of CI; MTKD_RUN_SLOW=1 runs it
def test_distillation_sweep_reports_teacher_student_and_gap(ml100k_dir,
                                                            ml100k_tfds_dir,
                                                            tmp_path):
  from configs import movielens_kd  # pylint: disable=g-import-not-at-top
  from mtkd_jax import sweeps  # pylint: disable=g-import-not-at-top
  from mtkd_jax.ablation import driver  # pylint: disable=g-import-not-at-top
  from mtkd_jax.ablation import report  # pylint: disable=g-import-not-at-top
  config = movielens_kd.get_config("smoke")
  config.data.data_dir, config.data.tfds_dir = str(ml100k_dir), str(
      ml100k_tfds_dir)
  config.train.num_epochs = 1
  config.train.tensorboard = False
  runs = sweeps.load_sweep(
      "configs/sweeps/distillation.py:configs/movielens_kd.py:smoke")
  assert [r.name for r in runs] == ["teacher__seed=0", "student__seed=0",
                                    "student_kd__seed=0"]
  summary = driver.run_sweep(config, runs, str(tmp_path), show_progress=False)
  assert not summary.failed, summary.failed
  metrics = ["like/auc", "model/non_embedding_params"]
  rep = report.build(driver.store.read(str(tmp_path)), metrics,
                     "student", ("teacher", "student", "student_kd"))
  cells = rep.cells["model/non_embedding_params"]
  assert cells["student"].mean * 8 <= cells["teacher"].mean
  auc = {n: rep.cells["test/like/auc"][n].mean
         for n in ("teacher", "student", "student_kd")}
  share = 100 * (auc["student_kd"] - auc["student"]) / (
      auc["teacher"] - auc["student"])
  assert rep.gap["test/like/auc"]["student_kd"]["of_means"] == (
      pytest.approx(share))
  text = report.to_markdown(rep, title="kd")
  assert "gap closed by distillation" in text


def test_listwise_distillation_needs_user_ids(teacher_dir, tmp_path):
  config = tiny_config(**{"distill.teacher_workdirs": (teacher_dir,),
                          "distill.method": "listwise"})
  with pytest.raises(errors.ConfigError, match="user ids"):
    trainer.build(config, str(tmp_path))
