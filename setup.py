"""diffusionlm: masked-diffusion language models in JAX/Flax."""
import setuptools

setuptools.setup(
    name="diffusionlm",
    version="0.1.0",
    description="Masked-diffusion (LLaDA/MDLM) and autoregressive language models in JAX/Flax",
    packages=setuptools.find_packages(include=["diffusionlm", "diffusionlm.*", "configs"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7.0",
        "flax>=0.11.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.7.0",
        "importlib_resources>=6.0",  # tfds catalogue builders need it to prepare
        "grain>=0.2.12",
        "sentencepiece>=0.2.0",
        "tokenizers>=0.20.0",
        "ml-collections>=1.0.0",
        "absl-py>=2.1.0",
        "numpy>=1.26",
        "scipy>=1.13",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "safetensors>=0.4",  # Hugging Face checkpoint import and export
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "hypothesis>=6.100"],
        # The viewer of WORKDIR/tensorboard/ (the trainer writes it with tensorboardX).
        "tensorboard": ["tensorboard>=2.16"],
        # Hugging Face checkpoint import (diffusionlm/train/convert.py needs safetensors;
        # its tests compare against transformers' Llama on torch: pytest -m convert).
        "convert": ["torch", "transformers>=5.0"],
        # The lm-evaluation-harness model `diffusionlm` (diffusionlm/harness.py; its tests:
        # pytest -m eval).
        "eval": ["lm_eval>=0.4.13,<0.5"],
    },
)
