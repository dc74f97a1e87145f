"""Training: the loop (``trainer``), everything before its first step (``start``), the run's
folder and state (``state``), the kinds of run behind one interface (``stages``: plain training
and fine-tuning, ``scst``, ``prompt_tuning``), validation, the optimizer and schedules
(``optim``), distributed helpers, checkpoint averaging and the training log."""
