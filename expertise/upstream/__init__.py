"""Upstream, once (paper 000, section 4): the baseline B (:mod:`.baseline`), full experts
(:mod:`.full_experts`), the adapter bank (:mod:`.adapter_bank`), the expert prediction network
(:mod:`.epn`), and the build plan that runs them into a library (:mod:`.build`) on the embedded world or
on a dataset on disk (:mod:`.disk_data`, :mod:`.data_spec`), checkpointed and resumable (:mod:`.resume`).
Every stage trains through :func:`expertise.train.fit` and stores what it trained in the library as
soon as it is done."""
