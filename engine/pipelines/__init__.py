"""One pipeline module per task (train, Segment & Stage, evaluate); shared output writing."""
