"""The HDF5 feature store (:mod:`.hdf5`), the journal of an unfinished extraction
(:mod:`.journal`) and the one-writer lock (:mod:`.lock`)."""
