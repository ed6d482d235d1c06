"""diffusionlm: masked-diffusion language models in JAX/Flax."""
