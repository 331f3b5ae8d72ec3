"""Settings of a run: the RunConfig dataclass, presets, and merging them with what a user gave.

Imports no torch: checking a configuration is instant.
"""

from noisystudent.config.config_file import read_config_file, starting_file
from noisystudent.config.presets import DESCRIPTIONS, PRESETS, preset_settings
from noisystudent.config.run_config import RunConfig, differing_result_keys, help_of, load_config_json, result_keys
from noisystudent.config.settings import META_KEYS, default_run_folder, make_config, resume_config

__all__ = [
    "DESCRIPTIONS", "META_KEYS", "PRESETS", "RunConfig", "default_run_folder", "differing_result_keys", "help_of",
    "load_config_json", "make_config", "preset_settings", "read_config_file", "result_keys", "resume_config", "starting_file",
]
