"""The `weighting` config block (`default_config`), re-exported by the package.

Its own module so that the methods can read their defaults without importing
the package that registers them.
"""
import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """The `weighting` config block: method, gradient mode, hyper-parameters.

  The task specs' fixed weights are not here: they are part of the losses the
  methods see.
  """
  c = ml_collections.ConfigDict()
  c.name = "ew"
  # "param": gradients of the shared parameters; "rep": of the shared
  # representation (MGDA-UB style; not for methods with
  # supports_rep_grad=False, i.e. dbmtl).
  c.mode = "param"
  # Uncertainty (Kendall et al. 2018): s = log sigma^2, own Adam.
  c.uncertainty_lr = 1e-3
  c.uncertainty_init_log_var = -0.5
  # DWA (Liu et al. 2019): an "epoch" is every dwa_epoch_steps steps.
  c.dwa_temperature = 2.0
  c.dwa_epoch_steps = 100
  # RLW (Lin et al. 2022): normal | uniform | dirichlet | bernoulli |
  # constrained_bernoulli.
  c.rlw_distribution = "normal"
  # FAMO (Liu et al. 2023): Adam on the logits, L2 weight decay gamma.
  c.famo_lr = 0.025
  c.famo_gamma = 0.01
  c.famo_min_loss = 0.0
  # STCH (Lin et al. 2024): smoothing mu; warm-up steps whose mean loss is
  # the nadir point.
  c.stch_mu = 1.0
  c.stch_warmup_steps = 100
  # IMTL-L (Liu et al. 2021): Adam learning rate of the loss scales s_t.
  c.imtl_l_lr = 1e-3
  # DB-MTL (Lin et al. 2023): EMA rate beta / k^beta_sigma.
  c.dbmtl_beta = 0.9
  c.dbmtl_beta_sigma = 0.5
  c.dbmtl_eps = 1e-8
  # GradNorm (Chen et al. 2018).
  c.gradnorm_alpha = 1.5
  c.gradnorm_lr = 0.025
  # GradVac (Wang et al. 2021): EMA rate of the cosine targets.
  c.gradvac_beta = 0.01
  # gradvac_layers: the parameter groups, "layer" | "matrix".
  c.gradvac_grouping = "layer"
  # GradDrop (Chen et al. 2020): the leak, fraction of every gradient kept.
  c.graddrop_leak = 0.0
  # ExcessMTL (He et al. 2024): the weights' exponentiated-gradient step.
  c.excess_mtl_step_size = 1e-2
  # MGDA (Sener & Koltun 2018): none | l2 | loss | loss+.
  c.mgda_normalization = "none"
  # CAGrad (Liu et al. 2021): rescale 0: none, 1: / (1 + c^2), 2: / (1 + c).
  c.cagrad_c = 0.4
  c.cagrad_rescale = 1
  # Nash-MTL (Navon et al. 2022): the most Newton steps of the bargaining
  # solver (it stops at float accuracy, usually after fewer than 10).
  c.nash_max_iter = 20
  # UPGrad (Quinton & Rey 2024): TorchJD's Gram normalisation and ridge.
  c.upgrad_norm_eps = 1e-4
  c.upgrad_reg_eps = 1e-4
  # FairGrad (Ban & Ji 2024): the fairness alpha > 0 (1: proportional).
  c.fairgrad_alpha = 1.0
  # Aligned-MTL (Senushkin et al. 2023): min | median | rmse.
  c.aligned_mtl_scale_mode = "min"
  # MoDo (Chen et al. 2023): lambda's step size and l2 regularisation.
  c.modo_gamma = 1e-3
  c.modo_rho = 0.1
  # SDMGrad (Xiao et al. 2023): the pull lambda towards the mean gradient;
  # the inner projected-SGD loop (the authors' code's settings).
  c.sdmgrad_lambda = 0.3
  c.sdmgrad_num_iter = 20
  c.sdmgrad_lr = 5.0
  c.sdmgrad_momentum = 0.5
  # MoCo (Fernando et al. 2023): step sizes beta / k^beta_sigma (gradient
  # tracking) and gamma / k^gamma_sigma (lambda), l2 regularisation rho;
  # h_t = L_t g_t / ||g_t|| as in the authors' code.
  c.moco_beta = 0.5
  c.moco_beta_sigma = 0.5
  c.moco_gamma = 0.1
  c.moco_gamma_sigma = 0.5
  c.moco_rho = 0.0
  c.moco_normalize_grads = True
  return c
