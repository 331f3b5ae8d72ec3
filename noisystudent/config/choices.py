"""The allowed values of every setting that is a choice, in one place.

Plain tuples of strings, importable without torch, so that the configuration,
the command line and the library check one list each.
"""

EFFICIENTNETS = tuple(f"efficientnet-b{i}" for i in range(8))
LITES = ("efficientnet-lite0",)
RESNETS = ("resnet18", "resnet50", "resnet152")
ARCHITECTURES = EFFICIENTNETS + LITES + RESNETS

# --method: how the round-1 model learns from images without labels. Noisy Student iterates (--rounds); the
# one-stage methods train one semi-supervised model (round 1) against the supervised teacher (round 0).
METHODS = ("noisy-student", "fixmatch", "meta-pseudo-labels")
ONE_STAGE_METHODS = ("fixmatch", "meta-pseudo-labels")
METHOD_NAMES = {"noisy-student": "Noisy Student", "fixmatch": "FixMatch", "meta-pseudo-labels": "Meta Pseudo Labels"}  # as tables and reports write them
POOL_LABELS = ("fold", "ensemble")  # the pool's pseudo-labels: each fold's own model, or the round's K fold models averaged
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("step", "cosine", "plateau", "none")
AUGMENTS = ("none", "light", "strong")
PSEUDO_MODES = ("soft", "hard")
STUDENT_DATA = ("both", "pseudo", "labelled")  # labelled: no pseudo-labels, the control arm of an experiment
STUDENT_INIT = ("scratch", "imagenet", "teacher")  # unset: as --weights; "weights" (the same) is read from old runs
SAMPLERS = ("none", "oversample", "undersample")
CLASS_WEIGHTS = ("none", "balanced")
EQUALIZE = ("none", "grey", "channels", "luminance")
TTA = ("none", "flips", "dihedral", "five_crop", "ten_crop")
FREEZE = ("none", "backbone")
VOTING = ("majority", "soft")
CALIBRATIONS = ("none", "temperature")  # ensemble predict/evaluate/export --calibration
EXPORT_FORMATS = ("onnx", "folder")  # ensemble export --format
AMP = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("default", "reduce-overhead")  # torch.compile modes; reduce-overhead: CUDA graphs
# Scores of metrics.csv where higher is better (not the no-information rate, a property of the data):
# the metric of the one primary comparison (--primary-metric), and of model selection.
PRIMARY_METRICS = ("balanced_accuracy", "accuracy", "mcc", "kappa", "f1", "f1_weighted", "sensitivity", "specificity",
                   "ppv", "npv", "auc")
SELECT_METRICS = PRIMARY_METRICS + ("loss",)
SELECT = ("best", "last")  # keep the best epoch on validation (selection-biased there) or the last one
