"""Feature extraction: the batched forward pass (:mod:`.forward`), decoding batches
ahead of it (:mod:`.loader`), the one extraction loop (:mod:`.features`), the
inference runtimes (:mod:`.runtimes`), the incremental ``extract`` job
(:mod:`.job`, with :mod:`.target` its configuration and store key, :mod:`.reuse`
what the old store gives back, :mod:`.cost` the network's and the store's cost,
:mod:`.writer` the finished store) and torchrun shards (:mod:`.shards`).

Importing this package imports nothing heavy: :mod:`.job` decides whether
there is anything to compute before torch is imported.
"""
