"""Upstream, once (paper 000, section 4): the baseline B (:mod:`.baseline`), full experts
(:mod:`.full_experts`), the adapter bank (:mod:`.adapter_bank`), the expert prediction network
(:mod:`.epn`), and the build plan that runs them into a library on the embedded world (:mod:`.build`).
Every stage trains through :func:`expertise.train.fit` and stores what it trained in the library as
soon as it is done."""
