"""Configuration: `load(path)` gives frozen `Settings`; `ConfigError.problems` lists what is wrong."""

from taskherd.config.loader import from_dict, load
from taskherd.config.settings import Settings

__all__ = ["Settings", "from_dict", "load"]
