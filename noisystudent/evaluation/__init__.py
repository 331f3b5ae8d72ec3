"""Numbers out: metrics from labels and predictions, ensemble voting, model-selection scores."""

from noisystudent.evaluation.metrics import METRIC_COLUMNS, binary_metrics, metrics_from_predictions, multiclass_metrics, summarise_folds
from noisystudent.evaluation.voting import VoteResult, majority_vote, soft_vote, vote

__all__ = [
    "METRIC_COLUMNS", "VoteResult", "binary_metrics", "majority_vote", "metrics_from_predictions", "multiclass_metrics",
    "soft_vote", "summarise_folds", "vote",
]
