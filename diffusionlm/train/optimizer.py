"""The optax optimizer and learning-rate schedule built from `config.optimizer`."""
import ml_collections
import optax

DECAYS = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "sgd")


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Linear warmup to `opt.lr`, then cosine / linear decay to `min_lr_ratio * lr`, or constant."""
  warmup = optax.linear_schedule(0.0, opt.lr, max(opt.warmup_steps, 1))
  decay_steps = max(num_train_steps - opt.warmup_steps, 1)
  if opt.decay == "cosine":
    decay = optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.min_lr_ratio)
  elif opt.decay == "linear":
    decay = optax.linear_schedule(opt.lr, opt.lr * opt.min_lr_ratio, decay_steps)
  elif opt.decay == "constant":
    decay = optax.constant_schedule(opt.lr)
  else:
    raise ValueError(f"config.optimizer.decay={opt.decay!r}: expected one of {DECAYS}.")
  return optax.join_schedules([warmup, decay], [opt.warmup_steps])


def make_optimizer(opt: ml_collections.ConfigDict, num_train_steps: int):
  """AdamW or plain SGD (`opt.name`), after global-norm clipping; returns (optax transform,
  lr schedule). SGD with decoupled weight decay: update = -lr * (grad + weight_decay * param).
  """
  schedule = learning_rate_schedule(opt, num_train_steps)
  parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
  if opt.name == "adamw":
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))
  elif opt.name == "sgd":
    parts += [optax.add_decayed_weights(opt.weight_decay), optax.sgd(schedule)]
  else:
    raise ValueError(f"config.optimizer.name={opt.name!r}: expected one of {OPTIMIZERS}.")
  return optax.chain(*parts), schedule
