"""Training MedREK's retriever and prompt encoder."""

from .parallel import ProcessGroup, SingleProcess
from .trainer import LOSS_TERMS, PRECISIONS, TrainConfig, Trainer, configs_from_parameters, method_configs, read_training_logs

__all__ = ["LOSS_TERMS", "PRECISIONS", "ProcessGroup", "SingleProcess", "TrainConfig", "Trainer",
           "configs_from_parameters", "method_configs", "read_training_logs"]
