"""Torch training: the one loop and its schedules (:mod:`.loop`), the datasets it
reads (:mod:`.datasets`), the baselines without pretrained features
(:mod:`.baselines`) and fine-tuning (:mod:`.finetune`)."""
