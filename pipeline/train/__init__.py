"""Torch training: the one loop and its schedules (:mod:`.loop`), the datasets it
reads (:mod:`.datasets`), the baselines without pretrained features
(:mod:`.baselines`), fine-tuning (:mod:`.finetune`) and its frozen-trunk cache
(:mod:`.trunk_cache`)."""
