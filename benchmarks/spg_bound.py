"""Is SPG's upper bound an upper bound? Exact enumeration on tiny sequences, no network.

  python benchmarks/spg_bound.py                  # 3 tokens, 2 symbols (docs/rl.md)
  python benchmarks/spg_bound.py --length=4 --vocab=2 --draws=200

For random conditional tables p(x_i | visible tokens), compares the exact log-likelihood of
the masked-diffusion sampler that unmasks one token at a time in a uniformly random order,

    log p(x) = log mean over orders sigma of prod_i p(x_sigma(i) | x_sigma(<i)),

with SPG's EUBO_beta (diffusionlm/rl/estimators.py:spg) computed exactly,

    EUBO_beta = (1 / beta) sum_i log sum_{S contains i} (|S| - 1)! (L - |S|)! / L!
                                                        * p(x_i | x outside S)^beta,

the expectation over t ~ U(0, 1) and a Bernoulli(t) mask S of (1 / t) 1[i in S] p^beta.
"consistent" tables are the conditionals of one random joint distribution (Dirichlet 0.3);
"arbitrary" tables draw every conditional independently (Dirichlet 0.5), as an imperfect
network may. Prints the smallest EUBO_beta - log p over all draws and sequences (negative:
the bound fails there).
"""
import itertools
import math

from absl import app
from absl import flags
import numpy as np

_LENGTH = flags.DEFINE_integer("length", 3, "Sequence length L.")
_VOCAB = flags.DEFINE_integer("vocab", 2, "Symbols.")
_DRAWS = flags.DEFINE_integer("draws", 2000, "Random tables per kind (consistent: / 4).")
_BETAS = flags.DEFINE_list("betas", ["1", "1.5", "2", "4"], "SPG beta values.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


def conditional_table(rng, consistent: bool, length: int, vocab: int):
  """p(x_i = . | ctx) for every position i and visible context ctx (a dict i -> symbol)."""
  sequences = list(itertools.product(range(vocab), repeat=length))
  joint = rng.dirichlet(np.full(len(sequences), 0.3)) if consistent else None
  table = {}

  def cond(i, ctx):
    key = (i, tuple(sorted(ctx.items())))
    if key not in table:
      if consistent:
        probs = np.zeros(vocab)
        for x, mass in zip(sequences, joint):
          if all(x[j] == v for j, v in ctx.items()):
            probs[x[i]] += mass
        table[key] = probs / probs.sum()
      else:
        table[key] = rng.dirichlet(np.full(vocab, 0.5))
    return table[key]
  return cond


def log_likelihood(cond, x) -> float:
  """log of the mean over unmasking orders of the product of conditionals."""
  total = 0.0
  for order in itertools.permutations(range(len(x))):
    prob, ctx = 1.0, {}
    for i in order:
      prob *= cond(i, ctx)[x[i]]
      ctx[i] = x[i]
    total += prob
  return math.log(total / math.factorial(len(x)))


def eubo(cond, x, beta: float) -> float:
  L = len(x)
  value = 0.0
  for i in range(L):
    others = [j for j in range(L) if j != i]
    inner = 0.0
    for hidden in itertools.product([False, True], repeat=L - 1):
      k = sum(hidden)  # |S| - 1: the other hidden tokens.
      ctx = {j: x[j] for j, h in zip(others, hidden) if not h}
      inner += (math.factorial(k) * math.factorial(L - 1 - k) / math.factorial(L)
                * cond(i, ctx)[x[i]] ** beta)
    value += math.log(inner) / beta
  return value


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  betas = [float(b) for b in _BETAS.value]
  L, V = _LENGTH.value, _VOCAB.value
  print(f"L = {L}, V = {V}; smallest EUBO_beta - log p(x) over every sequence of every draw")
  print("| conditionals | draws | " + " | ".join(f"beta = {b:g}" for b in betas) + " |")
  print("|---|---|" + "---|" * len(betas))
  for consistent, draws in ((True, max(1, _DRAWS.value // 4)), (False, _DRAWS.value)):
    worst = np.full(len(betas), np.inf)
    for _ in range(draws):
      cond = conditional_table(rng, consistent, L, V)
      for x in itertools.product(range(V), repeat=L):
        exact = log_likelihood(cond, x)
        worst = np.minimum(worst, [eubo(cond, x, b) - exact for b in betas])
    name = "one joint's" if consistent else "arbitrary"
    print(f"| {name} | {draws} | " + " | ".join(f"{w:+.3f}" for w in worst) + " |")


if __name__ == "__main__":
  app.run(main)
