"""Run records and what is computed from them: metrics (:mod:`.metrics`),
statistics (:mod:`.stats`), the JSON records themselves (:mod:`.records`) and
strategies grouped across seeds (:mod:`.groups`)."""
