"""Multi-task gradient boosting: R-MTGB and its single-task and pooled baselines."""

from .baselines import PooledBoosting, SingleTaskBoosting
from .rmtgb import RMTGBClassifier, RMTGBRegressor

__all__ = ["PooledBoosting", "RMTGBClassifier", "RMTGBRegressor", "SingleTaskBoosting"]
