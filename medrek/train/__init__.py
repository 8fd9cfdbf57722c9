"""Training MedREK's retriever and prompt encoder."""

from .trainer import LOSS_TERMS, TrainConfig, Trainer, method_configs, read_training_logs

__all__ = ["LOSS_TERMS", "TrainConfig", "Trainer", "method_configs", "read_training_logs"]
