"""Jobs that join stages: ``fit`` (:mod:`.fit`), ``baseline`` (:mod:`.baseline`),
``finetune`` (:mod:`.finetune`), ``predict`` (:mod:`.predict`), the ladder
(:mod:`.ladder`), the analyses the report shows (:mod:`.analysis`), the report
itself (:mod:`.report`) and the ``demo`` (:mod:`.demo`)."""
