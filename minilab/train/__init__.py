"""Training (§4): SGD in Caffe's form, the poly and step policies, the trainer with
checkpoints, evaluation before and after the CRF, and the demo."""
from .checkpoint import build_model, load_checkpoint, load_model, model_spec, save_checkpoint
from .evaluate import evaluate, predict_probs
from .optim import SGD
from .policies import POLICIES, learning_rate, poly_lr, step_lr
from .trainer import Trainer, TrainConfig, TrainingDiverged, limit_threads, param_groups

__all__ = ["POLICIES", "SGD", "TrainConfig", "Trainer", "TrainingDiverged", "build_model", "evaluate",
           "learning_rate", "limit_threads", "load_checkpoint", "load_model", "model_spec", "param_groups", "poly_lr",
           "predict_probs", "save_checkpoint", "step_lr"]
