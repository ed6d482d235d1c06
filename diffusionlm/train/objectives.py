"""The loss factory: `mdm`, `ar` and `sft` differ by one config field (`config.objective`).

Each objective gives a training loss and a validation measure in the same unit (nats, to be
reported as bits per token), so AR and diffusion validation curves are comparable:
- mdm: Monte-Carlo ELBO (LLaDA's likelihood evaluation); an upper bound on the NLL.
- ar:  exact next-token NLL.
- sft: the SFT ELBO on response tokens (prompt clean), per response token.
"""
import jax.numpy as jnp
import ml_collections

from diffusionlm import config_defaults
from diffusionlm.diffusion import losses


def _diffusion_kwargs(config: ml_collections.ConfigDict) -> dict:
  d = config.diffusion
  return dict(schedule=d.schedule, eps=d.eps, power=d.schedule_power, antithetic=d.antithetic)


def make_loss_fn(config: ml_collections.ConfigDict, *, mask_id: int):
  """Returns loss_fn(params, apply_fn, batch, key) -> (loss, metrics) for config.objective."""
  objective = config.objective
  if objective == "mdm":
    kw = _diffusion_kwargs(config)

    def loss_fn(params, apply_fn, batch, key):
      return losses.mdm_loss(params, apply_fn, batch["tokens"], key, mask_id=mask_id,
                             random_length_prob=config.diffusion.random_length_prob,
                             valid_BxL=batch["valid"], **kw)
  elif objective == "sft":
    kw = _diffusion_kwargs(config)

    def loss_fn(params, apply_fn, batch, key):
      return losses.sft_loss(params, apply_fn, batch["tokens"], batch["prompt_len"], key,
                             mask_id=mask_id, valid_BxL=batch["valid"], **kw)
  elif objective == "ar":
    input_mask_rate = float(config.data.input_mask_rate)

    def loss_fn(params, apply_fn, batch, key):
      return losses.ar_loss(params, apply_fn, batch["tokens"], valid_BxL=batch["valid"],
                            input_mask_rate=input_mask_rate, key=key, mask_id=mask_id)
  else:
    raise ValueError(f"config.objective={objective!r}: expected one of {config_defaults.OBJECTIVES}.")
  return loss_fn


def make_eval_fn(config: ml_collections.ConfigDict, *, mask_id: int):
  """Returns eval_fn(params, apply_fn, batch, key) -> (nll_nats_sum, num_scored_tokens)."""
  objective = config.objective
  if objective == "mdm":

    def eval_fn(params, apply_fn, batch, key):
      nll_B = losses.mdm_nll(params, apply_fn, batch["tokens"], key, mask_id=mask_id,
                             num_mc=config.diffusion.eval_num_mc, valid_BxL=batch["valid"])
      return nll_B.sum(), batch["valid"].sum()
  elif objective == "ar":

    def eval_fn(params, apply_fn, batch, key):
      del key
      nll_B = losses.ar_nll(params, apply_fn, batch["tokens"], valid_BxL=batch["valid"])
      valid_BxL = batch["valid"]
      return nll_B.sum(), (valid_BxL[:, 1:] & valid_BxL[:, :-1]).sum()
  elif objective == "sft":
    loss_fn = make_loss_fn(config, mask_id=mask_id)

    def eval_fn(params, apply_fn, batch, key):
      loss, _ = loss_fn(params, apply_fn, batch, key)
      num_rows = batch["tokens"].shape[0]
      return loss * num_rows, jnp.asarray(num_rows)
  else:
    raise ValueError(f"config.objective={objective!r}: expected one of {config_defaults.OBJECTIVES}.")
  return eval_fn
