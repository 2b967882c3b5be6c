import numpy as np
import pytest
import torch

from synth import seasonal_panel, to_buffer

from maml_anomaly.tasks import lag_spec
from maml_anomaly.training import TrainSettings, train_cluster

TINY = TrainSettings(
    k_shot=24, inner_steps=3, iterations=120, eval_every=40, hidden=(20, 20), n_val_tasks=128, max_series=60, seed=0
)


@pytest.fixture(scope="session")
def tiny_cluster():
    """A cluster forecaster meta-trained briefly on 60 hourly daily-seasonal series."""
    torch.set_num_threads(1)
    values, indptr = to_buffer(seasonal_panel(60, 24 * 21, seed=0))
    return train_cluster(values, indptr, np.arange(60), lag_spec(24), 24, TINY)
