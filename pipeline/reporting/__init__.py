"""The HTML report: sections (:mod:`.sections`), figures (:mod:`.plots`) and the page
(:mod:`.build`, ``templates/``).  It renders records and fits nothing."""
