"""Transfer (paper 000, section 6.3): fine-tune a pool member with a new, zero-initialised head on
a task (:mod:`.finetune`), and the protocol that sweeps learning rates on 800/200, retrains on the
1,000 images and reports the median over seeds, every fine-tune a resumable unit (:mod:`.protocol`)."""
