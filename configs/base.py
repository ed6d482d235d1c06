"""Base config: every field of a run, with its meaning and default.

The schema lives in the package, diffusionlm/config_defaults.py, so that library code
never imports configs/; this file re-exports it for experiment configs and the command
line (`--config=configs/base.py`). `get_config()` is the config every run starts from;
`rl_defaults()` is the `config.rl` section every RL config adds.
"""
from diffusionlm.config_defaults import get_config, rl_defaults

__all__ = ["get_config", "rl_defaults"]
