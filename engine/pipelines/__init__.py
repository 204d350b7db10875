"""What every task's pipeline shares: the single-case runner (:mod:`.case`), the batch runner
(:mod:`.runner`), result writing (:mod:`.outputs`) and the training run folder (:mod:`.training_run`)."""
