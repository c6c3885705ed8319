"""Image folders: scanning into a manifest (:mod:`.manifest`), the fixed split
(:mod:`.split`) and decoding one file into the pixels a backbone expects
(:mod:`.decode`)."""
