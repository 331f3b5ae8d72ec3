"""Named bundles of settings. A preset fills in defaults; flags given on the command line win."""

from __future__ import annotations

from typing import Any

from noisystudent.errors import ConfigError

# PRESETS: preset name -> the RunConfig settings it changes from RunConfig's defaults (the
# cnmc-study protocol, hence its empty dict). A preset fills in defaults; settings given win.
# Names: cnmc-study, noisy-student, demo, smoke (DESCRIPTIONS says what each is for).
PRESETS: dict[str, dict[str, Any]] = {
    # The C-NMC student study's protocol: 5 folds, 2:2:1, SGD lr 1e-3, batch 15, x0.1 every
    # 7 epochs, 50 epochs, 3 rounds, students on hard pseudo-labels only, majority vote, no unlabelled
    # pool (the study pseudo-labelled only the masked part), 20 % of patients held out when DATA has no test set.
    # These are RunConfig's own defaults, so the preset changes nothing.
    "cnmc-study": {},
    # Xie et al. 2020: students on labelled + soft pseudo-labels of the masked part and extra unlabelled images,
    # a fixed number per class above a confidence threshold (their 0.3; 2000 per class: docs/options.md says
    # why), RandAugment (2 operations per image at magnitude 6, training/randaugment.py).
    "noisy-student": {"student_data": "both", "pseudo_mode": "soft", "pseudo_threshold": 0.3, "pseudo_per_class": 2000,
                      "pool": True, "randaugment": True},
    # The built-in demo: synthetic cells, small and fast enough for a 2-core CPU in minutes.
    "demo": {
        "student_data": "both", "pseudo_mode": "soft",
        # ImageNet-pretrained Lite0 (weights from the `lite` extra, no network needed):
        # a few dozen labelled cells cannot train a network from scratch.
        "arch": "efficientnet-lite0", "weights": "imagenet",
        # 1:5:3 -> per fold ~11% labelled, ~56% masked (pseudo-labelled), 33% validation patients
        "split_ratio": (1.0, 5.0, 3.0), "test_fraction": 0.2,
        "folds": 3, "rounds": 1, "epochs": 8, "image_size": 64, "batch_size": 32,
        "optimizer": "adamw", "lr": 1e-3, "scheduler": "cosine",
        "student_dropout": 0.3, "eval_batch_size": 128,
        "bn_momentum": 0.5,  # few steps per epoch: running BatchNorm statistics must follow the weights fast
    },
    # A smoke test of real data: does everything run? (not a meaningful model)
    "smoke": {"student_data": "both", "pseudo_mode": "soft", "folds": 2, "rounds": 1, "epochs": 1, "image_size": 64, "batch_size": 16, "weights": "none"},
}

DESCRIPTIONS = {
    "cnmc-study": "the C-NMC student study's protocol (5 folds, SGD, 50 epochs, 3 rounds, majority vote)",
    "noisy-student": "Xie et al. 2020 style: labelled + soft pseudo-labels, 2000 per class above confidence 0.3, unlabelled pool, RandAugment",
    "demo": "built-in synthetic demo: ImageNet Lite0, few labels + large masked pool, 3 folds, teacher + 1 student, 8 epochs at 64 px",
    "smoke": "smoke test: 2 folds, 1 round, 1 epoch at 64 px, no pretrained weights",
}


def preset_settings(name: str) -> dict[str, Any]:
    """The settings preset ``name`` changes from RunConfig's defaults, plus its name.

    Args:
        name: A key of ``PRESETS``: ``"cnmc-study"``, ``"noisy-student"``,
            ``"demo"`` or ``"smoke"``.

    Returns:
        dict[str, Any]: A new dict of setting name to value (safe to modify),
        with ``"preset"`` set to ``name``; the other settings keep RunConfig's
        defaults.

    Raises:
        ConfigError: ``name`` is not a preset.

    Example:
        >>> import noisystudent as ns
        >>> ns.preset_settings("cnmc-study")
        {'preset': 'cnmc-study'}
        >>> settings = ns.preset_settings("smoke")
        >>> settings["folds"], settings["epochs"], settings["weights"]
        (2, 1, 'none')
        >>> sorted(ns.PRESETS)
        ['cnmc-study', 'demo', 'noisy-student', 'smoke']
    """
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return {**PRESETS[name], "preset": name}
